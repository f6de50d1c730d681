"""The checkpoint contract: everything needed to continue a run exactly, and nothing that
needs unpickling to read.

    checkpoints/step-NNNNNN/
      weights.safetensors   the trained parameters by name (LoRA adapters, or every weight)
      state.safetensors     optimizer tensors (`optimizer.<param>.<key>`) and RNG states (`rng.*`;
                            with several workers also `rng.rank<N>`, each worker's own)
      state.json            step, tokens, times, the loop's state, the fingerprint, optimizer and
                            scheduler scalars, python/numpy RNG, and each file's size and sha256
      metrics.jsonl         the run's metrics.jsonl as it was at this step
    checkpoints/latest      the name of the newest complete checkpoint

A checkpoint is written into a temp folder, fsynced, then renamed: it is complete or absent.
Reading one checks every file against the sizes and hashes in state.json, so a checkpoint
damaged after the fact (a full disk, a bad copy) is refused with a reason and the run falls
back to the one before.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.config import RunConfig, flat_fields
from tunesmith.io import (
    file_facts, file_sha256, fsync_dir, fsync_tree, write_dir_atomic, write_json_atomic, write_text_atomic,
)
from tunesmith.train.sharding import full_trained_weights, shard_like, sharded_optimizer_state

FORMAT = 1
STEP_NAME = re.compile(r"^step-(\d{6,})$")
WEIGHTS, TENSORS, STATE, METRICS = "weights.safetensors", "state.safetensors", "state.json", "metrics.jsonl"

# Config fields that may change between a run and its resumption: they do not touch the
# weights or the order of the data (where results go, how often to log or save, how the
# finished model is evaluated, where metrics are mirrored, whether the pre-flight may change
# the config: what it changed is in the other fields).
FREE_TO_CHANGE = ("output.dir", "train.log_every", "train.save_every", "train.keep_checkpoints",
                  "train.watch_preemption", "train.auto_fit", "eval.", "track.")


class CorruptCheckpoint(Exception):
    """A checkpoint folder that cannot be used; the message says why."""


# ---------------------------------------------------------------- fingerprint

def config_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config fields that fix the schedule and the weights."""
    return relevant_fields(flat_fields(cfg.to_dict()))


def relevant_fields(flat: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in flat.items()
            if not any(key == free or (free.endswith(".") and key.startswith(free)) for free in FREE_TO_CHANGE)}


def input_hashes(cfg: RunConfig) -> dict[str, str]:
    """sha256 of the data files as given: a changed file is caught before any work."""
    files = {"data.train": cfg.data.train, "data.val": cfg.data.val}
    return {field: file_sha256(path) for field, path in files.items() if path}


def fingerprint(cfg: RunConfig, world_size: int = 1) -> dict[str, Any]:
    """What a checkpoint may only be continued with: the config fields that matter, the
    input files' hashes, the cleaned data's hashes (None until the data stage ran: the
    caller fills them in), world size."""
    return {"config": config_fingerprint(cfg), "inputs": input_hashes(cfg), "data": None, "world_size": world_size}


def field_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`["train.lr 0.0002 -> 0.0001", ...]` between two flat field tables."""
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if before != after:
            changed.append(f"{key} {before} -> {after}")
    return changed


def cleaned_hashes(data_dir: Path) -> dict[str, str]:
    return {name: file_sha256(data_dir / name) for name in ("train.jsonl", "val.jsonl")}


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`["train.lr 0.0002 -> 0.0001", "data.train: the file's content changed"]`; parts of
    `new` that are None (not computed yet) are not compared."""
    changed = field_differences(old.get("config", {}), new.get("config", {}))
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for field in sorted(set(old_inputs) | set(new_inputs)):
        if field in old_inputs and field in new_inputs and old_inputs[field] != new_inputs[field]:
            changed.append(f"{field}: the file's content changed")
    if new.get("data") is not None and old.get("data") is not None and new["data"] != old["data"]:
        changed.append("the cleaned data (RUN/data) differs from what the checkpoint trained on")
    if new.get("world_size") != old.get("world_size"):
        changed.append(f"processes (--nproc x --nnodes) {old.get('world_size')} -> {new.get('world_size')}")
    return changed


# ---------------------------------------------------------------- writing

def save_checkpoint(run_dir: Path, step: int, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], fingerprint: dict[str, Any],
                    rank_rng: list[torch.Tensor] | None = None, weights: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None, metrics: Path | None = None) -> Path:
    """checkpoints/step-NNNNNN, complete or absent; then `latest` names it. `rank_rng`: each
    worker's torch generator state (CPU, then its GPU's), by rank, when several train;
    `weights` and `optimizer_state`: gathered from shards (FSDP), instead of the model's and
    the optimizer's own. `metrics`: the run's metrics.jsonl, copied in: on a bucket mount
    the run's own file can reach the bucket older than this checkpoint, and a run resumed from
    here needs the log up to this step to log each step exactly once."""

    def fill(folder: Path) -> None:
        save_file(weights if weights is not None else full_trained_weights(model), str(folder / WEIGHTS))
        optimizer_tensors, optimizer_meta = _split_optimizer(
            optimizer_state if optimizer_state is not None else optimizer.state_dict())
        rng_tensors, rng_meta = _capture_rng()
        rng_tensors.update({f"rng.rank{rank}": state.contiguous() for rank, state in enumerate(rank_rng or [])})
        save_file({**optimizer_tensors, **rng_tensors}, str(folder / TENSORS))
        names = [WEIGHTS, TENSORS]
        if metrics is not None and metrics.is_file():
            shutil.copyfile(metrics, folder / METRICS)
            names.append(METRICS)
        files = {name: file_facts(folder / name) for name in names}
        write_json_atomic(folder / STATE, {
            "format": FORMAT, "step": step, **state, "fingerprint": fingerprint,
            "optimizer": optimizer_meta, "scheduler": _json_safe(scheduler.state_dict()), "rng": rng_meta,
            "files": files,
        })
        fsync_tree(folder)

    final = write_dir_atomic(checkpoint_dir(run_dir, step), fill)
    fsync_dir(final.parent)
    write_text_atomic(run_dir / "checkpoints" / "latest", final.name + "\n")
    return final


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors to safetensors under `optimizer.<param>.<key>`; scalars and groups to JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": _json_safe(state_dict["param_groups"]), "scalars": _json_safe(scalars)}


def _capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator training can draw from: torch CPU (which also drives the CPU LoRA
    dropout), each CUDA device, python's and numpy's global ones."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def _json_safe(value: Any) -> Any:
    """Optimizer groups and scheduler state as JSON (tuples become lists; tensors, which a
    scheduler may hold, become numbers); anything else is a bug to hear about."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


# ---------------------------------------------------------------- reading

@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # state.json

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / WEIGHTS))

    @property
    def metrics(self) -> Path | None:
        """Its copy of the run's metrics.jsonl; None in a checkpoint written before they had one."""
        return self.path / METRICS if METRICS in self.state["files"] else None


def read_checkpoint(folder: Path) -> Checkpoint:
    """A checkpoint whose files all match state.json; CorruptCheckpoint says what does not."""
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{folder.name}: has no {STATE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{folder.name}/{STATE} cannot be read ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("files"), dict):
        raise CorruptCheckpoint(f"{folder.name}/{STATE} is not a format-{FORMAT} checkpoint state")
    for name, expected in state["files"].items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{folder.name}/{name} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise CorruptCheckpoint(f"{folder.name}/{name} has {path.stat().st_size} bytes, "
                                    f"{expected['bytes']} were written")
        if file_sha256(path) != expected["sha256"]:
            raise CorruptCheckpoint(f"{folder.name}/{name} does not match the hash written with it")
    return Checkpoint(folder, state)


def best_unreadable(checkpoint: Checkpoint) -> str | None:
    """Why the checkpoint of `checkpoint`'s best step cannot be read (None: it can, or it is
    this one). Its weights become the run's adapter at the end, unless a later evaluation
    beats it."""
    best = checkpoint.state.get("loop", {}).get("best_step")
    if best is None or best == checkpoint.step:
        return None
    try:
        read_checkpoint(checkpoint.path.parent / f"step-{best:06d}")
    except CorruptCheckpoint as e:
        return str(e)
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temp folders of an interrupted write are not listed)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_NAME.match(p.name).group(1)))


def newest_valid(run_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that reads back whole, and so does its best one; a note for each
    newer one skipped. A bucket mount uploads files in no order, so it can hold a newer
    checkpoint whole and the best one half: continuing from the newer one would train to the
    end and fail there unless a later evaluation beats that best. When no checkpoint has its
    best whole (older ones' bests may be pruned), the newest whole one, as before."""
    notes: list[str] = []
    whole = None
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            checkpoint = read_checkpoint(folder)
        except CorruptCheckpoint as e:
            notes.append(f"checkpoint {e}: using the one before it")
            continue
        missing = best_unreadable(checkpoint)
        if missing is None:
            return checkpoint, notes
        notes.append(f"checkpoint {folder.name}: the checkpoint of its best step, {missing}: using the one before it")
        whole = whole or checkpoint
    if whole is not None:
        notes.append(f"no checkpoint has the checkpoint of its best step whole: continuing from {whole.path.name} "
                     f"anyway; the run can end only if a later evaluation beats that best")
    return whole, notes


# ---------------------------------------------------------------- restoring

def restore(checkpoint: Checkpoint, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
            rank: int = 0, sharded: bool = False) -> None:
    """Put weights, optimizer, scheduler and every RNG back exactly as they were saved (the
    generators of worker `rank` when several trained; cut into shards when `sharded`)."""
    load_weights(model, checkpoint.weights(), checkpoint.path.name)
    tensors = load_file(str(checkpoint.path / TENSORS))
    optimizer_state = _join_optimizer(checkpoint.state["optimizer"], tensors)
    optimizer.load_state_dict(sharded_optimizer_state(optimizer, optimizer_state) if sharded else optimizer_state)
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    _restore_rng(checkpoint.state["rng"], tensors)
    own = tensors.get(f"rng.rank{rank}")
    if own is not None:
        cpu_size = torch.get_rng_state().numel()
        torch.set_rng_state(own[:cpu_size].clone())
        if own.numel() > cpu_size and torch.cuda.is_available():
            torch.cuda.set_rng_state(own[cpu_size:].clone(), torch.cuda.current_device())


def load_weights(model: Any, weights: dict[str, torch.Tensor], where: str) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise CorruptCheckpoint(f"{where}: its weights do not match this model (missing {missing[:3]}, "
                                f"unexpected {extra[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(shard_like(weights[name], p))  # the tensor itself, unless p is a shard


def _join_optimizer(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, scalars in meta["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def _restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- housekeeping

def prune(run_dir: Path, keep: int, best_step: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints and the best one; returns what went."""
    folders = list_checkpoints(run_dir)
    keep_names = {p.name for p in folders[-keep:]} if keep > 0 else set()
    if best_step is not None:
        keep_names.add(checkpoint_dir(run_dir, best_step).name)
    removed = [p for p in folders if p.name not in keep_names]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def discard_after(run_dir: Path, step: int) -> list[Path]:
    """Checkpoints newer than the one a run continues from belong to a future that will be
    trained again: remove them (and temp folders a kill left mid-write)."""
    root = run_dir / "checkpoints"
    gone = [p for p in list_checkpoints(run_dir) if int(STEP_NAME.match(p.name).group(1)) > step]
    if root.is_dir():
        gone += [p for p in root.iterdir() if p.name.startswith(".")]
    for path in gone:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if step and root.is_dir():
        write_text_atomic(root / "latest", f"step-{step:06d}\n")
    return gone
