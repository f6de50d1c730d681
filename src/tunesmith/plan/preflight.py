"""The pre-flight `tunesmith train` runs before loading anything: will this config fit the
device this process sees, and if not, what would."""

from __future__ import annotations

import re
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.prices import Price
from tunesmith.models.arch import UnsupportedModel, count_params
from tunesmith.plan.device import MachineFacts, existing_parent
from tunesmith.plan.inputs import Run, on_device, run_from_config
from tunesmith.plan.memory import GB, cpu_data_bytes, estimate, optimizer_bytes_per_param, trainable_params
from tunesmith.plan.planner import HEADROOM, advice, fits_here, local_option, options


def preflight(cfg: Any, device: Any, tokens_per_epoch: int | None = None) -> dict[str, Any]:
    """Will this config's training fit the device this process sees? Asked before anything
    is loaded, with every position trained (the worst case: the data is not counted yet).
    {"fits": bool | None (None: could not plan), "peak_gb", "device", "reason", "run": Run | None}.
    It fits when the peak leaves HEADROOM of the free memory, on a CPU as on a GPU option: on a
    CPU the peak is the process's resident set (plan.memory.estimate), and with
    `tokens_per_epoch` (once the data stage has counted them) the data the loop keeps too.
    A model the planner cannot read (an architecture it does not count, a hub id not cached
    yet) skips the check with a note; a broken config.json stops here, as it would stop the
    loader."""
    try:
        # Memory needs no token count; several processes split the model by device.strategy.
        run = run_from_config(cfg, device=device.type, gpus=device.processes, strategy=device.strategy)
    except UnsupportedModel as e:
        return {"fits": None, "peak_gb": None, "device": device.to_dict(), "run": None,
                "reason": f"pre-flight skipped: {e}"}
    here = local_option(run, device)
    peak = estimate(run.facts, run.setup).peak
    memory_gb = dict(here["memory_gb"])
    if device.type == "cpu" and tokens_per_epoch:
        data = cpu_data_bytes(tokens_per_epoch, run.epochs)
        peak += data
        memory_gb["data"] = round(data / GB, 3)
    return {"fits": fits_here(peak, device), "peak_gb": round(peak / GB, 2), "device": device.to_dict(), "run": run,
            "memory_gb": memory_gb, "headroom": HEADROOM, "reason": None}


def refusal(check: dict[str, Any], cfg: Any, gpus: list[Gpu], prices: list[Price]) -> str:
    """Why a run is refused, and what would fit instead: GPUs from the catalog and the guide's
    remedies on this device."""
    d = check["device"]
    top = sorted(((v, k) for k, v in check["memory_gb"].items()), reverse=True)[:3]
    lines = [f"pre-flight: this run needs ~{check['peak_gb']:.1f} GB at its peak ("
             + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for v, k in top)
             + f") but {d['name']} has {d['available_gb']:.1f} GB free and the pre-flight keeps {HEADROOM:.0%} of it free."]
    run = on_device(check["run"], cfg, "cuda")
    ranked = [o for o in options(run, gpus, prices, None) if o.headroom_ok][:3]
    if ranked:
        lines.append("GPUs that would fit: " + "; ".join(
            f"{o.count} x {o.gpu} ({o.peak_gb:.1f} of {o.memory_gb:g} GB"
            + (f", ~${o.best_cost:,.2f}" if o.best_cost is not None else "") + ")" for o in ranked) + "."
            + (" (several GPUs: `tunesmith train --nproc N`; `tunesmith plan` prints the whole command.)"
               if any(o.count > 1 for o in ranked) else ""))
    else:
        fix = _first_fix(advice(run, gpus, prices), lambda step: step["fits"] is not None)
        if fix:
            where = fix[1]["fits"] if " x " in fix[1]["fits"] else f"1 x {fix[1]['fits']}"
            lines.append(f"As configured it fits no GPU in the catalog; with {fix[0]} it fits {where} "
                         f"({fix[1]['peak_gb']:.1f} GB).")
    fix = _first_fix(advice(check["run"], gpus, prices), lambda step: step["peak_gb"] <= d["available_gb"] * (1 - HEADROOM))
    if fix:
        lines.append(f"Here, {fix[0]} brings it to {fix[1]['peak_gb']:.1f} GB.")
    lines.append("See `tunesmith plan` for the whole table; to try anyway, run train with --no-preflight.")
    return " ".join(lines)


def _first_fix(steps: list[dict[str, Any]], good: Any) -> tuple[str, dict[str, Any]] | None:
    """The config changes (as --set flags, cumulative) up to the first advice step that is good,
    and that step; None when no step is, or the first good one needs more GPUs."""
    fields: list[str] = []
    for step in steps:
        if not step["set"]:
            return None
        fields += step["set"]
        if good(step):
            return " ".join("--set " + f for f in fields), step
    return None


# ---------------------------------------------------------------- the checklist

CHECKS = ("gpu", "cuda_build", "bf16", "memory", "disk", "filesystem")
KEEP_CHECKPOINTS = 3  # periodic checkpoints kept on disk, until the config says how many
# Filesystem types served over a network, as /proc/mounts names them: renames and fsync are
# weaker there (NFS close-to-open caching, SMB oplocks, FUSE daemons that buffer writes), so
# an atomic checkpoint is less atomic, and every checkpoint crosses the network.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "lustre", "gpfs", "ceph", "glusterfs", "beegfs",
              "afs", "davfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.goofys",
              "fuse.blobfuse", "fuse.blobfuse2", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.glusterfs",
              "fuse.ceph-fuse", "fuse.cephfs")


def _item(check: str, status: str, detail: str) -> dict[str, str]:
    return {"check": check, "status": status, "detail": detail}


def checklist(cfg: Any, device: Any, run_dir: str, machine: MachineFacts, *, run: Run | None = None,
              fit: dict[str, Any] | None = None, keep_checkpoints: int = KEEP_CHECKPOINTS) -> list[dict[str, str]]:
    """What can stop this run on this machine besides memory, each as {"check", "status":
    ok|warn|fail|skip, "detail": one line, what and what to do}. Pure: the machine's answers
    come in `machine` (`plan.device.machine_facts`). `run`: the pre-flight's Run (its model
    facts size the checkpoints; None when the planner could not read the model); `fit`: the
    pre-flight's verdict, listed as the memory item. Any "fail" means the run must not start."""
    items = [gpu_item(cfg, device, machine), cuda_build_item(device, machine), bf16_item(cfg, device, machine)]
    if fit is not None:
        items.append(memory_item(fit))
    items += [disk_item(cfg, run, machine, keep_checkpoints), filesystem_item(run_dir, machine.mounts)]
    return items


def gpu_needs(cfg: Any) -> tuple[list[str], list[str]]:
    """(what in the config needs a CUDA GPU, the --set flags that run it on a CPU instead)."""
    needs, instead = [], []
    if cfg.method.name == "qlora":
        needs.append("QLoRA's 4-bit base")
        instead.append("--method lora")
    if cfg.model.dtype == "float16":
        needs.append(f"model.dtype={cfg.model.dtype}")
        instead.append("--set model.dtype=auto")
    if cfg.train.optimizer != "adamw":
        needs.append(f"the {cfg.train.optimizer} optimizer")
        instead.append("--set train.optimizer=adamw")
    return needs, instead


def gpu_item(cfg: Any, device: Any, machine: MachineFacts) -> dict[str, str]:
    """A run that needs a GPU and sees none fails here rather than training on the CPU for
    days (fp16 and the 4-bit and 8-bit kernels are GPU code) or failing after the model load.
    A bf16 base may train on a CPU: `bf16_item` says whether this one multiplies bf16 natively."""
    needs, instead = gpu_needs(cfg)
    if device.type != "cuda":
        if needs:
            return _item("gpu", "fail", f"{' and '.join(needs)} need{'s' if len(needs) == 1 else ''} a CUDA GPU and "
                                        f"this machine has none: run on a GPU, or here with {' '.join(instead)}")
        return _item("gpu", "ok", f"no CUDA GPU: training on the CPU ({device.name}), as this config can")
    bnb = [n for n in needs if not n.startswith("model.dtype")]
    if bnb and not machine.bitsandbytes:
        return _item("gpu", "fail", f"{' and '.join(bnb)} need{'s' if len(bnb) == 1 else ''} bitsandbytes, which is "
                                    "not installed: pip install bitsandbytes")
    return _item("gpu", "ok", f"training on {device.name}")


def _version(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def cuda_build_item(device: Any, machine: MachineFacts) -> dict[str, str]:
    """torch's CUDA runtime against what the driver supports. A runtime newer than the
    driver's major version cannot start (torch then sees no GPU and the run would quietly
    train on the CPU); within a major version CUDA's minor-version compatibility mostly holds."""
    torch_cuda, driver = machine.torch_cuda, machine.driver_cuda
    if driver is None:
        if device.type == "cuda":
            return _item("cuda_build", "skip", f"torch built for CUDA {torch_cuda}; the driver's CUDA version could "
                                               "not be read (no NVML, no nvidia-smi)")
        return _item("cuda_build", "skip", "no NVIDIA driver found: nothing to match")
    if torch_cuda is None:
        return _item("cuda_build", "warn" if device.type != "cuda" else "ok",
                     f"an NVIDIA driver (CUDA {driver}) is here but torch is a CPU-only build, so training runs on "
                     "the CPU: install torch built for CUDA (pytorch.org/get-started)")
    have, need = _version(driver), _version(torch_cuda)
    if have is None or need is None:
        return _item("cuda_build", "warn", f"cannot compare torch's CUDA {torch_cuda} with the driver's CUDA {driver}")
    if need[0] > have[0]:
        return _item("cuda_build", "fail", f"torch is built for CUDA {torch_cuda} but the driver supports up to CUDA "
                                           f"{driver}: update the NVIDIA driver, or install torch built for CUDA "
                                           f"{have[0]}.x")
    if need > have:
        return _item("cuda_build", "warn", f"torch is built for CUDA {torch_cuda}, the driver supports up to {driver}: "
                                           "minor-version compatibility usually holds, but some kernels may not "
                                           "load; update the driver if one fails")
    return _item("cuda_build", "ok", f"torch built for CUDA {torch_cuda}; the driver supports up to {driver}")


def bf16_item(cfg: Any, device: Any, machine: MachineFacts) -> dict[str, str]:
    """bf16 where the run wants it: LoRA's base weights (dtype auto or bfloat16 on a GPU) and
    full fine-tuning's autocast. Pre-Ampere GPUs have none."""
    if device.type != "cuda":
        if cfg.model.dtype != "bfloat16":
            return _item("bf16", "skip", "CPU run: weights and matmuls in fp32")
        if machine.cpu_bf16:
            return _item("bf16", "ok", f"this CPU multiplies bf16 natively ({machine.cpu_bf16})")
        return _item("bf16", "warn", "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): its bf16 matmuls "
                                     "go through fp32 and run slower than fp32: --set model.dtype=float32")
    wants = cfg.method.name == "full" or cfg.model.dtype in ("auto", "bfloat16")
    if not wants:
        return _item("bf16", "skip", f"model.dtype={cfg.model.dtype}: no bf16 needed")
    if machine.bf16_supported:
        return _item("bf16", "ok", f"{device.name} supports bf16")
    if cfg.method.name == "full":
        return _item("bf16", "fail", f"{device.name} has no bf16 and full fine-tuning autocasts to bf16: use a GPU "
                                     "with bf16 (Ampere or newer)")
    if cfg.model.dtype == "bfloat16":
        return _item("bf16", "fail", f"{device.name} has no bf16: --set model.dtype=float16, or a GPU with bf16 "
                                     "(Ampere or newer)")
    return _item("bf16", "warn", f"{device.name} has no bf16, so model.dtype=auto loads the weights in fp32, twice "
                                 "what the plan counted: --set model.dtype=float16 to halve them")


def memory_item(fit: dict[str, Any]) -> dict[str, str]:
    """The pre-flight's memory verdict as a checklist line."""
    d = fit["device"]
    if fit["fits"] is None:
        return _item("memory", "skip", fit.get("reason") or "pre-flight skipped")
    shown = f"peak ~{fit['peak_gb']:.1f} GB of {d['available_gb']:.1f} GB free"
    if fit["fits"]:
        return _item("memory", "ok", f"{shown}, {HEADROOM:.0%} kept free")
    return _item("memory", "fail", f"{shown} (with {HEADROOM:.0%} kept free): predicted not to fit; see the "
                                   "pre-flight's suggestions, or --no-preflight to try anyway")


def checkpoint_bytes(run: Run) -> tuple[float, float]:
    """(one checkpoint, the final weights) in bytes. A checkpoint holds the trained weights in
    fp32 and the optimizer state a resume needs (AdamW: m and v, 8 B per trained parameter);
    the final save holds the weights alone (the adapter, or the full model in fp32)."""
    f, s = run.facts, run.setup
    trained = count_params(f)["total"] if s.method == "full" else trainable_params(f, s)
    weights = 4.0 * trained
    return weights + optimizer_bytes_per_param(s.optimizer) * trained, weights


def disk_item(cfg: Any, run: Run | None, machine: MachineFacts, keep_checkpoints: int = KEEP_CHECKPOINTS) -> dict[str, str]:
    """Free disk in the run folder's filesystem against what the run keeps there: the
    periodic checkpoints kept, one more as the best, and the final weights. Fails when it
    does not fit; warns under 2x (the data stage, a second run, an export need room too)."""
    if machine.disk_free_bytes is None:
        return _item("disk", "skip", f"free space under {cfg.output.dir} could not be read")
    if run is None:
        return _item("disk", "skip", "the model's size is unknown (see memory), so the checkpoints are too")
    each, final = checkpoint_bytes(run)
    need = (keep_checkpoints + 1) * each + final
    free = machine.disk_free_bytes
    shown = (f"{need / GB:.2f} GB for {keep_checkpoints} + 1 best checkpoints of {each / GB:.2f} GB and the final "
             f"weights, {free / GB:.1f} GB free under {cfg.output.dir}")
    if need > free:
        return _item("disk", "fail", f"{shown}: free some space or choose another --out")
    if 2 * need > free:
        return _item("disk", "warn", f"{shown}: less than twice what the run keeps; free some space to be safe")
    return _item("disk", "ok", shown)


def mount_for(path: str, mounts: str) -> tuple[str, str, str] | None:
    """(mount point, filesystem type, source) of the mount holding `path` (absolute, links
    resolved): the longest mount point that is a prefix of it, the last mounted one when a
    point is mounted twice (it hides the earlier)."""
    best: tuple[str, str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces, tabs, newlines and backslashes as octal (\040).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2], fields[0])
    return best


def filesystem_item(run_dir: str, mounts: str) -> dict[str, str]:
    """A run folder on a network filesystem works, but atomic renames and fsync are weaker
    there and every checkpoint crosses the network: a warning, not a refusal."""
    where = existing_parent(run_dir)
    found = mount_for(where, mounts)
    if found is None:
        return _item("filesystem", "skip", f"no mount table entry for {run_dir}")
    point, fstype, source = found
    if fstype in NETWORK_FS:
        return _item("filesystem", "warn", f"{run_dir} is on {fstype} ({source} at {point}): renames and fsync are "
                                           "weaker there and checkpoints slower; put --out on a local disk and copy "
                                           "the results after")
    return _item("filesystem", "ok", f"{run_dir} is on {fstype} ({point})")


def failed(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """The items that stop the run."""
    return [i for i in items if i["status"] == "fail"]
