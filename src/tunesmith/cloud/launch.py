"""`tunesmith launch`: the run as a SkyPilot managed job. `prepare` decides everything from the
config and its plan (nothing written); `write_launch` writes RUN/launch/ (the config the cloud
machine runs, the wheel, the constraints, task.yaml, launch.json); the CLI checks task.yaml
with SkyPilot's parser and, without --dry-run, submits it.

RUN/launch/launch.json is the record `tunesmith status | logs | down | pull RUN` read: the job's
name, the bucket folder holding the run, the GPUs asked for and the estimate."""

from __future__ import annotations

import datetime
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.catalog.gpu import load_gpus
from tunesmith.catalog.prices import load_prices
from tunesmith.catalog.sky_names import sky_name
from tunesmith.cloud.package import PINNED_NOTE, build_wheel, constraints, source_tree, tree_commit
from tunesmith.cloud.pull import tree_bytes
from tunesmith.cloud.task import (PINNED, REMOTE_RUN, Candidate, candidates, disk_gb, estimate_line, launch_command,
                                  parse_bucket, parse_gpu, remote_inputs, setup_script, task_config)
from tunesmith.config import RunConfig
from tunesmith.errors import UsageError
from tunesmith.io import block_yaml, read_json, write_json_atomic, write_text_atomic
from tunesmith.plan.inputs import TokenCount, configured_strategy, dataset_tokens, parse_tokens, run_from_config
from tunesmith.plan.planner import make_plan

RECORD = "launch.json"
# Secrets the cloud machine may need, passed by name from this machine's environment at
# launch (`sky jobs launch --secret NAME`), never written to a file.
HF_TOKEN = "HF_TOKEN"
WANDB_KEY = "WANDB_API_KEY"


@dataclass(frozen=True)
class Launch:
    """Everything `tunesmith launch` decided, before anything is written."""

    run_dir: Path
    name: str  # the managed job's name
    spot: bool
    picks: list[Candidate]
    disk_gb: int
    run_bucket: str  # the bucket folder mounted at the run folder
    config: dict[str, Any]  # the config as the cloud machine runs it
    uploads: dict[str, str]  # remote path -> local path
    extras: list[str]
    secrets: list[str]  # names the job needs from this machine's environment
    tokens_from: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def launch_dir(self) -> Path:
        return self.run_dir / "launch"

    @property
    def task_file(self) -> Path:
        return self.launch_dir / "task.yaml"

    @property
    def estimate(self) -> str:
        return estimate_line(self.picks, self.spot)


def prepare(cfg: RunConfig, *, spot: bool, gpu: str = "auto", bucket: str | None, tokens: str | None) -> Launch:
    """Decide the job for `cfg`: UsageError for anything the cloud machine would refuse, so a
    rented GPU never waits on a mistake this machine can see."""
    if bucket is None:
        raise UsageError("--bucket is needed: the run folder lives in a bucket (s3://NAME, gs://NAME, ...) so that a "
                         "preemption loses nothing and `tunesmith pull RUN` can bring it back; create one with your "
                         "cloud's tools first")
    run_bucket_root = parse_bucket(bucket)
    if cfg.distributed.strategy in ("zero2", "zero3"):
        raise UsageError(f"distributed.strategy={cfg.distributed.strategy}: train does not run DeepSpeed ZeRO yet; "
                         "use fsdp (it shards the same way) or auto")
    run_dir = Path(cfg.output.dir)
    refuse_local_run(run_dir)
    only_gpu, gpu_count = parse_gpu(gpu)
    config, uploads = remote_inputs(cfg.to_dict())
    count = token_count(cfg, tokens)
    plan = make_plan(run_from_config(cfg, count, device="cuda", gpus=gpu_count or 1, strategy=configured_strategy(cfg)),
                     load_gpus(), load_prices(), count=gpu_count, strategy=configured_strategy(cfg), only_gpu=only_gpu)
    picks = candidates(plan["options"], "spot" if spot else "on_demand")
    upload_bytes = sum(tree_bytes(Path(local)) for local in uploads.values())
    from_hub = not any(remote.startswith("/tunesmith/model") for remote in uploads)
    secrets = ([HF_TOKEN] if from_hub else []) + ([WANDB_KEY] if "wandb" in cfg.track.to else [])
    return Launch(
        run_dir=run_dir, name=sky_name(f"tunesmith-{run_dir.name}"), spot=spot, picks=picks,
        disk_gb=disk_gb(plan, upload_bytes=upload_bytes, keep_checkpoints=cfg.train.keep_checkpoints),
        run_bucket=f"{run_bucket_root}/{run_dir.name}", config=config, uploads=uploads,
        extras=extras_for(cfg), secrets=secrets, tokens_from=plan["tokens"]["from"],
        notes=list(plan["notes"]))


def extras_for(cfg: RunConfig) -> list[str]:
    """tunesmith's extras the cloud machine needs for this config: the GPU ones always, and
    those the config's cleaning and tracking use."""
    wanted = {"gpu": True, "semantic": cfg.clean.semantic_dedup, "ner": cfg.clean.pii_ner, "track": bool(cfg.track.to)}
    return [name for name, needed in wanted.items() if needed]


def refuse_local_run(run_dir: Path) -> None:
    """A folder a local training wrote into is not taken over: `pull` would mix two runs."""
    if (run_dir / "launch" / RECORD).is_file() or not run_dir.exists():
        return
    if (run_dir / "train.json").exists() or (run_dir / "checkpoints").exists():
        raise UsageError(f"output.dir {run_dir}: holds a run trained on this machine; launch into another folder "
                         f"(--set output.dir={run_dir}-cloud): `tunesmith pull` brings the cloud run there")


def token_count(cfg: RunConfig, tokens: str | None) -> TokenCount:
    """--tokens, else data.train counted with the model's tokenizer, as `train` will count it."""
    if tokens is not None:
        return TokenCount(parse_tokens(tokens), None, "--tokens")
    return dataset_tokens(str(cfg.data.train), cfg, "data.train file")


# ---------------------------------------------------------------- RUN/launch

def write_launch(launch: Launch, config_path: str) -> dict[str, Any]:
    """RUN/launch/: config.yaml, constraints.txt, this tunesmith's wheel (from a checkout),
    task.yaml and launch.json. Returns the record."""
    launch.launch_dir.mkdir(parents=True, exist_ok=True)
    tree = source_tree()
    wheel = build_wheel(tree, launch.launch_dir).name if tree is not None else None
    write_text_atomic(launch.launch_dir / "config.yaml", block_yaml(launch.config))
    write_text_atomic(launch.launch_dir / "constraints.txt", PINNED_NOTE + constraints(PINNED))
    task = task_config(name=launch.name, picks=launch.picks, spot=launch.spot, disk=launch.disk_gb,
                       run_bucket=launch.run_bucket, launch_dir=launch.launch_dir, uploads=launch.uploads,
                       setup=setup_script(wheel, __version__, launch.extras))
    command = launch_command(launch.task_file, launch.name, launch.secrets)
    write_text_atomic(launch.task_file, task_header(launch, config_path, command) + block_yaml(task))
    record = {
        "job": launch.name, "bucket": launch.run_bucket, "pricing": "spot" if launch.spot else "on_demand",
        "candidates": [asdict(c) for c in launch.picks], "estimate": launch.estimate, "disk_gb": launch.disk_gb,
        "tokens_from": launch.tokens_from, "secrets": launch.secrets, "command": command,
        "tunesmith": __version__, "source": (tree_commit(tree) or "a checkout outside git") if tree else "release",
        "config": config_path, "written_at": now(), "launched_at": None,
    }
    write_json_atomic(launch.launch_dir / RECORD, record)
    return record


def task_header(launch: Launch, config_path: str, command: list[str]) -> str:
    gpus = ", ".join(f"{c.count} x {c.gpu}" for c in launch.picks)
    lines = [
        f"# tunesmith launch {config_path}: {launch.run_dir} as a SkyPilot managed job ({__version__})",
        f"# On {'spot' if launch.spot else 'on-demand'} GPUs, the cheapest SkyPilot can get of: {gpus}.",
        f"# Estimate: {launch.estimate}.",
        f"# The run folder is {launch.run_bucket}, mounted at {REMOTE_RUN}: after a preemption SkyPilot reruns the",
        "# same command on a new machine and it resumes from the newest checkpoint there.",
        f"# Launch: {shlex.join(command)}",
        f"# Then: tunesmith status {launch.run_dir} | tunesmith logs {launch.run_dir} | tunesmith pull {launch.run_dir}",
    ]
    return "\n".join(lines) + "\n"


def read_record(run_dir: Path) -> dict[str, Any]:
    """RUN/launch/launch.json; UsageError when RUN was not launched from here."""
    path = Path(run_dir) / "launch" / RECORD
    if not path.is_file():
        raise UsageError(f"{path}: not found; `tunesmith launch CONFIG` writes it (RUN is the config's output.dir)")
    record = read_json(path, "launch record", "it is written by `tunesmith launch`: run it again")
    if not isinstance(record, dict) or not isinstance(record.get("job"), str) or not isinstance(record.get("bucket"), str):
        raise UsageError(f"{path}: no job name and bucket in it; it is written by `tunesmith launch`: run it again")
    return record


def differences(parsed: dict[str, Any], launch: Launch) -> list[str]:
    """Where SkyPilot's reading of task.yaml differs from what was meant (empty: none)."""
    meant = sorted((name, int(n)) for name, n in (c.accelerators.split(":") for c in launch.picks))
    read = sorted((name, int(n)) for r in parsed["resources"] for name, n in (r["accelerators"] or {}).items())
    found = []
    if read != meant:
        found.append(f"accelerators {read} instead of {meant}")
    if any(r["use_spot"] != launch.spot or r["disk_size"] != launch.disk_gb for r in parsed["resources"]):
        found.append(f"spot/disk {[(r['use_spot'], r['disk_size']) for r in parsed['resources']]}")
    mount = parsed["storage_mounts"].get(REMOTE_RUN)
    if mount != {"source": launch.run_bucket, "mode": "MOUNT_CACHED"}:
        found.append(f"{REMOTE_RUN} mounted as {mount}")
    return found


def mark_launched(run_dir: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / "launch" / RECORD, {**record, "launched_at": now()})


def missing_secrets(names: list[str]) -> list[str]:
    """The secrets not set in this environment (the job would start without them)."""
    return [name for name in names if not os.environ.get(name)]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
