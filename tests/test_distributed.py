"""Several training processes (gloo on CPU), through the CLI: 2 processes x micro-batch m train
the same rows, the same losses and the same adapter as 1 process with micro-batch m and
accumulation 2; only the main process writes; a stopped run continues at the same world size
and refuses another."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from test_train_cli import tunesmith
from tiny import order_rows, write_rows
from tunesmith.config import RunConfig
from tunesmith.models.encode import Encoded
from tunesmith.train.distributed import World, launcher_args, my_share
from tunesmith.train.fit import plan_steps

# 38 rows: 34 to train after the seeded hold-out, one per packed row: 8 steps of 4 rows and a
# last one of 2 (one micro-batch: the second process trains nothing in it, and must still sync).
SETTINGS = ["--no-progress", "--set", "train.max_seq_len=128", "--set", "train.micro_batch=2",
            "--set", "train.epochs=1", "--set", "train.eval_every=3", "--set", "train.save_every=2",
            "--set", "method.r=4", "--set", "method.dropout=0", "--set", "train.early_stopping_patience=0"]
KEYS = ("step", "loss", "grad_norm", "eval_loss", "lr", "tokens")


def metrics(run):
    return [{k: r.get(k) for k in KEYS} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def same_adapter(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if "mlflow" not in p.parts)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_rows(tmp / "d.jsonl", order_rows(38))
    base = ["train", "--model", tiny_model_dir, "--data", data, *SETTINGS]
    one = tunesmith(*base, "--out", tmp / "one", "--set", "train.grad_accum=2", "--nproc", "1")
    two = tunesmith(*base, "--out", tmp / "two", "--nproc", "2")
    return tmp, base, one, two


def approx_metrics(run):
    """The curve, gradient norms to 5 digits: FSDP adds the squares of each shard's norm."""
    return [{**r, "grad_norm": round(r["grad_norm"], 5)} for r in metrics(run)]


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_accumulation_trains(runs):
    tmp, _, one, two = runs
    assert "training with 2 processes (distributed.strategy auto) through accelerate's launcher" in two.stdout
    assert "2 processes, distributed.strategy auto: ddp (a whole replica fits each process's memory)" in \
        " ".join(two.stdout.split())
    assert "of its memory for each of 2 processes" in two.stdout  # the pre-flight checked each share
    assert "trained 9 steps, 3,126 tokens" in two.stdout and "trained 9 steps, 3,126 tokens" in one.stdout
    assert metrics(tmp / "two") == metrics(tmp / "one")
    # Two fp32 gradients summed in either order, scaled by 2 then averaged: exactly the same.
    assert same_adapter(adapter(tmp / "two"), adapter(tmp / "one"))
    # Only the main process wrote: the same files as one process, nothing per worker.
    assert files(tmp / "two") == files(tmp / "one")
    assert two.stderr.count("Traceback") == 0 and "worker" not in two.stderr
    # The main process's plan vs actual, saying its plan was for one process alone.
    actual = json.loads((tmp / "two" / "plan_vs_actual.json").read_text())
    assert (actual["complete"], actual["device"]["processes"], actual["tokens"]) == (True, 2, 3126)
    assert actual["notes"][0].startswith("2 training processes (ddp): the plan's this_machine figures are for one")


@pytest.mark.slow
def test_two_fsdp_processes_holding_half_the_weights_each_train_the_same_adapter(runs):
    tmp, base, _, _ = runs
    fsdp = tunesmith(*base, "--out", tmp / "fsdp", "--nproc", "2", "--set", "distributed.strategy=fsdp")
    assert "trained 9 steps, 3,126 tokens" in fsdp.stdout
    assert approx_metrics(tmp / "fsdp") == approx_metrics(tmp / "one")
    assert same_adapter(adapter(tmp / "fsdp"), adapter(tmp / "one"))
    assert files(tmp / "fsdp") == files(tmp / "one")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_stopped_two_process_run_continues_to_the_same_adapter_and_refuses_one_process(runs, strategy):
    tmp, base, _, _ = runs
    run = tmp / f"stopped-{strategy}"
    base = [*base, "--set", f"distributed.strategy={strategy}"]
    command = [sys.executable, "-m", "tunesmith.cli", *map(str, base), "--out", str(run), "--nproc", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not (run / "metrics.jsonl").is_file():
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    record = json.loads((run / "train.json").read_text())
    step = record["steps_done"]
    assert record["status"] == "interrupted" and 1 <= step < 9
    assert (run / "checkpoints" / f"step-{step:06d}").is_dir()

    refused = tunesmith(*base, "--out", run, "--nproc", "1", check=False)
    assert refused.returncode == 2
    assert "processes (--nproc x --nnodes) 2 -> 1" in " ".join(refused.stderr.split())

    again = tunesmith(*base, "--out", run, "--nproc", "2")
    assert f"continuing from checkpoint step-{step:06d}" in " ".join(again.stdout.split())
    assert approx_metrics(run) == approx_metrics(tmp / "two")
    assert same_adapter(adapter(run), adapter(tmp / "two"))


@pytest.mark.slow
def test_a_strategy_train_cannot_run_is_refused_before_any_worker_starts(runs, tiny_model_dir):
    tmp, base, _, _ = runs
    result = tunesmith(*base, "--out", tmp / "zero3", "--nproc", "2", "--set", "distributed.strategy=zero3",
                       check=False)
    assert result.returncode == 2
    assert "distributed.strategy=zero3: train runs ddp, fsdp and fsdp_offload; DeepSpeed ZeRO is not wired in" in \
        " ".join(result.stderr.split())
    assert "training with" not in result.stdout and not (tmp / "zero3").exists()
    offload = tunesmith(*base, "--out", tmp / "offload", "--nproc", "2", "--set", "distributed.strategy=fsdp_offload",
                        check=False)
    assert offload.returncode == 2 and "these processes already train on CPU" in " ".join(offload.stderr.split())
    assert not (tmp / "offload").exists()


# ---------------------------------------------------------------- the pure parts


def test_a_step_holds_micro_batch_x_accumulation_x_world_rows_in_the_same_order():
    examples = [Encoded([i + 1] * 12, [False] * 6 + [True] * 6, f"f:{i}") for i in range(10)]
    cfg = RunConfig.model_validate({"train": {"micro_batch": 2, "grad_accum": 1, "max_seq_len": 16, "epochs": 1}})
    two = plan_steps(examples, cfg, 1.0, world_size=2)
    cfg_one = RunConfig.model_validate({"train": {"micro_batch": 2, "grad_accum": 2, "max_seq_len": 16, "epochs": 1}})
    one = plan_steps(examples, cfg_one, 1.0)
    assert [[r.input_ids for r in step] for step in two] == [[r.input_ids for r in step] for step in one]
    assert [len(step) for step in two] == [4, 4, 2]
    assert my_share(["b0", "b1", "b2"], World(rank=1, size=2)) == ["b1"]
    assert my_share(["b0"], World(rank=1, size=2)) == []


def test_launcher_arguments_run_this_command_in_each_worker():
    args = launcher_args(2, ["train", "c.yaml", "--nproc", "2"], master_port=29555)
    assert args == ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--main_process_port", "29555", "--module", "tunesmith",
                    "train", "c.yaml", "--nproc", "2"]
    two_machines = launcher_args(4, ["train"], nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert two_machines[:4] == ["--multi_gpu", "--num_processes", "8", "--num_machines"]
    assert two_machines[two_machines.index("--machine_rank") + 1] == "1"
    assert two_machines[two_machines.index("--main_process_ip") + 1] == "10.0.0.1"
    assert two_machines[two_machines.index("--main_process_port") + 1] == "29500"


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_one_line_and_the_same_command_continues(runs):
    """The kernel's OOM killer takes one worker: the main process says so in one line (not a
    bug report), train.json says failed, and the same command continues to the end."""
    import psutil

    tmp, base, _, _ = runs
    run = tmp / "killed"
    base = [*base, "--set", "train.epochs=30"]  # ~250 steps: the kill lands mid-run
    command = [sys.executable, "-m", "tunesmith.cli", *map(str, base), "--out", str(run), "--nproc", "2"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while launcher.poll() is None and not (run / "metrics.jsonl").is_file():
        time.sleep(0.01)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(workers) == 1
    workers[0].kill()
    _, stderr = launcher.communicate(timeout=120)
    said = " ".join(stderr.split())
    assert launcher.returncode == 1, stderr
    assert "error: lost contact with the other training processes: one of them stopped without a word" in said
    assert "bug" not in said and "Traceback" not in said
    assert json.loads((run / "train.json").read_text())["status"] == "failed"
    again = tunesmith(*base, "--out", run, "--nproc", "2")
    assert "continuing from checkpoint" in again.stdout or "no complete checkpoint yet" in again.stdout
    record = json.loads((run / "train.json").read_text())
    assert record["status"] == "completed" and record["steps_done"] == record["steps_planned"]
