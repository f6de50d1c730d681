"""The GPU catalog: memory, dense bf16 peak and bandwidth per GPU type, as data with sources."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    bf16_tflops: float  # dense, no sparsity
    bandwidth_gbps: float
    source: str


def load_gpus() -> list[Gpu]:
    data = json.loads((resources.files("tunesmith.catalog") / "gpus.json").read_text(encoding="utf-8"))
    return [Gpu(**entry) for entry in data["gpus"]]


def gpu(name: str) -> Gpu:
    """Look a GPU up by name, case-insensitively ("h100-sxm", "A100-80GB")."""
    from tunesmith.errors import UsageError

    by_name = {g.name.lower(): g for g in load_gpus()}
    found = by_name.get(name.lower())
    if found is None:
        raise UsageError(f"unknown GPU {name!r}; the catalog has {', '.join(g.name for g in load_gpus())}")
    return found
