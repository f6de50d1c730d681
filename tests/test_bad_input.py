"""The net: every command x every class of bad input, through the real CLI.

Each row is one command line and the bad input it meets: missing, unreadable, a folder
or a link loop instead of a file, the wrong kind of file, the wrong encoding, malformed
content, out-of-range numbers, outputs that cannot be written or already exist. Each
must end with exit code 1 (the input cannot be used) or 2 (usage), no traceback, one
message that names the thing (and the fix where there is one), nothing written or changed
in the folder, and no error.log (which would mean the guard caught a bug).

A command added later joins the net by adding rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import cli_forkserver
from tiny import order_rows, write_rows

GOOD = "good.jsonl"


@dataclass(frozen=True)
class Row:
    id: str
    args: list[str]  # {tmp}: the row's folder, {tiny}: a tiny model folder, {run}: a finished run
    code: int
    says: list[str]  # each must appear in the message (whitespace collapsed)
    setup: Callable[[Path], None] | None = None
    no_override: bool = False  # run without root's permission to read/write anything
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- bad files

def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return make


def folder(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir(parents=True, exist_ok=True)


def loop(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).symlink_to(tmp / name)


def dangling(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).symlink_to(tmp / "gone")


def unreadable(name: str, content: str = '{"instruction": "a", "response": "b"}\n') -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_text(content)
        (tmp / name).chmod(0)
    return make


def read_only_folder(name: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        (tmp / name).chmod(0o555)
    return make


def model_folder(name: str, config: bytes | str | None) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        if config is not None:
            write(f"{name}/config.json", config)(tmp)
    return make


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def copy_run(tmp: Path) -> None:
    shutil.copytree(FINISHED_RUN, tmp / "run")


def reviewed_run(tmp: Path) -> None:
    """A finished run with eval outputs and a review started (one rater, no votes yet)."""
    from test_review_server import write_outputs
    from tunesmith.eval.review.store import prepare_review

    copy_run(tmp)
    write_outputs(tmp / "run")
    prepare_review(tmp / "run", ["ann"])


def edit_config(run: Path, **sections: dict) -> None:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    for name, fields in sections.items():
        config[name].update(fields)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def run_on_another_base(tmp: Path) -> None:
    """RUN and RUN2: the same run, but RUN2's config names a copy of the base elsewhere."""
    import yaml

    copy_run(tmp)
    shutil.copytree(tmp / "run", tmp / "run2")
    base = yaml.safe_load((tmp / "run" / "config.yaml").read_text())["model"]["source"]
    shutil.copytree(base, tmp / "base2")
    edit_config(tmp / "run2", model={"source": str(tmp / "base2")})


def adapter_config(tmp: Path, **changes: object) -> None:
    """Change fields of the copied run's adapter_config.json (what another trainer might write)."""
    path = tmp / "run" / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
UTF16 = '{"instruction": "a", "response": "b"}\n'.encode("utf-16")
LATIN1_YAML = "train:\n  lr: 1e-4   # caf\xe9\n".encode("latin-1")
TRAIN = ["train", "--model", "{tiny}", "--data", "{tmp}/good.jsonl", "--out", "{tmp}/out", "--no-progress"]


def train(*extra: str) -> list[str]:
    return [*TRAIN, *extra]


LAUNCH_CONFIG = "model:\n  source: llama-3.1-8b\nmethod:\n  name: qlora\ndata:\n  train: good.jsonl\noutput:\n  dir: runs/q\n"


def launch(*extra: str) -> list[str]:
    """`tunesmith launch` of a QLoRA config on the catalog's Llama 3.1 8B (planned offline)."""
    return ["launch", "{tmp}/q.yaml", "--dry-run", *extra]


def launch_config(tmp: Path) -> None:
    (tmp / "q.yaml").write_text(LAUNCH_CONFIG)


ROWS = [
    # ------------------------------------------------------------ data check / clean / split / preview
    Row("check-missing", ["data", "check", "{tmp}/nope.jsonl"], 2, ["nope.jsonl", "not found"]),
    Row("check-folder", ["data", "check", "{tmp}/d"], 2, ["is a folder"], folder("d")),
    Row("check-loop", ["data", "check", "{tmp}/l.jsonl"], 2, ["symbolic link loop"], loop("l.jsonl")),
    Row("check-dangling", ["data", "check", "{tmp}/l.jsonl"], 2, ["which does not exist"], dangling("l.jsonl")),
    Row("check-unreadable", ["data", "check", "{tmp}/u.jsonl"], 2, ["u.jsonl", "not readable"],
        unreadable("u.jsonl"), no_override=True),
    Row("check-binary", ["data", "check", "{tmp}/x.jsonl"], 1, ["x.jsonl", "not UTF-8"], write("x.jsonl", PNG)),
    Row("check-utf16", ["data", "check", "{tmp}/x.jsonl"], 1, ["x.jsonl"], write("x.jsonl", UTF16)),
    Row("check-empty", ["data", "check", "{tmp}/x.jsonl"], 1, ["x.jsonl", "no examples"], write("x.jsonl", b"")),
    Row("check-other-format", ["data", "check", "{tmp}/x.jsonl"], 1, ["x.jsonl", "question"],
        write("x.jsonl", '{"question": "a", "answer": "b"}\n' * 3)),
    Row("check-all-invalid", ["data", "check", "{tmp}/x.jsonl"], 1, ["no row is left to train on"],
        write("x.jsonl", '{"instruction": "a", "response": ""}\n' * 3)),
    Row("check-seq-len", ["data", "check", "{tmp}/good.jsonl", "--max-seq-len", "-5"], 2, ["--max-seq-len"]),
    Row("check-threshold", ["data", "check", "{tmp}/good.jsonl", "--near-dup-threshold", "nan"], 2,
        ["--near-dup-threshold"]),
    Row("check-shingle", ["data", "check", "{tmp}/good.jsonl", "--shingle-size", "0"], 2, ["--shingle-size"]),
    Row("check-pii", ["data", "check", "{tmp}/good.jsonl", "--pii", "hide"], 2, ["--pii hide", "redact"]),
    Row("check-drop", ["data", "check", "{tmp}/good.jsonl", "--drop", "refusals"], 2, ["unknown code 'refusals'"]),
    Row("check-set", ["data", "check", "{tmp}/good.jsonl", "--set", "clean.near_dup_threshold=2"], 2,
        ["--set clean.near_dup_threshold=2", "less than or equal to 1"]),
    Row("check-flag", ["data", "check", "{tmp}/good.jsonl", "--near-dup-threshold", "2"], 2,
        ["--near-dup-threshold 2"]),
    Row("check-config-missing", ["data", "check", "{tmp}/good.jsonl", "--config", "{tmp}/c.yaml"], 2,
        ["c.yaml", "config file not found"]),
    Row("check-bad-model", ["data", "check", "{tmp}/good.jsonl", "--model", "{tmp}/m"], 2, ["m/config.json"],
        model_folder("m", "{not json")),
    Row("clean-out-file", ["data", "clean", "{tmp}/good.jsonl", "--out", "{tmp}/f"], 2, ["--out", "is a file"],
        write("f", "x")),
    Row("clean-out-unwritable", ["data", "clean", "{tmp}/good.jsonl", "--out", "{tmp}/ro/out"], 2,
        ["--out", "permission denied"], read_only_folder("ro"), no_override=True),
    Row("clean-out-proc", ["data", "clean", "{tmp}/good.jsonl", "--out", "/proc/tunesmith-test"], 2,
        ["--out /proc/tunesmith-test", "cannot write there"]),
    Row("clean-missing", ["data", "clean", "{tmp}/nope.jsonl", "--out", "{tmp}/out"], 2, ["nope.jsonl", "not found"]),
    Row("split-out-file", ["data", "split", "{tmp}/good.jsonl", "--out", "{tmp}/f"], 2, ["--out", "is a file"],
        write("f", "x")),
    Row("split-fraction", ["data", "split", "{tmp}/good.jsonl", "--out", "{tmp}/out", "--val-fraction", "inf"], 2,
        ["--val-fraction"]),
    Row("split-subset", ["data", "split", "{tmp}/good.jsonl", "--out", "{tmp}/out", "--subset", "0"], 2,
        ["--subset"]),
    Row("split-max-val", ["data", "split", "{tmp}/good.jsonl", "--out", "{tmp}/out", "--max-val", "0"], 2,
        ["--max-val"]),
    Row("split-folder", ["data", "split", "{tmp}/d", "--out", "{tmp}/out"], 2, ["is a folder"], folder("d")),
    Row("preview-n", ["data", "preview", "{tmp}/good.jsonl", "--model", "{tiny}", "-n", "-1"], 2, ["-n"]),
    Row("preview-seq-len", ["data", "preview", "{tmp}/good.jsonl", "--model", "{tiny}", "--max-seq-len", "4"], 2,
        ["--max-seq-len 4", "greater than or equal to 16"]),
    Row("preview-missing", ["data", "preview", "{tmp}/nope.jsonl", "--model", "{tiny}"], 2, ["nope.jsonl", "not found"]),
    Row("preview-bad-model", ["data", "preview", "{tmp}/good.jsonl", "--model", "{tmp}/m"], 2, ["m"],
        model_folder("m", None)),
    # ------------------------------------------------------------ config show
    Row("config-missing", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml", "config file not found", "config show >"]),
    Row("config-folder", ["config", "show", "{tmp}/d"], 2, ["is a folder"], folder("d")),
    Row("config-loop", ["config", "show", "{tmp}/c.yaml"], 2, ["symbolic link loop"], loop("c.yaml")),
    Row("config-unreadable", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml", "not readable"],
        unreadable("c.yaml", "train: {}\n"), no_override=True),
    Row("config-latin1", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml:2:", "not UTF-8", "save the file as UTF-8"],
        write("c.yaml", LATIN1_YAML)),
    Row("config-binary", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml", "not UTF-8"], write("c.yaml", PNG)),
    Row("config-yaml", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml:", "not valid YAML"],
        write("c.yaml", "train:\n  lr: [1e-4\n")),
    Row("config-duplicate", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml:3:", "'lr' is given twice", "line 2"],
        write("c.yaml", "train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")),
    Row("config-list", ["config", "show", "{tmp}/c.yaml"], 2, ["expected a mapping", "found a list"],
        write("c.yaml", "- a\n")),
    Row("config-unknown", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml:2:", "unknown field 'train.lrr'"],
        write("c.yaml", "train:\n  lrr: 1\n")),
    Row("config-inf", ["config", "show", "{tmp}/c.yaml"], 2, ["c.yaml:2:", "train.epochs = .inf", "finite"],
        write("c.yaml", "train:\n  epochs: .inf\n")),
    Row("config-defaults-set", ["config", "show", "--set", "train.epochs=0"], 2, ["--set train.epochs=0"]),
    Row("version-extra", ["--version", "--bogus"], 2, ["--bogus"]),
    Row("config-set-empty", ["config", "show", "--set", "train.lr="], 2, ["--set train.lr=", "no value"]),
    Row("config-set-shape", ["config", "show", "--set", "train"], 2, ["expected section.key=value"]),
    Row("config-set-type", ["config", "show", "--set", "train=null"], 2, ["expected a section of fields"]),
    Row("config-set-yes", ["config", "show", "--set", "clean.pii=yes"], 2, ["--set clean.pii=yes", "redact"]),
    # ------------------------------------------------------------ plan / gpus
    Row("plan-nothing", ["plan"], 2, ["give a CONFIG file or --model"]),
    Row("plan-inference-context", ["plan", "--model", "llama-3.1-8b", "--inference", "--context", "0"], 2, ["--context"]),
    Row("plan-inference-rate", ["plan", "--model", "llama-3.1-8b", "--inference", "--tokens-per-s", "0"], 2,
        ["--tokens-per-s"]),
    Row("plan-tokens-inf", ["plan", "--model", "llama-3.1-8b", "--tokens", "inf"], 2, ["--tokens"]),
    Row("plan-tokens-nan", ["plan", "--model", "llama-3.1-8b", "--tokens", "nan"], 2, ["--tokens"]),
    Row("plan-tokens-huge", ["plan", "--model", "llama-3.1-8b", "--tokens", "1e30"], 2, ["--tokens"]),
    Row("plan-tokens-word", ["plan", "--model", "llama-3.1-8b", "--tokens", "lots"], 2, ["--tokens"]),
    Row("plan-gpus-negative", ["plan", "--model", "llama-3.1-8b", "--gpus", "-2"], 2, ["--gpus"]),
    Row("plan-gpus-zero", ["plan", "--model", "llama-3.1-8b", "--gpus", "0"], 2, ["--gpus"]),
    Row("plan-epochs-inf", ["plan", "--model", "llama-3.1-8b", "--tokens", "1M", "--epochs", "inf"], 2, ["--epochs"]),
    Row("plan-batch", ["plan", "--model", "llama-3.1-8b", "--batch", "0"], 2, ["--batch"]),
    Row("plan-strategy", ["plan", "--model", "llama-3.1-8b", "--strategy", "zero9"], 2, ["--strategy zero9"]),
    Row("plan-seq-len", ["plan", "--model", "llama-3.1-8b", "--seq-len", "8"], 2, ["--seq-len"]),
    Row("plan-set-epochs", ["plan", "--model", "llama-3.1-8b", "--tokens", "1M", "--set", "train.epochs=inf"], 2,
        ["--set train.epochs=inf", "finite"]),
    Row("plan-gpu", ["plan", "--model", "llama-3.1-8b", "--gpu", "Z80"], 2, ["--gpu Z80", "not in the GPU catalog"]),
    Row("plan-model-unknown", ["plan", "--model", "nobody/nothing"], 2, ["nobody/nothing"]),
    Row("plan-model-binary", ["plan", "--model", "{tmp}/m"], 2, ["m/config.json"], model_folder("m", PNG)),
    Row("plan-model-json", ["plan", "--model", "{tmp}/m"], 2, ["m/config.json"], model_folder("m", "{oops")),
    Row("plan-model-list", ["plan", "--model", "{tmp}/m"], 2, ["m/config.json"], model_folder("m", "[1, 2]")),
    Row("plan-model-fields", ["plan", "--model", "{tmp}/m"], 2, ["m/config.json", "num_attention_heads"],
        model_folder("m", '{"model_type": "llama"}')),
    Row("plan-model-arch", ["plan", "--model", "{tmp}/m"], 2, ["m/config.json", "bert"],
        model_folder("m", '{"model_type": "bert"}')),
    Row("plan-model-no-config", ["plan", "--model", "{tmp}/m"], 2, ["m", "config.json"], model_folder("m", None)),
    Row("plan-gguf", ["plan", "--model", "{tmp}/x.gguf"], 2, ["x.gguf"], write("x.gguf", "not a gguf")),
    Row("plan-dataset-missing", ["plan", "--model", "{tiny}", "--dataset", "{tmp}/nope.jsonl"], 2, ["nope.jsonl"]),
    Row("plan-prices-latin1", ["plan", "--model", "llama-3.1-8b", "--prices", "{tmp}/p.csv"], 2, ["p.csv"],
        write("p.csv", "provider,gpu,on_demand,spot,as_of,source\nCaf\xe9,H100,2,1,2026-01-01,x\n".encode("latin-1"))),
    Row("plan-calibrate-missing", ["plan", "--model", "llama-3.1-8b", "--calibrate", "{tmp}/nope"], 2, ["nope"]),
    Row("plan-calibrate-bad", ["plan", "--model", "llama-3.1-8b", "--calibrate", "{tmp}/run"], 2, ["metrics.jsonl"],
        lambda tmp: (copy_run(tmp), (tmp / "run" / "plan_vs_actual.json").unlink(),  # else its speed is used
                     (tmp / "run" / "metrics.jsonl").write_text("{oops\n"))),
    Row("plan-calibrate-actual-json", ["plan", "--model", "llama-3.1-8b", "--calibrate", "{tmp}/run"], 2,
        ["{tmp}/run/plan_vs_actual.json:1:2: not valid JSON"],
        lambda tmp: (copy_run(tmp), (tmp / "run" / "plan_vs_actual.json").write_text("{oops"))),
    Row("plan-calibrate-actual-speed", ["plan", "--model", "llama-3.1-8b", "--calibrate", "{tmp}/run"], 2,
        ["plan_vs_actual.json: tokens_per_s.actual = 'fast' is not a speed above 0", "delete it"],
        write("run/plan_vs_actual.json", '{"tokens_per_s": {"actual": "fast"}}')),
    Row("gpus-prices-missing", ["gpus", "--prices", "{tmp}/p.csv"], 2, ["p.csv"]),
    Row("gpus-prices-folder", ["gpus", "--prices", "{tmp}/d"], 2, ["d"], folder("d")),
    Row("gpus-prices-header", ["gpus", "--prices", "{tmp}/p.csv"], 2, ["p.csv"], write("p.csv", "a,b\n1,2\n")),
    Row("gpus-prices-binary", ["gpus", "--prices", "{tmp}/p.csv"], 2, ["p.csv"], write("p.csv", PNG)),
    # ------------------------------------------------------------ train
    Row("train-nothing", ["train", "--model", "m"], 2, ["give a CONFIG file, or all of --model, --data and --out"]),
    Row("train-data-missing", [*TRAIN[:4], "{tmp}/nope.jsonl", *TRAIN[5:]], 2, ["nope.jsonl", "not found"]),
    Row("train-data-folder", [*TRAIN[:4], "{tmp}/d", *TRAIN[5:]], 2, ["is a folder"], folder("d")),
    Row("train-data-unreadable", [*TRAIN[:4], "{tmp}/u.jsonl", *TRAIN[5:]], 2, ["not readable"],
        unreadable("u.jsonl"), no_override=True),
    Row("train-val-same", train("--val", "{tmp}/good.jsonl"), 2, ["is the same file as data.train"]),
    Row("train-qlora-cpu", train("--method", "qlora"), 1, ["needs a CUDA GPU"]),
    Row("train-8bit-cpu", train("--set", "train.optimizer=adamw_8bit"), 1, ["needs a CUDA GPU"]),
    Row("train-fp16-cpu", train("--set", "model.dtype=float16"), 1, ["model.dtype=float16 needs a CUDA GPU"]),
    Row("train-epochs-inf", train("--epochs", "inf"), 2, ["--epochs inf", "finite"]),
    Row("train-lr", train("--lr", "5"), 2, ["--lr 5.0", "less than 1"]),
    Row("train-lr-set", train("--set", "train.lr=1e400"), 2, ["--set train.lr=1e400", "finite"]),
    Row("train-epochs-set", train("--set", "train.epochs=1e400"), 2, ["--set train.epochs=1e400", "finite"]),
    Row("train-method", train("--method", "dora"), 2, ["--method dora", "choose one of"]),
    Row("train-pricing-env", train(), 2, ["TUNESMITH_PRICING='cheap': give spot or on_demand"],
        env={"TUNESMITH_PRICING": "cheap"}),
    Row("train-out-file", [*TRAIN[:6], "{tmp}/f", *TRAIN[7:]], 2, ["--out", "is a file"], write("f", "x")),
    Row("train-out-proc", [*TRAIN[:6], "/proc/tunesmith-test", *TRAIN[7:]], 2, ["--out", "cannot write there"]),
    Row("train-out-sys", [*TRAIN[:6], "/sys/tunesmith-test", *TRAIN[7:]], 2, ["--out", "cannot write there"]),
    Row("train-out-unwritable", [*TRAIN[:6], "{tmp}/ro/run", *TRAIN[7:]], 2, ["--out", "permission denied"],
        read_only_folder("ro"), no_override=True),
    Row("train-out-other-run", [*TRAIN[:6], "{tmp}/run", *TRAIN[7:], "--lr", "1e-4"], 2,
        ["holds another run", "differs in", "--restart"], copy_run),
    Row("train-out-user-files", [*TRAIN[:6], "{tmp}/d", *TRAIN[7:]], 2, ["holds other files"],
        lambda tmp: write("d/notes.txt", "mine")(tmp)),
    Row("train-lora-r", train("--lora-r", "0"), 2, ["--lora-r 0", "greater than or equal to 1"]),
    Row("train-lora-r-word", train("--lora-r", "big"), 2, ["--lora-r"]),
    Row("train-restart-user-files", [*TRAIN[:6], "{tmp}/d", *TRAIN[7:], "--restart"], 2, ["holds other files"],
        lambda tmp: write("d/notes.txt", "mine")(tmp)),
    Row("train-restart-out-file", [*TRAIN[:6], "{tmp}/f", *TRAIN[7:], "--restart"], 2, ["--out", "is a file"],
        write("f", "x")),
    Row("train-restart-qlora", train("--restart", "--method", "qlora"), 1, ["needs a CUDA GPU"]),
    Row("train-resume-no-run", train("--resume", "{tmp}/out/checkpoints/step-000002"), 2,
        ["--resume", "holds no run to continue"]),
    Row("train-resume-restart", train("--restart", "--resume", "{tmp}/x"), 2, ["--restart", "--resume", "one of them"]),
    Row("train-epochs-word", train("--epochs", "many"), 2, ["--epochs many", "train.epochs"]),
    Row("train-nproc-zero", train("--nproc", "0"), 2, ["--nproc", "greater than or equal to 1"]),
    Row("train-nproc-word", train("--nproc", "two"), 2, ["--nproc", "valid integer"]),
    Row("train-node-rank", train("--nnodes", "2", "--node-rank", "2"), 2, ["--node-rank 2", "0 to 1"]),
    Row("train-nnodes-no-addr", train("--nnodes", "2"), 2, ["--nnodes > 1 needs --master-addr"]),
    Row("train-master-port", train("--master-port", "70000"), 2, ["--master-port", "less than or equal to 65535"]),
    Row("train-strategy-unknown", train("--set", "distributed.strategy=megatron"), 2,
        ["--set distributed.strategy=megatron", "choose one of"]),
    Row("train-offload-no-checkpointing", train("--set", "train.offload_activations=true"), 2,
        ["--set train.offload_activations=true", "needs train.gradient_checkpointing"]),
    Row("train-release-word", train("--set", "train.release_freed_memory=sometimes"), 2,
        ["--set train.release_freed_memory=sometimes"]),
    Row("train-auto-fit-word", train("--set", "train.auto_fit=maybe"), 2, ["--set train.auto_fit=maybe"]),
    Row("train-nproc-resume-other", train("--nproc", "2", "--resume", "{tmp}/x"), 2, ["--resume"]),
    Row("train-strategy-qlora-fsdp", train("--method", "qlora", "--nproc", "2", "--set", "distributed.strategy=fsdp"),
        2, ["distributed.strategy=fsdp with method qlora", "use distributed.strategy=ddp"]),
    Row("train-strategy-fsdp-cpu", train("--nproc", "2", "--set", "distributed.strategy=zero3"), 2,
        ["distributed.strategy=zero3", "DeepSpeed ZeRO is not wired in"]),
    Row("train-track-unknown", train("--set", "track.to=[neptune]"), 2, ["--set track.to=[neptune]", "choose one of"]),
    Row("train-track-not-list", train("--set", "track.to=7"), 2, ["--set track.to=7", "track.to"]),
    Row("train-watch-unknown", train("--set", "train.watch_preemption=azure"), 2,
        ["--set train.watch_preemption=azure", "choose one of"]),
    Row("train-mix-general", train("--set", "data.mix_general=0.7"), 2, ["--set data.mix_general=0.7", "less than 0.5"]),
    Row("train-keep-zero", train("--set", "train.keep_checkpoints=0"), 2, ["--set train.keep_checkpoints=0"]),
    Row("train-patience-negative", train("--set", "train.early_stopping_patience=-1"), 2,
        ["--set train.early_stopping_patience=-1"]),
    Row("train-min-delta-nan", train("--set", "train.early_stopping_min_delta=nan"), 2,
        ["--set train.early_stopping_min_delta=nan", "finite"]),
    Row("train-config-track", ["train", "{tmp}/c.yaml"], 2, ["c.yaml:2:", "track.to"],
        write("c.yaml", "track:\n  to: tensorboard, mlflow\n")),
    Row("train-config-missing", ["train", "{tmp}/c.yaml"], 2, ["c.yaml", "config file not found"]),
    Row("train-config-latin1", ["train", "{tmp}/c.yaml"], 2, ["c.yaml:2:", "not UTF-8"], write("c.yaml", LATIN1_YAML)),
    Row("train-config-data-missing", ["train", "{tmp}/c.yaml"], 2, ["data/train.jsonl", "not found"],
        write("c.yaml", "data:\n  train: data/train.jsonl\noutput:\n  dir: out\n")),
    Row("train-model-missing", ["train", "--model", "{tmp}/nomodel", *TRAIN[3:]], 2, ["nomodel"]),
    Row("train-model-json", ["train", "--model", "{tmp}/m", *TRAIN[3:]], 2, ["m/config.json"],
        model_folder("m", "{oops")),
    Row("train-model-gguf", ["train", "--model", "{tmp}/x.gguf", *TRAIN[3:]], 2, ["x.gguf"],
        write("x.gguf", "not a gguf")),
    Row("train-data-other-format", [*TRAIN[:4], "{tmp}/x.jsonl", *TRAIN[5:]], 1, ["x.jsonl", "question"],
        write("x.jsonl", '{"question": "a", "answer": "b"}\n' * 3)),
    # ------------------------------------------------------------ eval / demo
    Row("eval-missing", ["eval", "{tmp}/nope"], 2, ["nope", "not a run folder"]),
    Row("eval-file", ["eval", "{tmp}/good.jsonl"], 2, ["not a run folder"]),
    Row("eval-no-adapter", ["eval", "{tmp}/run"], 1, ["adapter", "not found"],
        lambda tmp: (copy_run(tmp), shutil.rmtree(tmp / "run" / "adapter"))),
    Row("eval-bad-val", ["eval", "{tmp}/run"], 1, ["val.jsonl:1:", "--restart"],
        lambda tmp: (copy_run(tmp), (tmp / "run" / "data" / "val.jsonl").write_text("{oops\n"))),
    Row("eval-bad-config", ["eval", "{tmp}/run"], 2, ["config.yaml:", "key 'train' is given twice"],
        lambda tmp: (copy_run(tmp), append(tmp / "run" / "config.yaml", "train: {}\n"))),
    Row("eval-set", ["eval", "{tmp}/run", "--set", "eval.max_new_tokens=0"], 2, ["--set eval.max_new_tokens=0"],
        copy_run),
    Row("eval-checkpoint-missing", ["eval", "{tmp}/run", "--checkpoint", "99"], 2,
        ["--checkpoint 99", "no checkpoint", "this run has"], copy_run),
    Row("eval-checkpoint-damaged", ["eval", "{tmp}/run", "--checkpoint", "{tmp}/run/checkpoints/step-000002"], 1,
        ["--checkpoint", "step-000002/weights.safetensors has", "were written", "pick another step"],
        lambda tmp: (copy_run(tmp), append(tmp / "run" / "checkpoints" / "step-000002" / "weights.safetensors", "x"))),
    Row("eval-compare-missing", ["eval", "{tmp}/run", "--compare", "{tmp}/other"], 2,
        ["--compare", "other", "not a run folder"], copy_run),
    Row("eval-data-missing", ["eval", "{tmp}/run", "--data", "{tmp}/nope.jsonl"], 2, ["nope.jsonl", "not found"],
        copy_run),
    Row("eval-data-no-rows", ["eval", "{tmp}/run", "--data", "{tmp}/e.jsonl"], 2, ["e.jsonl", "no row to evaluate",
        "empty_field"], lambda tmp: (copy_run(tmp), (tmp / "e.jsonl").write_text('{"prompt": "a", "completion": ""}\n'))),
    Row("eval-threshold", ["eval", "{tmp}/run", "--set", "eval.forgetting_threshold=2"], 2,
        ["--set eval.forgetting_threshold=2"], copy_run),
    Row("review-missing", ["review", "{tmp}/nope", "--raters", "ann", "--port", "0"], 2, ["nope", "run folder not found"]),
    Row("review-no-eval", ["review", "{tmp}/run", "--raters", "ann", "--port", "0"], 2,
        ["eval/outputs.jsonl", "not found", "tunesmith eval"], copy_run),
    Row("review-bad-outputs", ["review", "{tmp}/run", "--raters", "ann", "--port", "0"], 2,
        ["outputs.jsonl:1:", "tunesmith eval"],
        lambda tmp: (copy_run(tmp), (tmp / "run" / "eval").mkdir(), (tmp / "run" / "eval" / "outputs.jsonl").write_text("{oops\n"))),
    Row("review-empty-rater", ["review", "{tmp}/run", "--raters", "ann,,bob", "--port", "0"], 2, ["--raters"], copy_run),
    Row("review-port", ["review", "{tmp}/run", "--raters", "ann", "--port", "70000"], 2, ["--port", "65535"], copy_run),
    Row("review-results-none", ["review", "{tmp}/run", "--results"], 2, ["no review here yet", "--raters"], copy_run),
    Row("review-csv-alone", ["review", "{tmp}/run", "--csv", "{tmp}/v.csv"], 2, ["--csv needs --results"], copy_run),
    Row("review-csv-folder", ["review", "{tmp}/run", "--results", "--csv", "{tmp}/adir"], 1,
        ["adir: is a folder, not a file"], lambda tmp: (reviewed_run(tmp), (tmp / "adir").mkdir())),
    Row("review-judge-no-model", ["review", "{tmp}/run", "--judge", "http://127.0.0.1:9/v1"], 2,
        ["--judge URL and --judge-model NAME go together"], copy_run),
    Row("demo-out-file", ["demo", "--out", "{tmp}/f"], 2, ["--out", "is a file"], write("f", "x")),
    Row("demo-out-other-run", ["demo", "--out", "{tmp}/run"], 2, ["holds another run", "--restart"], copy_run),
    Row("demo-set", ["demo", "--out", "{tmp}/out", "--set", "train.epochs=-1"], 2, ["--set train.epochs=-1"]),
    # ------------------------------------------------------------ export
    Row("export-missing", ["export", "{tmp}/nope", "--out", "{tmp}/out"], 2, ["nope", "not a run folder"]),
    Row("export-out-file", ["export", "{tmp}/run", "--out", "{tmp}/f"], 2, ["--out", "is a file"],
        lambda tmp: (copy_run(tmp), write("f", "x")(tmp))),
    Row("export-out-other-run", ["export", "{tmp}/run", "--out", "{tmp}/d"], 2,
        ["--out", "is not an earlier export", "choose a new or empty folder"],
        lambda tmp: (copy_run(tmp), write("d/notes.txt", "x")(tmp))),
    Row("export-no-adapter", ["export", "{tmp}/run", "--out", "{tmp}/out"], 1, ["adapter", "not found"],
        lambda tmp: (copy_run(tmp), shutil.rmtree(tmp / "run" / "adapter"))),
    Row("export-adapter-no-base", ["export", "{tmp}/a", "--out", "{tmp}/out"], 2,
        ["names the base model", "copy the run's adapter folder whole"], write("a/adapter_config.json", '{"r": 4}')),
    Row("export-check", ["export", "{tmp}/run", "--out", "{tmp}/out", "--check", "-1"], 2, ["--check"], copy_run),
    Row("export-gguf-type", ["export", "{tmp}/run", "--out", "{tmp}/out", "--gguf", "q4_k"], 2,
        ["--gguf q4_k", "use one of f16, q8_0"], copy_run),
    Row("export-gguf-adapter-only", ["export", "{tmp}/run", "--out", "{tmp}/out", "--gguf", "f16", "--adapter-only"], 2,
        ["--gguf with --adapter-only", "drop --adapter-only"], copy_run),
    # ------------------------------------------------------------ deploy
    Row("deploy-missing", ["deploy", "{tmp}/nope", "--target", "vllm"], 2, ["RUN", "nope", "run folder not found"]),
    Row("deploy-file", ["deploy", "{tmp}/good.jsonl", "--target", "vllm"], 2, ["not a run folder"]),
    Row("deploy-bad-target", ["deploy", "{tmp}/run", "--target", "docker"], 2,
        ["--target docker: not a target; choose vllm", "or sky"], copy_run),
    Row("deploy-no-adapter", ["deploy", "{tmp}/run", "--target", "vllm"], 1,
        ["adapter/adapter_config.json: not found", "train it first"],
        lambda tmp: (copy_run(tmp), shutil.rmtree(tmp / "run" / "adapter"))),
    Row("deploy-adapter-json", ["deploy", "{tmp}/run", "--target", "vllm"], 2, ["adapter_config.json:1:2", "not valid JSON"],
        lambda tmp: (copy_run(tmp), (tmp / "run" / "adapter" / "adapter_config.json").write_text("{oops"))),
    Row("deploy-rank-beyond-vllm", ["deploy", "{tmp}/run", "--target", "vllm"], 1,
        ["adapter rank r=1024 is beyond vLLM's largest --max-lora-rank (512)", "tunesmith export"],
        lambda tmp: (copy_run(tmp), adapter_config(tmp, r=1024))),
    Row("deploy-dora", ["deploy", "{tmp}/run", "--target", "sky"], 1, ["DoRA", "vLLM does not load DoRA"],
        lambda tmp: (copy_run(tmp), adapter_config(tmp, use_dora=True))),
    Row("deploy-out-folder", ["deploy", "{tmp}/run", "--target", "sky", "--out", "{tmp}/adir"], 2,
        ["--out {tmp}/adir: is a folder", "service.yaml"], lambda tmp: (copy_run(tmp), (tmp / "adir").mkdir())),
    Row("deploy-out-unwritable", ["deploy", "{tmp}/run", "--target", "sky", "--out", "{tmp}/ro/s.yaml"], 1,
        ["s.yaml"], lambda tmp: (copy_run(tmp), read_only_folder("ro")(tmp)), no_override=True),
    Row("deploy-gpu-unknown", ["deploy", "{tmp}/run", "--target", "sky", "--gpu", "B300"], 2,
        ["'B300': unknown GPU; the catalog has"], copy_run),
    Row("deploy-gpu-with-vllm", ["deploy", "{tmp}/run", "--target", "vllm", "--gpu", "L4"], 2,
        ["--gpu and --out go with --target sky"], copy_run),
    Row("deploy-gpu-too-small", ["deploy", "{tmp}/run", "--target", "sky", "--gpu", "L4", "--context", "131072",
                                 "--concurrency", "100000"], 2, ["--gpu L4: serving needs", "lower --concurrency"],
        copy_run),
    Row("deploy-context", ["deploy", "{tmp}/run", "--target", "vllm", "--context", "0"], 2, ["--context"], copy_run),
    # ------------------------------------------------------------ launch / status / logs / down / pull
    Row("launch-no-bucket", launch(), 2, ["--bucket is needed", "s3://NAME"], launch_config),
    Row("launch-bad-bucket", launch("--bucket", "/data/runs"), 2, ["--bucket /data/runs: not a bucket SkyPilot mounts"],
        launch_config),
    Row("launch-gpu-count", launch("--bucket", "s3://b", "--gpu", "H100:3"), 2, ["--gpu H100:3", "1, 2, 4 or 8"],
        launch_config),
    Row("launch-gpu-unknown", launch("--bucket", "s3://b", "--gpu", "B300"), 2, ["'B300': unknown GPU"], launch_config),
    Row("launch-gpu-pcie", launch("--bucket", "s3://b", "--gpu", "H100-PCIe"), 2,
        ["--gpu H100-PCIe: SkyPilot has no single accelerator name"], launch_config),
    Row("launch-data-missing", launch("--bucket", "s3://b", "--set", "data.train=nope.jsonl"), 2,
        ["data.train nope.jsonl: file not found"], launch_config),
    Row("launch-model-missing", launch("--bucket", "s3://b", "--set", "model.source=./nope"), 2,
        ["model.source ./nope: not found here"], launch_config),
    Row("launch-zero3", launch("--bucket", "s3://b", "--set", "distributed.strategy=zero3"), 2,
        ["distributed.strategy=zero3", "use fsdp"], launch_config),
    Row("launch-bad-tokens", launch("--bucket", "s3://b", "--tokens", "lots"), 2, ["--tokens 'lots'"], launch_config),
    Row("launch-no-tokenizer", launch("--bucket", "s3://b"), 2,
        ["data.train file good.jsonl needs llama-3.1-8b's tokenizer", "give --tokens N"], launch_config),
    Row("launch-over-local-run", launch("--bucket", "s3://b"), 2, ["holds a run trained on this machine",
                                                                   "--set output.dir=runs/q-cloud"],
        lambda tmp: (launch_config(tmp), write("runs/q/train.json", "{}")(tmp))),
    Row("launch-sky-env", launch("--bucket", "s3://b"), 2, ["TUNESMITH_SKY=/nonexistent/sky: not an executable"],
        launch_config, env={"TUNESMITH_SKY": "/nonexistent/sky"}),
    Row("launch-config-missing", ["launch", "{tmp}/nope.yaml", "--bucket", "s3://b", "--dry-run"], 2,
        ["nope.yaml: config file not found"]),
    Row("status-not-launched", ["status", "{tmp}"], 2, ["launch/launch.json: not found", "tunesmith launch CONFIG"]),
    Row("logs-bad-record", ["logs", "{tmp}/r"], 2, ["launch.json:1:2", "not valid JSON"],
        write("r/launch/launch.json", "{oops")),
    Row("down-record-without-job", ["down", "{tmp}/r"], 2, ["no job name and bucket in it"],
        write("r/launch/launch.json", "[]")),
    Row("pull-from-missing", ["pull", "{tmp}/r", "--from", "{tmp}/nope"], 2, ["--from {tmp}/nope: not a folder"]),
    Row("pull-into-a-file", ["pull", "{tmp}/good.jsonl", "--from", "{tmp}/src"], 1, ["good.jsonl: File exists"],
        folder("src")),
    Row("pull-unwired-store", ["pull", "{tmp}/r", "--from", "r2://b/run"], 2,
        ["pulling from r2:// is not wired in", "--from FOLDER"]),
    # ------------------------------------------------------------ serve
    Row("serve-missing", ["serve", "{tmp}/nope"], 2, ["nope: not found", "give a run folder"]),
    Row("serve-not-a-run", ["serve", "{tmp}/adir"], 2, ["adir: neither a run folder", "nor an adapter folder"],
        folder("adir")),
    Row("serve-no-adapter", ["serve", "{tmp}/run"], 1, ["run/adapter not found", "did training finish"],
        lambda tmp: (copy_run(tmp), shutil.rmtree(tmp / "run" / "adapter"))),
    Row("serve-adapter-no-base", ["serve", "{tmp}/a"], 2, ["names the base model", "copy the run's adapter folder whole"],
        write("a/adapter_config.json", '{"r": 4}')),
    Row("serve-same-name", ["serve", "{tmp}/run", "{tmp}/run/adapter"], 2, ["both would serve as 'run'", "rename"],
        copy_run),
    Row("serve-other-base", ["serve", "{tmp}/run", "{tmp}/run2"], 2,
        ["run2: was trained on", "one server serves adapters of one base"], run_on_another_base),
    Row("serve-config", ["serve", "{tmp}/run"], 2, ["config.yaml", "method.name"],
        lambda tmp: (copy_run(tmp), edit_config(tmp / "run", method={"name": "lorax"}))),
    Row("serve-short-key", ["serve", "{tmp}/run", "--api-key", "abc"], 2, ["--api-key", "at least 8 characters"],
        copy_run),
    Row("serve-env-key", ["serve", "{tmp}/run"], 2, ["TUNESMITH_API_KEY", "at least 8 characters"], copy_run,
        env={"TUNESMITH_API_KEY": " x "}),
    Row("serve-port", ["serve", "{tmp}/run", "--port", "70000"], 2, ["--port", "65535"], copy_run),
    Row("serve-max-waiting", ["serve", "{tmp}/run", "--max-waiting", "-1"], 2, ["--max-waiting"], copy_run),
    # ------------------------------------------------------------ the command line itself
    Row("unknown-command", ["trian"], 2, ["No such command 'trian'"]),
    Row("unknown-flag", ["gpus", "--json-out"], 2, ["No such option: --json-out"]),
]

FINISHED_RUN: Path  # set by the module fixture


@pytest.fixture(scope="module", autouse=True)
def finished_run(tiny_model_dir, tmp_path_factory):
    """One real finished run of the tiny model, copied into rows that need a run folder."""
    global FINISHED_RUN
    tmp = tmp_path_factory.mktemp("finished")
    data = write_rows(tmp / "d.jsonl", order_rows(16))
    FINISHED_RUN = tmp / "run"
    subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", "--model", str(tiny_model_dir), "--data",
                    str(data), "--out", str(FINISHED_RUN), "--no-progress", "--set", "train.max_steps=2",
                    "--set", "train.max_seq_len=128", "--set", "method.r=4"], check=True, capture_output=True)


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder` and what it holds: "nothing changed" means equal snapshots."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = f"dir {oct(path.stat().st_mode & 0o777)}"
        elif os.access(path, os.R_OK) and path.stat().st_mode & 0o444:
            found[key] = path.read_bytes()
        else:
            found[key] = f"mode {oct(path.stat().st_mode & 0o777)} size {path.stat().st_size}"
    return found


def message(stderr: str) -> str:
    """The error as one line: typer draws usage errors in a box; collapse it."""
    return " ".join(re.sub(r"[╭╮╰╯│─]", " ", stderr).split())


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_one_clear_line_and_changes_nothing(row, tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    work.mkdir()
    write_rows(work / GOOD, order_rows(12))
    if row.setup:
        row.setup(work)
    home = tmp_path / "home"
    args = [a.replace("{tmp}", str(work)).replace("{tiny}", str(tiny_model_dir)) for a in row.args]
    before = snapshot(work)
    env = {**os.environ, "TUNESMITH_HOME": str(home), "COLUMNS": "200", **row.env}
    # `python -m tunesmith.cli ARGS` in the folder, without paying for Python's and torch's imports each time.
    result = cli_forkserver.run(args, cwd=work, env=env, no_override=row.no_override and os.geteuid() == 0, timeout=300)
    said = message(result.stderr)
    if "error:" not in said and result.stdout.strip():  # a report command: its verdict ends its report
        said = message(" ".join(result.stdout.strip().splitlines()[-3:]))
    assert result.returncode == row.code, f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr + result.stdout
    for part in row.says:
        expected = part.replace("{tmp}", str(work))
        assert expected in said, f"{expected!r} not in {said!r}"
    assert said.count("error:") <= 1 and ("error:" in said or "Usage:" in result.stderr or "not trainable" in said), said
    assert not (home / "logs").exists(), "the guard caught a bug: " + "".join(
        p.read_text() for p in (home / "logs").glob("*"))
    assert snapshot(work) == before, "the command wrote or changed files although it refused its input"


def test_every_command_is_in_the_net():
    """A command added later must join the net."""
    import typer.main

    from tunesmith.cli import app

    cli = typer.main.get_command(app)
    names = set()
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        names |= {f"{name} {sub}" for sub in getattr(command, "commands", {})} or {name}
    covered = {" ".join(a for a in r.args[:2] if not a.startswith(("-", "{"))) for r in ROWS}
    covered |= {r.args[0] for r in ROWS}
    missing = sorted(n for n in names if n not in covered)
    assert not missing, f"commands with no bad-input row: {missing}"


def test_the_rows_cover_every_class_of_bad_input():
    ids = " ".join(r.id for r in ROWS)
    for kind in ("missing", "folder", "loop", "unreadable", "binary", "latin1", "utf16", "json", "inf", "nan",
                 "out-file", "unwritable", "other-run"):
        assert kind in ids, kind
    assert json.dumps([r.id for r in ROWS]).count('"') == 2 * len({r.id for r in ROWS})  # ids are unique
