"""Issue 13's published memory figures against the planner on the lean memory path.

Three jobs with gradient checkpointing, each with a published peak: Llama-3.1-8B LoRA and
QLoRA, r=8, 2 x 2,048 tokens (torchtune's README: 16.2 and 7.4 GiB, torch.compile on, LoRA
dropout 0, k_proj not adapted) and Llama-3.1-70B QLoRA, 1 x 2,048 (a single 48 GB GPU; Unsloth
reports 41 GB). For each: the planner's peak with tunesmith's defaults (dropout 0.05, every
linear adapted) and with dropout 0, without and with `train.offload_activations`, and the
allocator's figure alone (no CUDA context, no allocator slack: what torch's
`max_memory_allocated`, and so torchtune's log, counts).

The loss's logits term is the one thing taken as given: `--logits-chunk N` plans the loss at
N positions at a time (the chunked cross-entropy), `--logits-chunk 0` as the loss runs today
(every trained position at once).

    python bench/lean_memory.py [--logits-chunk 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tunesmith.models.facts import model_facts  # noqa: E402
from tunesmith.plan import memory  # noqa: E402
from tunesmith.plan.memory import GB, Setup, estimate  # noqa: E402

GIB = 2**30
# (alias, method, LoRA rank, micro-batch, published GB, where)
ROWS = [
    ("llama-3.1-8b", "lora", 8, 2, 16.2 * GIB / GB, "torchtune README, 1x RTX 4090: 16.2 GiB"),
    ("llama-3.1-8b", "qlora", 8, 2, 7.4 * GIB / GB, "torchtune README, 1x RTX 4090: 7.4 GiB"),
    ("llama-3.1-70b", "qlora", 16, 1, 48.0, "a single 48 GB GPU (Unsloth: 41 GB)"),
]


def chunked_logits(chunk: int):
    today = memory.logits_bytes

    def logits_bytes(f, s):
        return today(f, s) * min(1.0, chunk / (s.tokens * s.trained_fraction))

    return logits_bytes


def row(alias: str, method: str, r: int, batch: int, dropout: float, offload: bool) -> dict:
    facts, _ = model_facts(alias)
    m = estimate(facts, Setup(method=method, lora_r=r, micro_batch=batch, seq_len=2048, gradient_checkpointing=True,
                              lora_dropout=dropout, offload_activations=offload))
    return {"peak_gb": round(m.peak / GB, 2), "allocated_gb": round(m.allocated / GB, 2),
            "logits_gb": round(m.components["logits"] / GB, 3), "host_gb": round(m.cpu_bytes / GB, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits-chunk", type=int, default=256, help="positions per loss chunk; 0: unchunked")
    args = parser.parse_args()
    if args.logits_chunk:
        memory.logits_bytes = chunked_logits(args.logits_chunk)
    out = []
    for alias, method, r, batch, published, where in ROWS:
        entry = {"job": f"{alias} {method} r={r}, {batch} x 2048, checkpointing", "published_gb": round(published, 2),
                 "published": where}
        for dropout in (0.05, 0.0):
            for offload in (False, True):
                figures = row(alias, method, r, batch, dropout, offload)
                figures["peak_vs_published"] = round(figures["peak_gb"] / published - 1, 3)
                figures["allocated_vs_published"] = round(figures["allocated_gb"] / published - 1, 3)
                entry[f"dropout={dropout} offload={'on' if offload else 'off'}"] = figures
        out.append(entry)
    print(json.dumps({"logits_chunk": args.logits_chunk or None, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
