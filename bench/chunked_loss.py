"""The training loss's speed and memory: all trained positions' fp32 logits at once (autograd)
against train/loss.py's chunks with gradients computed in the forward pass.

The head of a real model's shape (default SmolLM2-135M: 576 -> 49,152, tied, so frozen
under LoRA and trained under full fine-tuning) on random hidden states of `--tokens`
positions, every one trained. Forward + backward of the loss alone, `--repeats` times each
way, alternating; medians. Peak allocated bytes above the inputs from the profiler.

    python bench/chunked_loss.py [--model smollm2-135m] [--tokens 4096] [--repeats 5] [--chunk-mib 16,64,256]

JSON on stdout (figures, no asserts).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-mib", default="16,64,256")
    args = parser.parse_args()
    import torch

    from measure import allocated_peak
    from tunesmith.catalog.model_configs import catalog_entry
    from tunesmith.train import loss as loss_module

    config = catalog_entry(args.model)["config"]
    vocab, width = config["vocab_size"], config["hidden_size"]
    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(args.tokens, width, requires_grad=True)
    targets = torch.randint(0, vocab, (args.tokens,))

    def run(way: str) -> None:
        if way == "whole":
            loss = loss_module.whole_head_loss(hidden, head, targets, None)
        else:
            loss_module.CHUNK_BYTES = int(way) * 2**20
            loss = loss_module.chunked_head_loss(hidden, head, targets, None)
        (loss / args.tokens).backward()
        hidden.grad = head.weight.grad = None

    ways = ["whole"] + args.chunk_mib.split(",")
    results = {}
    for trained in (False, True):  # LoRA (frozen head), full fine-tuning (trained head)
        head.weight.requires_grad_(trained)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for way in ways:
            run(way)  # warm-up
        for _ in range(args.repeats):
            for way in ways:
                started = time.perf_counter()
                run(way)
                times[way].append(time.perf_counter() - started)
        peaks = {way: allocated_peak(lambda: run(way), torch.device("cpu"))[1] for way in ways}
        results["full (head trained)" if trained else "lora (head frozen)"] = {
            way: {"seconds": round(statistics.median(times[way]), 4), "peak_mb": round(peaks[way] / 2**20, 1)}
            for way in ways}
    print(json.dumps({"model": args.model, "vocab": vocab, "hidden": width, "tokens": args.tokens,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
