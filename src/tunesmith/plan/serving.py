"""Sizing an inference GPU for the tuned model: weights plus the KV cache for a context length
and a number of concurrent sequences, on each catalog GPU, with the price per hour of a machine
with one of it and, at a tokens/s you state (or measured), per million tokens.

The memory rule is vLLM's: the server takes `gpu_memory_utilization` (0.9 by default) of the
GPU; the weights and a runtime reserve come first, the KV cache gets the rest. A LoRA adapter
served on the base adds well under 1% of the weights and is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.prices import Price, Range, cheapest
from tunesmith.models.arch import ModelFacts, count_params

GB = 1e9
# vLLM's default share of GPU memory it takes (`--gpu-memory-utilization 0.9`).
GPU_MEMORY_UTILIZATION = 0.9
# CUDA context, CUDA graphs and the activations of one forward pass: ~1-2 GB in vLLM's
# start-up log for 7-8B models (assumed, not measured by tunesmith).
RUNTIME_RESERVE_GB = 1.5
BYTES = {"bfloat16": 2, "float16": 2, "fp8": 1}


@dataclass(frozen=True)
class ServingNeed:
    weights_gb: float
    kv_gb_per_sequence: float  # the KV cache of one sequence of `context` tokens
    context: int
    concurrency: int

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_gb_per_sequence * self.concurrency + RUNTIME_RESERVE_GB


def kv_bytes_per_token(facts: ModelFacts, kv_bytes: int = 2) -> int:
    """Keys and values of every layer for one token: 2 x layers x kv_heads x head_dim values
    (the cost of a token within every window)."""
    return 2 * facts.layers * facts.kv_heads * facts.head_dim * kv_bytes


def kv_bytes_per_sequence(facts: ModelFacts, context: int, kv_bytes: int = 2) -> int:
    """The KV cache of one sequence of `context` tokens. vLLM's hybrid KV-cache manager keeps
    only the last `sliding_window` tokens of a local-attention layer (Gemma 2/3), so past the
    window those layers stop growing: Gemma 3's 5 local layers in 6 hold 512 tokens each."""
    per_layer_token = 2 * facts.kv_heads * facts.head_dim * kv_bytes
    full = facts.layers - facts.sliding_layers
    local = facts.sliding_layers * min(context, facts.sliding_window or context)
    return per_layer_token * (full * context + local)


def serving_need(facts: ModelFacts, *, context: int, concurrency: int, dtype: str = "bfloat16") -> ServingNeed:
    params = count_params(facts)["total"]
    size = BYTES[dtype]
    return ServingNeed(params * size / GB, kv_bytes_per_sequence(facts, context, size) / GB, context, concurrency)


def serving_options(need: ServingNeed, gpus: list[Gpu], prices: list[Price],
                    tokens_per_s: float | None) -> list[dict[str, Any]]:
    """One row per catalog GPU: whether one GPU holds the weights and `concurrency` sequences,
    how many sequences of `context` tokens fit at most, its on-demand price range on a 1-GPU machine, and the
    cost per million generated tokens at `tokens_per_s` (None when no rate is given)."""
    rows = []
    for gpu in gpus:
        usable = gpu.memory_gb * GPU_MEMORY_UTILIZATION
        room = usable - need.weights_gb - RUNTIME_RESERVE_GB
        max_sequences = max(0, int(room // need.kv_gb_per_sequence)) if need.kv_gb_per_sequence else 0
        price = cheapest_on_demand(gpu.name, prices)
        per_mtok = None
        if price is not None and tokens_per_s:
            per_mtok = tuple(round(p / (tokens_per_s * 3600) * 1e6, 4) for p in price)
        rows.append({"gpu": gpu.name, "memory_gb": gpu.memory_gb, "usable_gb": round(usable, 2),
                     "needed_gb": round(need.total_gb, 2), "fits": need.total_gb <= usable,
                     "max_sequences": max_sequences, "usd_per_hour": price, "usd_per_million_tokens": per_mtok})
    return sorted(rows, key=lambda r: (not r["fits"], r["usd_per_hour"][0] if r["usd_per_hour"] else float("inf")))


def cheapest_on_demand(gpu: str, prices: list[Price]) -> Range | None:
    """The cheapest on-demand range for this GPU on a 1-GPU machine (the server runs on one GPU, and
    a GPU of a larger machine costs another per-GPU rate), compared as `cheapest` compares them."""
    offer = cheapest(prices, gpu, 1)["on_demand"]
    return offer.on_demand if offer else None


def serving_plan(facts: ModelFacts, gpus: list[Gpu], prices: list[Price], *, context: int, concurrency: int,
                 tokens_per_s: float | None, dtype: str = "bfloat16") -> dict[str, Any]:
    need = serving_need(facts, context=context, concurrency=concurrency, dtype=dtype)
    options = serving_options(need, gpus, prices, tokens_per_s)
    return {
        "need": {**asdict(need), "total_gb": round(need.total_gb, 2), "dtype": dtype,
                 "runtime_reserve_gb": RUNTIME_RESERVE_GB, "gpu_memory_utilization": GPU_MEMORY_UTILIZATION},
        "tokens_per_s": tokens_per_s,
        "options": options,
        "recommendation": next((o for o in options if o["fits"] and o["usd_per_hour"]), None),
    }
