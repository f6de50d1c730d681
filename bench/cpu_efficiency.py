"""The CPU efficiency factor in catalog/mfu.json: what share of the planner's measured fp32
matmul rate `tunesmith train` turns into training work on this CPU.

For each model it runs `tunesmith train` for a few steps (its own subprocess, torch's default
threads) and measures the planner's matmul rate (`plan.device.cpu_matmul_flops`) before and
after. Training work is the planner's own count, `flops_per_token(...)["executed"]` (forward,
backward and any recomputation) for the run's setup on CPU. Time per step comes from
metrics.jsonl (`tokens / tokens_per_s` is the loop's step time, without evaluation).

    factor = tokens per second x executed FLOPs per token / matmul FLOP/s

Step 1 (warm-up) is left out. Other processes on the machine only ever slow a step or a
matmul down, so `best` (the fastest step against the fastest matmul) is the least disturbed
figure and `median` shows the spread.

    python bench/cpu_efficiency.py [--models demo,tiny,smollm2-360m-random] [--steps 8] [--dtype fp32|bf16]

Models: `demo` is SmolLM2-135M-Instruct with the demo config and sample (the alias the demo
trains); `tiny` the 2-layer, 64-wide test model; `smollm2-360m-random` SmolLM2-360M's shape
with random weights and the demo's tokenizer (no download). JSON on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
DEMO = ROOT / "src" / "tunesmith" / "demo"


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def matmul_rate(dtype: str) -> float:
    """A fresh process each time: the planner measures once per process."""
    code = f"from tunesmith.plan.device import cpu_matmul_flops; print(cpu_matmul_flops({dtype!r}))"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def train(args: list[str], steps: int, run: Path) -> list[dict]:
    command = [sys.executable, "-m", "tunesmith.cli", "train", *args, "--out", str(run), "--no-progress",
               "--set", f"train.max_steps={steps}", "--set", "train.log_every=1", "--set", "train.eval_every=1000",
               "--set", "train.save_every=1000"]
    log(" ".join(command[2:]))
    subprocess.run(command, check=True, stdout=sys.stderr)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def step_rates(records: list[dict]) -> list[float]:
    """Tokens per second of each step after the first, from the loop's own step time."""
    seconds = [r["tokens"] / r["tokens_per_s"] for r in records]  # cumulative training seconds
    return [(b["tokens"] - a["tokens"]) / (tb - ta) for a, b, ta, tb in zip(records, records[1:], seconds, seconds[1:])]


def executed_flops(run: Path) -> float:
    from tunesmith.config import load_config
    from tunesmith.models.facts import model_facts
    from tunesmith.plan.inputs import setup_from_config
    from tunesmith.plan.throughput import flops_per_token

    cfg = load_config(run / "config.yaml")
    facts, _ = model_facts(cfg.model.source)
    return flops_per_token(facts, setup_from_config(cfg, device="cpu"))["executed"]


def model_args(name: str, work: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import order_rows, write_rows, write_tiny_model

    if name == "demo":
        return [str(DEMO / "demo.yaml"), "--data", str(DEMO / "sample" / "train.jsonl"),
                "--val", str(DEMO / "sample" / "val.jsonl")]
    if name == "tiny":
        model = write_tiny_model(work / "tiny")
        data = write_rows(work / "orders.jsonl", order_rows(200))
        return ["--model", str(model), "--data", str(data), "--set", "train.max_seq_len=256"]
    if name == "smollm2-360m-random":
        return ["--model", str(random_360m(work / "smollm2-360m")), *model_args("demo", work)[1:],
                "--set", "train.max_seq_len=256"]
    raise SystemExit(f"unknown model {name}")


def random_360m(folder: Path) -> Path:
    import torch
    import transformers

    from tunesmith.models.source import alias_gguf_path, convert_gguf
    from tunesmith.catalog.model_configs import catalog_entry

    demo = Path(convert_gguf(alias_gguf_path("smollm2-135m-instruct")))  # same tokenizer as 360M
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**catalog_entry("smollm2-360m")["config"])
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    for name in os.listdir(demo):
        if name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(demo / name, folder / name)
    return folder


def measure(name: str, steps: int, work: Path, dtype: str) -> dict:
    args = [*model_args(name, work), "--set", f"model.dtype={DTYPES[dtype]}"]
    before = matmul_rate(dtype)
    records = train(args, steps, work / f"run-{name}")
    after = matmul_rate(dtype)
    rates = step_rates(records)
    flops = executed_flops(work / f"run-{name}")
    best_matmul = max(before, after)
    return {
        "model": name,
        "dtype": dtype,
        "executed_flops_per_token": flops,
        "matmul_gflops": [round(before / 1e9, 1), round(after / 1e9, 1)],
        "step_tokens_per_s": [round(r, 1) for r in rates],
        "factor_best": round(max(rates) * flops / best_matmul, 3),
        "factor_median": round(statistics.median(rates) * flops / statistics.mean([before, after]), 3),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,tiny,smollm2-360m-random")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="the model's dtype; bf16 rates against the bf16 matmul (cpu_efficiency_bf16)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(measure(name, args.steps, Path(tmp), args.dtype))
            log(json.dumps(results[-1]))  # each as it comes: a long run keeps what it measured
    print(json.dumps({"cpu": _cpu(), "threads": _threads(), "results": results}, indent=2))


def _cpu() -> str:
    from tunesmith.plan.device import cpu_name

    return cpu_name()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
