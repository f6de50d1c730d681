"""The guide's static memory table against what the planner computes for the same models.

The guide ("Fine-tuning on cloud GPUs") lists a minimum GPU memory for LoRA and for full
fine-tuning of five models, without saying at what sequence length, batch or optimizer. The
planner computes the peak for tunesmith's own loop at the smallest reasonable setup
(micro-batch 1, gradient checkpointing on, AdamW) and at a typical one, so the gap is visible.

    python bench/plan_vs_guide.py [--seq-len 2048]

Prints JSON: per model and method, the guide's figure, the planner's peak at both setups
(GB, one GPU), and the share of the peak each main component takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tunesmith.models.facts import model_facts  # noqa: E402
from tunesmith.plan.memory import GB, Setup, estimate  # noqa: E402

# The guide's table: (alias, LoRA GB, full GB).
GUIDE = [
    ("llama-3.1-8b", 16, 32),
    ("mistral-7b-v0.3", 16, 28),
    ("qwen2.5-14b", 24, 56),
    ("llama-3.1-70b", 48, 280),
    ("mixtral-8x22b", 80, 560),
]


def peak(alias: str, method: str, seq_len: int, batch: int, checkpointing: bool, optimizer: str = "adamw") -> dict:
    facts, _ = model_facts(alias)
    memory = estimate(facts, Setup(method=method, seq_len=seq_len, micro_batch=batch,
                                   gradient_checkpointing=checkpointing, optimizer=optimizer))
    top = sorted(memory.components.items(), key=lambda kv: -kv[1])[:3]
    return {"peak_gb": round(memory.peak / GB, 1), "largest": {k: round(v / GB, 1) for k, v in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args()
    rows = []
    for alias, lora_gb, full_gb in GUIDE:
        for method, guide_gb in (("lora", lora_gb), ("qlora", None), ("full", full_gb)):
            rows.append({
                "model": alias, "method": method, "guide_gb": guide_gb,
                "minimal": peak(alias, method, args.seq_len, 1, True),
                "minimal_8bit_adam": peak(alias, method, args.seq_len, 1, True, "adamw_8bit") if method == "full" else None,
                "typical": peak(alias, method, args.seq_len, 4, False),
            })
    print(json.dumps({"seq_len": args.seq_len, "minimal": "micro-batch 1, gradient checkpointing, AdamW",
                      "typical": "micro-batch 4, no checkpointing, AdamW", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
