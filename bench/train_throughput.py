"""Training throughput: `tunesmith train` against TRL's SFTTrainer (defaults, and packing=True).

One invocation runs three runners, each in its own subprocess (own memory, own threads):

  tunesmith    tunesmith's training loop (packed rows, loss on response tokens only)
  trl_default  SFTTrainer with TRL's defaults (one example per row, padded per batch)
  trl_packed   SFTTrainer with packing=True (TRL's default strategy, "bfd", padding-free)

All three get the same model, the same rows (one messages-format JSONL file written here), the
same LoRA adapter (r=16, alpha=32, same dropout, q/k/v/o/gate/up/down), fp32 on CPU (--dtype
bfloat16: tunesmith's base in bf16, TRL's default bf16 autocast), lr 2e-4,
seed 42, loss on the assistant reply only, the same batch shape (8 rows of at most 512 tokens,
one micro-batch per optimizer step), and the same number of optimizer steps: 1 warm-up step
(not timed) and then --steps timed steps.

Tokens are counted the same way for all three: non-padding input tokens (prompt + response) of
the batches the timed steps actually trained on. Time is wall-clock over the timed steps only
(model loading, tokenisation and packing happen before step 1 in every runner and are excluded).

    python bench/train_throughput.py [--steps 6] [--rows N] [--dropout 0.05] [--dtype float32|bfloat16] [--out FILE]

The JSON result goes to stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunesmith.config import ALL_LINEAR
from tunesmith.data.formats import RowError, normalise_row

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "src" / "tunesmith" / "demo" / "sample" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
RUNNERS = ("tunesmith", "trl_default", "trl_packed")
TARGETS = ALL_LINEAR
LORA_R, LORA_ALPHA = 16, 32
LR, SEED = 2e-4, 42
MICRO_BATCH, MAX_LEN = 8, 512


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data

def write_data(source: Path, rows: int | None, work: Path) -> tuple[Path, int, int]:
    """First `rows` lines of the source -> one messages-format file shared by all runners."""
    lines = [l for l in source.read_text(encoding="utf-8").splitlines() if l.strip()]
    taken = lines[:rows] if rows else lines
    kept = []
    for line in taken:
        try:  # tunesmith's own reader: the rows every runner sees are the rows tunesmith trains on
            kept.append({"messages": normalise_row(json.loads(line))[0]["messages"]})
        except (RowError, json.JSONDecodeError):
            continue
    path = work / "train.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in kept), encoding="utf-8")
    return path, len(taken), len(kept)


# ------------------------------------------------------------------ runners (child processes)

def limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def summarise(per_step: list[dict], steps: int) -> dict:
    """per_step: one dict per optimizer step (1-based, in order) with seconds/tokens/slots/trained."""
    if len(per_step) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} optimizer steps, saw {len(per_step)}")
    timed = per_step[1:]  # step 1 is the warm-up
    tokens = sum(s["tokens"] for s in timed)
    slots = sum(s["slots"] for s in timed)
    seconds = sum(s["seconds"] for s in timed)
    # The median step rate resists the CPU-steal spikes of a shared VM (cpu_steal_share shows
    # them); the mean over all timed steps is tokens_per_s.
    rates = sorted(s["tokens"] / s["seconds"] for s in timed)
    mid = len(rates) // 2
    median = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
    return {
        "tokens_per_s": round(tokens / seconds, 2),
        "median_step_tokens_per_s": round(median, 2),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "padding_share": round(1 - tokens / slots, 4) if slots else 0.0,
        "token_slots": slots,
        "trained_tokens": sum(s["trained"] for s in timed),
        "warmup_step_seconds": round(per_step[0]["seconds"], 3),
        "step_seconds": [round(s["seconds"], 3) for s in timed],
        "step_tokens": [s["tokens"] for s in timed],
    }


def run_tunesmith(args: argparse.Namespace) -> dict:
    import torch

    import tunesmith.train.fit as fit
    from tunesmith.train.setup import train
    from tunesmith.config import build_config

    limit_threads(args.threads)
    work = Path(args.work)
    # A separate val file keeps every row of the shared file in training (no held-out split).
    # tunesmith evaluates it once after the last step; that is outside train_seconds.
    val = work / "val.jsonl"
    val.write_text("".join(Path(args.data).read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    cfg = build_config({}, [
        f"model.source={args.model}",
        f"data.train={args.data}",
        f"data.val={val}",
        f"output.dir={work / 'tunesmith_run'}",
        f"train.max_steps={args.steps + 1}",
        f"train.micro_batch={MICRO_BATCH}",
        "train.grad_accum=1",
        f"train.max_seq_len={MAX_LEN}",
        "train.packing=true",
        f"train.lr={LR}",
        f"train.seed={SEED}",
        "train.log_every=1",
        "train.eval_every=1000000",
        "train.save_every=1000000",
        f"method.r={LORA_R}",
        f"method.alpha={LORA_ALPHA}",
        f"method.dropout={args.dropout}",
        f"model.dtype={args.dtype}",
    ])

    # Observe (not change) each step: real tokens, padded slots and trained tokens of its batches.
    shapes: list[dict] = []
    original_run_step = fit.run_step

    def observed_run_step(parts, rows, micro_batch, *rest):
        step = [rows[i : i + micro_batch] for i in range(0, len(rows), micro_batch)]  # as run_step cuts it
        tokens = sum(len(r) for mb in step for r in mb)
        slots = sum(len(mb) * max(len(r) for r in mb) for mb in step)  # collate pads to the longest row
        trained = sum(sum(r.trained[1:]) for mb in step for r in mb)  # targets: labels[:, 1:] != -100
        shapes.append({"tokens": tokens, "slots": slots, "trained": trained})
        return original_run_step(parts, rows, micro_batch, *rest)

    fit.run_step = observed_run_step
    result = train(cfg, progress=False)
    fit.run_step = original_run_step

    # Seconds per step from tunesmith's own metrics.jsonl: train_seconds = tokens / tokens_per_s
    # (cumulative), so each step's time is the delta. (The time of collate + forward/backward +
    # optimizer + scheduler step; evaluation and logging are outside it.)
    records = [json.loads(l) for l in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    records = [r for r in records if "tokens" in r]
    cumulative = [r["tokens"] / r["tokens_per_s"] for r in records]
    per_step = []
    for i, r in enumerate(records):
        seconds = cumulative[i] - (cumulative[i - 1] if i else 0.0)
        tokens = r["tokens"] - (records[i - 1]["tokens"] if i else 0)
        if tokens != shapes[i]["tokens"]:
            raise RuntimeError(f"step {i + 1}: metrics.jsonl says {tokens} tokens, the batches had {shapes[i]['tokens']}")
        per_step.append({**shapes[i], "seconds": seconds})
    out = summarise(per_step, args.steps)
    out["settings"] = {
        "packing": True,
        "loss": "assistant reply + end-of-turn token only (tunesmith default, data.train_on_inputs=false)",
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "scheduler": cfg.train.scheduler,
        "torch_threads": torch.get_num_threads(),
        "timing": "sum of per-step train time from metrics.jsonl (tokens / tokens_per_s deltas)",
    }
    return out


def run_trl(args: argparse.Namespace, packed: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.source import resolve_source

    limit_threads(args.threads)
    path = resolve_source(args.model)
    rows = [json.loads(l) for l in Path(args.data).read_text(encoding="utf-8").splitlines() if l.strip()]
    # TRL's conversational prompt-completion form of the same messages. TRL 1.16 trains on every token of a
    # "messages" row unless assistant_only_loss=True, and that option needs {% generation %} markers that
    # SmolLM2's template lacks and TRL cannot patch in ("patching is not supported for this template"). For
    # prompt-completion rows TRL's default (completion_only_loss=None -> True) trains on the reply only.
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # autocast when bf16
    lora = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=args.dropout, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    config = SFTConfig(
        output_dir=str(Path(args.work) / ("trl_packed" if packed else "trl_default")),
        max_steps=args.steps + 1,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=1,
        max_length=MAX_LEN,
        packing=packed,
        learning_rate=LR,
        seed=SEED,
        # TRL/transformers default bf16=True (autocast, also on CPU); --dtype float32 (the default
        # here) runs all three in fp32, --dtype bfloat16 gives TRL its own default.
        bf16=args.dtype == "bfloat16",
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        dataloader_num_workers=0,
    )

    class Counting(SFTTrainer):
        """Counts what each micro-batch really holds before it is trained on."""

        batches: list[dict] = []

        def training_step(self, model, inputs, *rest, **kwargs):
            ids = inputs["input_ids"]
            if "attention_mask" in inputs:
                tokens = int(inputs["attention_mask"].sum())
            else:  # padding-free: one flattened row, no padding when pad_to_multiple_of is None
                assert self.args.pad_to_multiple_of is None
                tokens = int(ids.numel())
            trained = int((inputs["labels"][:, 1:] != -100).sum())
            Counting.batches.append({"tokens": tokens, "slots": int(ids.numel()), "trained": trained,
                                     "shape": list(ids.shape), "step": self.state.global_step + 1})
            return super().training_step(model, inputs, *rest, **kwargs)

    class Timer(TrainerCallback):
        """Wall-clock from the end of one optimizer step to the end of the next: includes fetching
        and collating the batch, forward/backward, clipping, optimizer and scheduler, callbacks."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.inside: list[float] = []
            self._begin = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.ends.append(now)
            self.inside.append(now - self._begin)

    timer = Timer()
    trainer = Counting(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=[timer]
    )
    if not trainer.completion_only_loss:
        raise RuntimeError("expected TRL to default to completion-only loss for prompt-completion data")
    loss_note = (
        "conversational prompt-completion rows; completion_only_loss=None (TRL default) -> True: loss on the "
        "reply, its end-of-turn token and the template's newline after it; assistant_only_loss=False (default)"
    )
    trainer.train()

    per_step = []
    for i, end in enumerate(timer.ends):
        batches = [b for b in Counting.batches if b["step"] == i + 1]
        previous = timer.ends[i - 1] if i else timer.start
        per_step.append({
            "tokens": sum(b["tokens"] for b in batches),
            "slots": sum(b["slots"] for b in batches),
            "trained": sum(b["trained"] for b in batches),
            "seconds": end - previous,
        })
    out = summarise(per_step, args.steps)
    out["seconds_inside_steps"] = round(sum(timer.inside[1:]), 3)
    out["batch_shapes"] = [b["shape"] for b in Counting.batches[1:]]
    out["settings"] = {
        "packing": packed,
        "packing_strategy": config.packing_strategy if packed else None,
        "padding_free": trainer.padding_free,
        "loss": loss_note,
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": config.bf16,
        "scheduler": str(config.lr_scheduler_type),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch_threads": torch.get_num_threads(),
        "timing": "wall-clock from on_step_end of step 1 to on_step_end of the last step (TrainerCallback)",
    }
    return out


def child(args: argparse.Namespace) -> None:
    if args.runner == "tunesmith":
        out = run_tunesmith(args)
    else:
        out = run_trl(args, packed=args.runner == "trl_packed")
    Path(args.result).write_text(json.dumps(out), encoding="utf-8")


# ------------------------------------------------------------------ orchestration

def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def launch(name: str, args: argparse.Namespace, data: Path, work: Path) -> dict:
    result = work / f"{name}.json"
    run_dir = work / name
    run_dir.mkdir(exist_ok=True)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--runner", name, "--data-file", str(data),
        "--work", str(run_dir), "--result", str(result), "--steps", str(args.steps), "--dropout", str(args.dropout),
        "--threads", str(args.threads), "--model", args.model, "--dtype", args.dtype,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(work / "hf_datasets"),
        "PYTHONWARNINGS": "ignore",
    }
    log(f"{name}: starting")
    t0, cpu0 = time.perf_counter(), cpu_times()
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"runner {name} failed with exit code {proc.returncode}")
    cpu1 = cpu_times()
    out = json.loads(result.read_text(encoding="utf-8"))
    out["process_seconds"] = round(time.perf_counter() - t0, 1)
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        # CPU time the hypervisor gave to others while this runner ran: a noise gauge for shared machines.
        out["cpu_steal_share"] = round((cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 4)
    log(f"{name}: {out['tokens_per_s']:.1f} tokens/s ({out['tokens']} tokens in {out['seconds']:.1f} s)")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after 1 untimed warm-up step)")
    p.add_argument("--rows", type=int, default=None, help="use the first N rows of the data file (default: all)")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout for all runners")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="instruction-format JSONL (default: the demo sample)")
    p.add_argument("--model", default=MODEL, help="model alias or path (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per runner (default: CPU count)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32: all runners in fp32; bfloat16: tunesmith's base in bf16 (needs a CPU with native "
                        "bf16), TRL with its default bf16 autocast")
    p.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ", ".join(RUNNERS))
    # internal: one runner in this process
    p.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    if args.runner:
        args.data = args.data_file
        child(args)
        return

    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    unknown = set(names) - set(RUNNERS)
    if unknown:
        p.error(f"unknown runner(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        work = Path(tmp)
        data, taken, kept = write_data(args.data, args.rows, work)
        log(f"data: {kept} trainable rows of the first {taken} in {args.data}")
        results = {name: launch(name, args, data, work) for name in names}

    report: dict = {
        "model": args.model,
        "data": {"file": str(args.data), "rows_read": taken, "rows_trained_from": kept},
        "steps": args.steps,
        "warmup_steps": 1,
        "batch": {"rows_per_step": MICRO_BATCH, "max_seq_len": MAX_LEN, "grad_accum": 1},
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": args.dropout, "targets": TARGETS},
        "lr": LR,
        "seed": SEED,
        "dtype": args.dtype,
        "tokens_definition": "non-padding input tokens (prompt + response) of the batches trained in the timed steps",
        **results,
    }
    base = results.get("tunesmith")
    for name in ("trl_default", "trl_packed"):
        if base and name in results:
            report[f"ratio_vs_{name}"] = round(base["tokens_per_s"] / results[name]["tokens_per_s"], 3)
            report[f"median_ratio_vs_{name}"] = round(
                base["median_step_tokens_per_s"] / results[name]["median_step_tokens_per_s"], 3
            )
    report["torch_threads"] = args.threads
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
