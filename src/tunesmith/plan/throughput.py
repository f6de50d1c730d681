"""Training time from FLOPs: work per token x tokens / (GPU peak x MFU).

Work per token counts what the step computes, not only what MFU credits: the forward pass
is 2 FLOPs per weight; backward is 2 more for the input gradients and, only for weights that
train, 2 more for weight gradients. So full fine-tuning is ~6P and LoRA ~4P + 6P_adapters
(frozen weights need no weight gradient); gradient checkpointing runs the forward twice
(+2P); causal attention adds 6 x layers x q_width x row/2 x 2 per token.
MFU defaults live in `catalog/mfu.json`, each with its source; a real run's metrics.jsonl
replaces them (`calibrate`). A CPU has no catalog peak: its time is the executed work over a
matmul rate measured in this process times an efficiency measured once (`cpu_efficiency`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.errors import UsageError
from tunesmith.models.arch import ModelFacts, count_params
from tunesmith.plan.memory import Setup, trainable_params


def flops_per_token(f: ModelFacts, s: Setup) -> dict[str, float]:
    """FLOPs one trained token costs: `model` (what MFU counts) and `executed` (plus what
    gradient checkpointing recomputes)."""
    counts = count_params(f)
    # The embedding is a lookup, not a matmul; a tied head still multiplies by it.
    active = counts["active"] - (counts["embedding"] if counts["lm_head"] else 0)
    trainable = trainable_params(f, s) if s.method != "full" else 0
    # QK^T and attention x V, 2 FLOPs per multiply-add, over half the row on average (causal).
    attention_forward = 2 * 2 * f.layers * f.heads * f.head_dim * s.seq_len / 2
    forward = 2 * active + 2 * trainable + attention_forward
    if s.method == "full":
        model = 3 * forward  # forward, input gradients, weight gradients
    else:
        model = 2 * forward + 2 * trainable  # frozen weights: input gradients only
    # Checkpointing reruns each decoder layer's forward, but not the head, and torch stops a
    # layer's recomputation once every saved tensor is back: a down projection without an
    # adapter after it, whose output nothing saves, is not rerun (checked with torch's FLOP
    # counter).
    head = f.vocab * f.hidden
    adapted_down = s.method != "full" and "down_proj" in s.target_modules and f.experts == 1
    down = 0 if adapted_down else f.active_experts * f.hidden * f.intermediate
    recompute = forward - 2 * head - 2 * f.layers * down if s.gradient_checkpointing else 0
    return {"model": model, "executed": model + recompute}


@dataclass(frozen=True)
class Mfu:
    value: float
    source: str
    calibrated: bool = False


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    # Read once: a plan asks for these assumptions for every GPU and count it tries.
    return json.loads((resources.files("tunesmith.catalog") / "mfu.json").read_text(encoding="utf-8"))


def assumptions() -> dict[str, Any]:
    """The multi-GPU efficiency, spot preemption and checkpoint-write assumptions, with sources."""
    table = _table()
    return {key: table[key] for key in ("multi_gpu_efficiency", "spot", "checkpoint_write_gb_per_s")}


@dataclass(frozen=True)
class CpuEfficiency:
    """Share of a CPU's measured matmul rate (in the run's dtype) that training turns into
    executed FLOPs."""

    value: float
    measured: str  # one line for the plan
    source: str  # how it was measured, in full


def cpu_efficiency(dtype: str = "fp32") -> CpuEfficiency:
    entry = _table()["cpu_efficiency" if dtype == "fp32" else "cpu_efficiency_bf16"]
    return CpuEfficiency(entry["value"], entry["measured"], entry["source"])


def default_mfu(method: str, gpu: str) -> Mfu:
    rows = _table()["defaults"]
    for row in rows:
        if row["method"] == method and row["gpu"].lower() == gpu.lower():
            return Mfu(row["mfu"], row["source"])
    for row in rows:
        if row["method"] == method and row["gpu"] == "*":
            return Mfu(row["mfu"], row["source"])
    raise UsageError(f"no MFU default for method {method!r} in catalog/mfu.json")


def hours(tokens: float, f: ModelFacts, s: Setup, gpu: Gpu, count: int, mfu: Mfu) -> float:
    """Wall-clock hours to train `tokens` tokens (all epochs) on `count` GPUs."""
    efficiency = 1.0 if count == 1 else assumptions()["multi_gpu_efficiency"]["value"]
    work = flops_per_token(f, s)
    # MFU credits model FLOPs only; recomputation costs time at the same achieved rate.
    rate = gpu.bf16_tflops * 1e12 * mfu.value * work["model"] / work["executed"]
    return tokens * work["model"] / (rate * count * efficiency) / 3600
