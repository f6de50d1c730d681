"""The SkyPilot managed job for a run, as plain data: which GPUs to ask for (the planner's
options that fit, cheapest first), how much disk, what to upload, how the cloud machine
installs tunesmith and trains. Pure functions; `launch.py` writes the files.

On the cloud machine:

    /tunesmith/run      the run folder: a bucket mounted MOUNT_CACHED (written to local disk,
                        uploaded in the background), so a preemption loses at most what was
                        not uploaded yet, and the rerun of the same command resumes from it
    /tunesmith/launch   RUN/launch from this machine: the config, the wheel, the constraints
    /tunesmith/data     the data files, uploaded
    /tunesmith/model    the model, when it is a local folder or GGUF file (a hub model is
                        downloaded there instead)
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tunesmith.catalog.prices import resolve_gpu
from tunesmith.catalog.sky_names import SKY_ACCELERATORS
from tunesmith.errors import UsageError
from tunesmith.models.aliases import find_alias
from tunesmith.models.source import alias_gguf_path, is_hub_id
from tunesmith.plan.memory import optimizer_bytes_per_param

REMOTE_RUN = "/tunesmith/run"
REMOTE_LAUNCH = "/tunesmith/launch"
REMOTE_DATA = "/tunesmith/data"
REMOTE_MODEL = "/tunesmith/model"

# SkyPilot takes the cheapest candidate it can get. More candidates find a spot GPU sooner;
# this bounds what the run may cost against the cheapest.
MAX_CANDIDATES = 4
COST_SPREAD = 1.5
# A crash (a lost NCCL peer, a node fault) is retried this often; `train` exits 143 after a
# preemption notice with a checkpoint written, which is always worth a restart.
MAX_RESTARTS_ON_ERRORS = 3
PREEMPTED_EXIT = 143
# Disk: the image and Python environment with CUDA's libraries (assumed: a CUDA torch alone
# is ~7 GB installed, SkyPilot's images ~20-30 GB), then what the run itself puts there.
SOFTWARE_GB = 40
MIN_DISK_GB = 100
GB = 1e9
# Stores SkyPilot mounts (its `source:` schemes); Azure is an https URL of a blob container.
BUCKET_SCHEMES = ("s3", "gs", "r2", "cos", "oci", "nebius")
AZURE_BLOB = re.compile(r"https://[a-z0-9]+\.blob\.core\.windows\.net/[a-z0-9-]+(/.*)?")
# The packages whose versions decide what training computes: the cloud machine gets the ones
# installed here (its torch from the default index, a CUDA build on Linux).
PINNED = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers")


@dataclass(frozen=True)
class Candidate:
    """One GPU choice for the job: n x one catalog GPU, with the planner's time and cost."""

    gpu: str
    count: int
    hours: float
    cost: float  # US $ for the run at the chosen pricing (the midpoint of the price range)
    cost_range: tuple[float, float]
    provider: str | None

    @property
    def accelerators(self) -> str:
        return f"{SKY_ACCELERATORS[self.gpu]}:{self.count}"


def parse_gpu(text: str) -> tuple[str | None, int | None]:
    """--gpu: "auto" -> (None, None); "H100" -> ("H100-SXM", None); "A100-80GB:4" -> (…, 4)."""
    if text.strip().lower() == "auto":
        return None, None
    name, _, count = text.partition(":")
    if count and not (count.isdigit() and int(count) in (1, 2, 4, 8)):
        raise UsageError(f"--gpu {text}: the count after ':' is 1, 2, 4 or 8 GPUs on one machine, e.g. H100:8")
    gpu = resolve_gpu(name)
    if gpu not in SKY_ACCELERATORS:
        raise UsageError(f"--gpu {text}: SkyPilot has no single accelerator name for {gpu}; choose one of "
                         f"{', '.join(SKY_ACCELERATORS)}")
    return gpu, int(count) if count else None


def parse_bucket(uri: str) -> str:
    """The bucket (and optional prefix) the run folder goes under, without a trailing '/'."""
    text = uri.strip().rstrip("/")
    scheme, sep, rest = text.partition("://")
    if (sep and scheme in BUCKET_SCHEMES and rest and not rest.startswith("/")) or AZURE_BLOB.fullmatch(text):
        return text
    raise UsageError(f"--bucket {uri}: not a bucket SkyPilot mounts; give s3://NAME[/PREFIX], gs://NAME[/PREFIX], "
                     f"r2://NAME, {', '.join(f'{s}://NAME' for s in BUCKET_SCHEMES[3:])} or "
                     "https://ACCOUNT.blob.core.windows.net/CONTAINER (the bucket must exist; `sky check` shows "
                     "the clouds you can use)")


# ---------------------------------------------------------------- GPUs

def candidates(options: Sequence[dict[str, Any]], pricing: str) -> list[Candidate]:
    """The planner's options that fit with headroom, that `train` runs and SkyPilot can name,
    priced at `pricing` ("spot" or "on_demand"): the cheapest first, then those within
    COST_SPREAD of it, at most MAX_CANDIDATES. UsageError when none qualifies, saying why."""
    fitting = [o for o in options if o["headroom_ok"]]
    if not fitting:
        raise UsageError("no GPU in the catalog fits this run with headroom, up to 8 per machine: "
                         "`tunesmith plan CONFIG` says what would (QLoRA, a shorter max_seq_len, ...)")
    if fitting[0]["hours"] is None:
        raise UsageError("no token count, so no time or cost to choose GPUs by: give --tokens N (e.g. 20M)")
    runnable = [o for o in fitting if o["gpu"] in SKY_ACCELERATORS and o["strategy"] not in ("zero2", "zero3")]
    priced = [_candidate(o, pricing) for o in runnable if o[f"cost_{pricing}"] is not None]
    if not priced:
        other = "--on-demand" if pricing == "spot" else "--spot"
        raise UsageError(f"none of the GPUs that fit ({', '.join(sorted({o['gpu'] for o in fitting}))}) has a "
                         f"{pricing.replace('_', '-')} price in the catalog: try {other}, or name one with --gpu")
    priced.sort(key=lambda c: (c.cost, c.hours))
    cheapest = priced[0].cost
    return [c for c in priced if c.cost <= COST_SPREAD * cheapest][:MAX_CANDIDATES]


def _candidate(option: dict[str, Any], pricing: str) -> Candidate:
    spot = pricing == "spot"
    return Candidate(gpu=option["gpu"], count=option["count"],
                     hours=option["spot_hours"] if spot else option["hours"],
                     cost=option[f"cost_{pricing}"], cost_range=tuple(option[f"cost_{pricing}_range"]),
                     provider=option[f"provider_{pricing}"])


# ---------------------------------------------------------------- disk

def disk_gb(plan: dict[str, Any], *, upload_bytes: float, keep_checkpoints: int) -> int:
    """The boot disk: software, the base model's weights as downloaded (16-bit), the uploads,
    and what the run folder's local cache holds at most (the checkpoints kept, one more as
    the best, the final weights: as the pre-flight's disk check counts them). Rounded up to
    10 GB, at least MIN_DISK_GB."""
    setup, params = plan["setup"], plan["params"]
    trained = params["total"] if setup["method"] == "full" else params["trainable"]
    checkpoint = (4 + optimizer_bytes_per_param(setup["optimizer"])) * trained
    need = SOFTWARE_GB * GB + 2 * params["total"] + upload_bytes + (keep_checkpoints + 1) * checkpoint + 4 * trained
    return max(MIN_DISK_GB, int(-(-need // (10 * GB)) * 10))


# ---------------------------------------------------------------- inputs

def model_upload(source: str) -> Path | None:
    """The local file or folder a model source names (uploaded to the cloud machine), or None
    for a hub model (downloaded there)."""
    alias = find_alias(source)
    if alias is not None:
        return alias_gguf_path(source) if alias.gguf else None
    path = Path(source).expanduser()
    if path.exists():
        return path
    if is_hub_id(source):
        return None
    raise UsageError(f"model.source {source}: not found here, and not a hub id (org/name) the cloud machine could "
                     "download; give a model folder, a .gguf file, a hub id or a built-in alias")


def remote_inputs(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The config as the cloud machine runs it (its paths there, the run folder in the
    bucket), and the uploads: {remote path: local path}. UsageError for a data file that is
    not here."""
    config = {section: dict(values) if isinstance(values, dict) else values for section, values in cfg.items()}
    uploads: dict[str, str] = {}
    for field in ("train", "val"):
        local = config["data"].get(field)
        if not local:
            if field == "train":
                raise UsageError("data.train is not set: give data.train in the config or --set data.train=FILE")
            continue
        path = Path(local).expanduser()
        if not path.is_file():
            raise UsageError(f"data.{field} {local}: file not found (launch uploads it from this machine)")
        remote = f"{REMOTE_DATA}/{field}/{path.name}"
        config["data"][field] = remote
        uploads[remote] = str(path.resolve())
    model = model_upload(config["model"]["source"])
    if model is not None:
        remote = REMOTE_MODEL if model.is_dir() else f"{REMOTE_MODEL}/{model.name}"
        config["model"]["source"] = remote
        uploads[remote] = str(model.resolve())
    config["output"]["dir"] = REMOTE_RUN
    return config, uploads


# ---------------------------------------------------------------- the task

def setup_script(wheel: str | None, version: str, extras: Sequence[str]) -> str:
    """Install this tunesmith on the cloud machine: the wheel built here (or the released
    version), with the training libraries pinned to the versions installed here."""
    extra = f"[{','.join(extras)}]" if extras else ""
    package = f"{REMOTE_LAUNCH}/{wheel}{extra}" if wheel else f"tunesmith{extra}=={version}"
    return ("set -e\n"
            f"pip install --quiet -c {REMOTE_LAUNCH}/constraints.txt torch {shlex.quote(package)}\n"
            "tunesmith --version\n")


def run_script() -> str:
    """The same command on the first start and after every preemption: it resumes from the
    newest complete checkpoint in the bucket by itself."""
    return (f"tunesmith train {REMOTE_LAUNCH}/config.yaml --nproc \"$SKYPILOT_NUM_GPUS_PER_NODE\" --no-progress\n")


def task_config(*, name: str, picks: Sequence[Candidate], spot: bool, disk: int, run_bucket: str,
                launch_dir: Path, uploads: dict[str, str], setup: str) -> dict[str, Any]:
    """The managed job as SkyPilot's task YAML reads it."""
    return {
        "name": name,
        "resources": {
            "use_spot": spot,
            "disk_size": disk,
            "job_recovery": {"max_restarts_on_errors": MAX_RESTARTS_ON_ERRORS,
                             "recover_on_exit_codes": [PREEMPTED_EXIT]},
            "any_of": [{"accelerators": c.accelerators} for c in picks],
        },
        "envs": {"TUNESMITH_PRICING": "spot" if spot else "on_demand", "PYTHONUNBUFFERED": "1"},
        "file_mounts": {
            REMOTE_RUN: {"source": run_bucket, "mode": "MOUNT_CACHED"},
            REMOTE_LAUNCH: str(launch_dir.resolve()),
            **uploads,
        },
        "setup": setup,
        "run": run_script(),
    }


def estimate_line(picks: Sequence[Candidate], spot: bool) -> str:
    """What the job should cost: the cheapest candidate, and the dearest SkyPilot may take."""
    kind = "spot" if spot else "on-demand"
    first, dearest = picks[0], max(picks, key=lambda c: c.cost_range[1])
    line = (f"~${first.cost:,.2f} on {kind} ({first.count} x {first.gpu}, {first.hours:,.2f} h"
            + (", preemptions included" if spot else "") + ")")
    if len(picks) > 1:
        line += f"; up to ${dearest.cost_range[1]:,.2f} if SkyPilot can only get {dearest.count} x {dearest.gpu}"
    return line


def launch_command(task_file: Path, name: str, secrets: Sequence[str]) -> list[str]:
    """`sky jobs launch` for the task: named, without a prompt, detached once submitted."""
    words = ["sky", "jobs", "launch", str(task_file), "--name", name, "--yes", "--detach-run"]
    for secret in secrets:
        words += ["--secret", secret]
    return words
