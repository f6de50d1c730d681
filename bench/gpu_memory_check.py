"""The memory model (`tunesmith.plan.memory`) against real training steps, on a GPU or a CPU.

Each case builds a catalog model's architecture with random weights, makes it trainable with
the training loop's own `prepare_model` (`tests/measure.py`: `measure_training_step`), runs
two steps of micro_batch x seq_len tokens and measures the second. The prediction is
`plan.memory.estimate` for the same case.

On CUDA it compares
  allocated  resident + step peak (torch.cuda.max_memory_allocated)  vs  Memory.allocated
  peak       max_memory_reserved + the CUDA context                  vs  Memory.peak
where the context is what the process holds outside PyTorch's allocator
(mem_get_info's total - free - memory_reserved), read after the first CUDA init and again
after every case. The summary says what CUDA_CONTEXT_BYTES and ALLOCATOR_OVERHEAD in
memory.py should be. On CPU (the profiler's allocation events) it compares allocated only.

    python bench/gpu_memory_check.py [--device cuda|cpu] [--quick | --tiny] [--models ALIAS ...]
                                     [--time-budget-s S] [--out FILE.json]

--tiny runs two cases on a 2-layer, 64-wide Llama (`tiny-llama`, Llama-3.1-8B's config shrunk)
in seconds: it checks the harness, not the planner's figures (bench/gpu_check.py --tiny uses it).

The whole result goes to --out (default: $OUT/gpu_memory_check.json when $OUT is set) after
every case, so a run stopped early still leaves what it measured; the summary goes to
stdout (everything, without --out); one progress line per case goes to stderr.
Needs only the repo: `src` and `tests` (for the measuring harness) are put on sys.path below.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from measure import measure_training_step  # noqa: E402

from tunesmith.catalog.model_configs import catalog_entry  # noqa: E402
from tunesmith.config import build_config  # noqa: E402
from tunesmith.models.arch import ModelFacts  # noqa: E402
from tunesmith.plan.memory import (  # noqa: E402
    ALLOCATOR_OVERHEAD, CUDA_CONTEXT_BYTES, Setup, activation_bytes, estimate, saved_logits_bytes,
)

GiB = 2**30
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
DEFAULT_CUDA_BUDGET_S = 360.0  # of a 15-minute device lease, start-up included
DEFAULT_CPU_QUICK_BUDGET_S = 210.0
LORA_DROPOUT = 0.05  # RunConfig's default, used for every case


def log(*parts: object) -> None:
    print("[gpu_memory_check]", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the grid

TINY = "tiny-llama"


def tiny_llama_config() -> dict[str, Any]:
    """Llama-3.1-8B's config with 2 layers, width 64 and a 512-token vocabulary: the same
    architecture (GQA, SwiGLU, llama3 RoPE scaling) at a size a CPU trains in milliseconds."""
    config = dict(catalog_entry("llama-3.1-8b")["config"])
    config.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    return config


def model_config(alias: str) -> dict[str, Any]:
    return tiny_llama_config() if alias == TINY else catalog_entry(alias)["config"]


def case(model: str, method: str, seq: int, batch: int, gc_on: bool, dtype: str = "bfloat16",
         offload: bool = False) -> dict[str, Any]:
    return {"model": model, "method": method, "dtype": "float32" if method == "full" else dtype,
            "seq_len": seq, "micro_batch": batch, "gradient_checkpointing": gc_on, "offload_activations": offload}


ALL_SHAPES = [(s, b, g) for s in (512, 2048) for b in (1, 4) for g in (False, True)]
KEY_SHAPES = [(512, 1, False), (2048, 4, False), (2048, 4, True), (512, 4, True)]


def cuda_grid(quick: bool) -> list[dict[str, Any]]:
    """Most informative first: an 8B LoRA (the common case), then QLoRA, full fine-tuning and
    other families (Qwen's biases and large vocabulary, Gemma 2's eager soft-capped attention)."""
    if quick:
        plan = [("llama-3.1-8b", "lora", KEY_SHAPES),
                ("smollm2-1.7b", "full", [(2048, 4, False), (2048, 4, True)]),
                ("llama-3.1-8b", "qlora", [(2048, 1, False), (2048, 4, True)])]
    else:
        plan = [("llama-3.1-8b", "lora", ALL_SHAPES),
                ("llama-3.1-8b", "qlora", [(2048, 1, False), (2048, 4, True), (512, 4, False)]),
                ("smollm2-1.7b", "full", KEY_SHAPES),
                ("gemma-2-2b", "lora", KEY_SHAPES),
                ("qwen2.5-7b", "lora", KEY_SHAPES),
                ("mistral-7b-v0.3", "lora", [(2048, 4, False), (2048, 4, True)]),
                ("qwen2.5-1.5b", "full", [(2048, 4, False), (2048, 4, True)])]
    # The lean path's switch: checkpointed layer inputs in pinned host memory.
    offloaded = [case("llama-3.1-8b", method, 2048, 4, True, offload=True) for method in ("lora", "qlora")]
    return [case(m, method, *shape) for m, method, shapes in plan for shape in shapes] + offloaded


def cpu_grid(quick: bool) -> list[dict[str, Any]]:
    variants = [("lora", "bfloat16"), ("lora", "float32"), ("full", "float32")]
    if quick:  # 2 CPU cores: 15 s to 2 min a case (the profiler; bf16 matmuls are slow on CPU)
        return [case("smollm2-135m", "lora", 256, 2, False, "float32"),
                case("smollm2-135m", "full", 256, 1, True),
                case("qwen2.5-0.5b", "lora", 256, 1, False, "float32"),
                case("smollm2-135m", "lora", 256, 1, True, "bfloat16"),
                case("smollm2-135m", "full", 256, 2, False),
                case("smollm2-135m", "lora", 256, 2, False, "bfloat16"),
                case("qwen2.5-0.5b", "lora", 256, 2, True, "float32")]
    return [case(model, m, 256, b, g, d) for model in ("smollm2-135m", "qwen2.5-0.5b")
            for m, d in variants for b in (1, 2) for g in (False, True)]


def tiny_grid() -> list[dict[str, Any]]:
    return [case(TINY, "lora", 128, 2, g, "float32") for g in (False, True)]


def restrict(grid: list[dict[str, Any]], models: list[str] | None, device: str) -> list[dict[str, Any]]:
    """Only the named aliases; one not in the grid gets the grid's LoRA shapes."""
    if not models:
        return grid
    kept = [c for c in grid if c["model"] in models]
    for alias in models:
        if not any(c["model"] == alias for c in grid):
            catalog_entry(alias)  # fails early on an unknown alias
            if device == "cuda":
                kept += [case(alias, "lora", *shape) for shape in KEY_SHAPES]
            else:
                kept += [case(alias, "lora", 256, 2, g, "float32") for g in (False, True)]
    return kept


# ---------------------------------------------------------------- QLoRA on random weights

def nf4_quantize(model: Any) -> Any:
    """What `from_pretrained(quantization_config=BitsAndBytesConfig(nf4, double quant, compute
    bf16))` leaves, without a checkpoint: every nn.Linear but the head becomes a bitsandbytes
    Linear4bit holding the random bf16 weight as a Params4bit, which quantises when moved to
    the device (bitsandbytes quantises in `Params4bit.to` while `bnb_quantized` is False).
    transformers' `replace_with_bnb_linear` builds its layers on the meta device, so it would
    drop the weights; this keeps them."""
    import bitsandbytes as bnb

    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and m is not head]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child_name)
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                quant_storage=torch.uint8, device="meta")
        kwargs = dict(requires_grad=False, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8)
        try:
            weight = bnb.nn.Params4bit(old.weight.data, module=new, **kwargs)
        except TypeError:  # bitsandbytes before Params4bit(module=...)
            weight = bnb.nn.Params4bit(old.weight.data, **kwargs)
        new.weight = weight.to(device)  # quantises (already on the device, but not yet quantised)
        new.quant_state = new.weight.quant_state
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        setattr(parent, child_name, new)
        del old
    model.is_loaded_in_4bit = True  # peft's prepare_model_for_kbit_training and LoRA dispatch read this
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # loading quantises tensor by tensor: no bf16 model stays cached
    return model


# ---------------------------------------------------------------- one case

def run_config(c: dict[str, Any]) -> Any:
    return build_config({
        "model": {"dtype": c["dtype"]},
        "method": {"name": c["method"], "dropout": LORA_DROPOUT},
        "train": {"micro_batch": c["micro_batch"], "max_seq_len": c["seq_len"],
                  "gradient_checkpointing": c["gradient_checkpointing"],
                  "offload_activations": c.get("offload_activations", False)},
    })


def predict(c: dict[str, Any], device: str) -> tuple[ModelFacts, Setup, Any]:
    facts = ModelFacts.from_config(model_config(c["model"]))
    seq = c["seq_len"]
    setup = Setup(method=c["method"], seq_len=seq, micro_batch=c["micro_batch"],
                  gradient_checkpointing=c["gradient_checkpointing"], lora_dropout=LORA_DROPOUT, device=device,
                  offload_activations=c.get("offload_activations", False),
                  dtype="fp32" if c["dtype"] == "float32" else "bf16",
                  trained_fraction=(seq - 1) / seq)  # every position but each row's last has a target
    return facts, setup, estimate(facts, setup)


def compare(predicted: float, measured: float) -> dict[str, float]:
    return {"predicted_gb": round(predicted / 1e9, 3), "measured_gb": round(measured / 1e9, 3),
            "ratio": round(predicted / measured, 4) if measured else None,
            "error_pct": round(100 * (predicted - measured) / measured, 2) + 0.0 if measured else None}


def non_torch_bytes() -> int:
    """What the process holds on the device outside PyTorch's caching allocator (the CUDA
    context, loaded kernels, library handles); assumes no other process uses the device."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def free_memory(device: torch.device) -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # lets the next case pick its own mixed precision
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_case(c: dict[str, Any], device: torch.device) -> dict[str, Any]:
    facts, setup, memory = predict(c, device.type)
    comp = memory.components
    resident_pred = comp["weights"] + comp["adapters"] + comp["optimizer"]
    out: dict[str, Any] = dict(c)
    out["predicted"] = {"resident": resident_pred, "allocated": memory.allocated, "peak": memory.peak,
                        "peak_phase": memory.peak_phase,
                        "components_gb": {k: round(v / 1e9, 3) for k, v in comp.items() if v}}
    if not c["gradient_checkpointing"]:
        out["predicted"]["saved"] = activation_bytes(facts, setup) + saved_logits_bytes(facts, setup)
    before_prepare = None
    if c["method"] == "qlora":
        if device.type != "cuda":
            return {**out, "skipped": "QLoRA needs a CUDA device"}
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # ImportError, or a broken CUDA setup inside bitsandbytes
            return {**out, "skipped": f"bitsandbytes not importable: {e!r}"[:300]}
        before_prepare = nf4_quantize
    start = time.perf_counter()
    try:
        measured = measure_training_step(model_config(c["model"]), run_config(c), device,
                                         before_prepare=before_prepare)
        context = non_torch_bytes() if device.type == "cuda" else None
    except OOM:
        out.update(oom=True, seconds=round(time.perf_counter() - start, 1))
        if device.type == "cuda":
            total = torch.cuda.mem_get_info()[1]
            out["device_total"] = total
            out["predicted_over_device"] = memory.peak > total  # the check: did the model see it coming?
        return out
    except Exception as e:  # record and go on: one broken case must not cost the whole run
        import traceback

        out.update(error=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc()[-2000:],
                   seconds=round(time.perf_counter() - start, 1))
        return out
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["oom"] = False
    m = dict(measured)
    m["allocated"] = measured["resident"] + measured["step_peak"]
    checks = {"allocated": compare(memory.allocated, m["allocated"]),
              "resident": compare(resident_pred, measured["resident"])}
    if "saved" in measured:
        checks["saved"] = compare(out["predicted"]["saved"], measured["saved"])
    if device.type == "cuda":
        m["context"] = context
        m["peak"] = measured["max_reserved"] + context
        m["reserved_over_allocated"] = measured["max_reserved"] / measured["max_allocated"]
        checks["peak"] = compare(memory.peak, m["peak"])
        total = torch.cuda.mem_get_info()[1]
        out["predicted_over_device"] = memory.peak > total
    out["measured"] = m
    out["checks"] = checks
    return out


# ---------------------------------------------------------------- summary

def error_stats(cases: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    rows = [(c, c["checks"][key]) for c in cases if key in c.get("checks", {})]
    if not rows:
        return None
    errors = [abs(r["error_pct"]) for _, r in rows]
    worst_case, worst = max(rows, key=lambda cr: abs(cr[1]["error_pct"]))
    return {
        "cases": len(rows),
        "median_abs_error_pct": round(statistics.median(errors), 2),
        "max_abs_error_pct": round(max(errors), 2),
        "within_10pct": round(sum(e <= 10 for e in errors) / len(errors), 3),
        "mean_ratio_predicted_over_measured": round(statistics.mean(r["ratio"] for _, r in rows), 4),
        "worst": {k: worst_case[k] for k in ("model", "method", "seq_len", "micro_batch", "gradient_checkpointing")}
                 | {"error_pct": worst["error_pct"]},
    }


def ceil_to(x: float, step: float) -> float:
    return round(math.ceil(x / step) * step, 6)


def summarise(cases: list[dict[str, Any]], device: str, context_at_init: int | None) -> dict[str, Any]:
    done = [c for c in cases if "checks" in c]
    summary: dict[str, Any] = {
        "cases_measured": len(done),
        "oom": [{k: c[k] for k in ("model", "method", "seq_len", "micro_batch", "gradient_checkpointing")}
                | {"predicted_peak_gb": round(c["predicted"]["peak"] / 1e9, 2),
                   "predicted_over_device": c.get("predicted_over_device")}
                for c in cases if c.get("oom")],
        "skipped_or_failed": [{k: c[k] for k in ("model", "method", "seq_len", "micro_batch", "gradient_checkpointing")}
                              | {"why": c.get("skipped") or c.get("error")}
                              for c in cases if c.get("skipped") or c.get("error")],
    }
    for key in ("allocated", "peak", "saved", "resident"):
        stats = error_stats(done, key)
        if stats:
            summary[key] = stats
    if device == "cuda" and done:
        contexts = [c["measured"]["context"] for c in done]
        slack = [c["measured"]["reserved_over_allocated"] - 1 for c in done]
        summary["calibration"] = {
            "context_at_init_gib": round(context_at_init / GiB, 3) if context_at_init is not None else None,
            "context_max_gib": round(max(contexts) / GiB, 3),
            "context_median_gib": round(statistics.median(contexts) / GiB, 3),
            "reserved_over_allocated_minus_1": {"median": round(statistics.median(slack), 4),
                                                "max": round(max(slack), 4)},
            "current": {"CUDA_CONTEXT_BYTES_gib": CUDA_CONTEXT_BYTES / GiB, "ALLOCATOR_OVERHEAD": ALLOCATOR_OVERHEAD},
            # The worst case seen, rounded up: the planner should not promise a fit that fails.
            "suggested": {"CUDA_CONTEXT_BYTES": f"{ceil_to(max(contexts) / GiB, 0.05)} * 2**30",
                          "ALLOCATOR_OVERHEAD": ceil_to(max(max(slack), 0.0), 0.01)},
        }
    return summary


# ---------------------------------------------------------------- main

def environment(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    env: dict[str, Any] = {"device": device.type, "torch": torch.__version__,
                           "transformers": transformers.__version__, "peft": peft.__version__,
                           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                           "CUDA_MODULE_LOADING": os.environ.get("CUDA_MODULE_LOADING")}
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:
        env["bitsandbytes"] = None
        env["bitsandbytes_error"] = repr(e)[:200]
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["device_total_bytes"] = torch.cuda.mem_get_info()[1]
    else:
        env["threads"] = torch.get_num_threads()
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="JSON file (default: $OUT/gpu_memory_check.json when $OUT is set)")
    ap.add_argument("--quick", action="store_true", help="a small grid")
    ap.add_argument("--tiny", action="store_true", help="two cases on a 2-layer Llama: checks the harness in seconds")
    ap.add_argument("--models", nargs="+", metavar="ALIAS", help="catalog aliases to keep (others get LoRA cases)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help=f"start no case that would end past this many seconds (default: {DEFAULT_CUDA_BUDGET_S:.0f} "
                         f"on CUDA, {DEFAULT_CPU_QUICK_BUDGET_S:.0f} for --quick on CPU, else none)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "gpu_memory_check.json"
                                                if os.environ.get("OUT") else None)
    budget = args.time_budget_s if args.time_budget_s is not None else (
        DEFAULT_CUDA_BUDGET_S if args.device == "cuda" else DEFAULT_CPU_QUICK_BUDGET_S if args.quick else math.inf)
    device = torch.device(args.device)
    context_at_init = None
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)
        torch.cuda.synchronize()
        context_at_init = non_torch_bytes()
    grid = tiny_grid() if args.tiny else restrict(cuda_grid(args.quick) if device.type == "cuda" else
                                                  cpu_grid(args.quick), args.models, device.type)
    result: dict[str, Any] = {"bench": "gpu_memory_check", "quick": args.quick, "tiny": args.tiny,
                              "environment": environment(device),
                              "context_at_init_bytes": context_at_init, "cases": [], "not_started": []}

    def write() -> None:
        result["summary"] = summarise(result["cases"], device.type, context_at_init)
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        if out_path:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=1), encoding="utf-8")

    log(f"{len(grid)} cases on {device.type}, budget {budget:.0f} s, out {out_path}")
    durations: dict[tuple[str, str], float] = {}
    for i, c in enumerate(grid):
        elapsed = time.perf_counter() - t0
        # The next case's cost: the slowest seen for its model and method, else the mean so far.
        guess = durations.get((c["model"], c["method"]),
                              statistics.mean(durations.values()) if durations else 0.0)
        if elapsed + 1.2 * guess + 5 > budget:
            result["not_started"] = [{k: g[k] for k in ("model", "method", "seq_len", "micro_batch",
                                                         "gradient_checkpointing")} for g in grid[i:]]
            log(f"time budget: {len(grid) - i} cases not started")
            break
        started = time.perf_counter()
        r = run_case(c, device)
        free_memory(device)
        took = time.perf_counter() - started
        durations[(c["model"], c["method"])] = max(took, durations.get((c["model"], c["method"]), 0.0))
        result["cases"].append(r)
        write()
        label = f"{c['model']} {c['method']}/{c['dtype']} s={c['seq_len']} b={c['micro_batch']} gc={int(c['gradient_checkpointing'])}"
        if "checks" in r:
            a = r["checks"]["allocated"]
            peak = r["checks"].get("peak")
            log(f"[{i + 1}/{len(grid)}] {label}: allocated {a['predicted_gb']} / {a['measured_gb']} GB "
                f"({a['error_pct']:+.1f}%)" + (f", peak {peak['predicted_gb']} / {peak['measured_gb']} GB "
                                                f"({peak['error_pct']:+.1f}%)" if peak else "") + f" [{took:.0f} s]")
        else:
            log(f"[{i + 1}/{len(grid)}] {label}: " + ("OOM" if r.get("oom") else r.get("skipped") or r.get("error", "?")))
    write()
    if out_path:
        print(json.dumps({"summary": result["summary"], "elapsed_s": result["elapsed_s"], "out": str(out_path)}, indent=1))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
