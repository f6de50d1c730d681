"""One prepared check for a GPU machine: the planner, tunesmith's loop and TRL on the same card.

    python bench/gpu_check.py [--time-budget-s 480] [--out FILE.json] [--parts PART ...]
    python bench/gpu_check.py --tiny --device cpu        # every part on a 2-layer Llama, ~1 min

Parts, in this order (the most valuable per device-second first), each in a subprocess of its
own, so that its memory figures (and the CUDA context it counts) are its own and a crash costs
only that part:

  memory_check       bench/gpu_memory_check.py --quick: plan.memory.estimate against real steps
  tunesmith          tunesmith's loop (setup.prepare_model, TokenLoss, fit.run_step) on a random-
                     weight Llama-3.1-8B, LoRA r8 and QLoRA r8 (bitsandbytes NF4), 2 x 2048 tokens,
                     gradient checkpointing on: tokens/s, MFU, peak memory against the planner
  trl                TRL's SFTTrainer with its defaults on the same model, adapter and row shape:
                     tokens/s, and tunesmith's LoRA tokens/s over it
  tunesmith_offload  as tunesmith, with train.offload_activations on: what the host copies cost

Time: the parts get 40, 30, 20 and 10% of --time-budget-s; each must end once its share and
those of the parts before it are spent, so time one part leaves over goes to the next (with
--parts, the shares of the parts named are scaled up to the whole budget). A part starts no case that would end past its deadline, cuts its timed steps short
when the next would (2 at least), and is killed 15 s past it.

Output: the whole result goes to --out (default: $OUT/gpu_check.json when $OUT is set), rewritten
after every case, so a run stopped early keeps what it measured; the memory check writes its own
file beside it (gpu_memory_check.json). One line per part goes to stderr, and the summary to
stdout at the end. Needs only the repo: `src` and `tests` are put on sys.path here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for folder in (ROOT / "src", ROOT / "tests", BENCH):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

MARK = "@gpu_check "  # a child's result lines; anything else it prints is passed on to stderr
PARTS = ("memory_check", "tunesmith", "trl", "tunesmith_offload")
# Each part's share of the budget; a part must end once its share and those before it are spent.
SHARE = {"memory_check": 0.40, "tunesmith": 0.30, "trl": 0.20, "tunesmith_offload": 0.10}
KILL_GRACE_S = 15.0
DEFAULT_BUDGET_S = {"cuda": 480.0, "tiny": 240.0}
LORA_R, LORA_DROPOUT, LR = 8, 0.05, 2e-4  # RunConfig's dropout; alpha 2 x r, as tunesmith's default
MFU_TARGET = 0.45  # issue 13: LoRA on an 8B model at 2 x 2048


def log(*parts: object) -> None:
    print("[gpu_check]", *parts, file=sys.stderr, flush=True)


# ================================================================ the parent: parts, budget, output

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide Llama at 2 x 128 tokens: checks every "
                                                        "part in about a minute (fp32 on CPU; QLoRA needs CUDA)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help=f"the whole run (default {DEFAULT_BUDGET_S['cuda']:.0f}; --tiny {DEFAULT_BUDGET_S['tiny']:.0f})")
    ap.add_argument("--out", help="JSON file (default: $OUT/gpu_check.json when $OUT is set)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these (in this order)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5; --tiny 3)")
    ap.add_argument("--child", choices=PARTS[1:], help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # time.time() by which the child ends
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    t0 = time.time()
    budget = args.time_budget_s or DEFAULT_BUDGET_S["tiny" if args.tiny else "cuda"]
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "gpu_check.json"
                                                if os.environ.get("OUT") else None)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    memory_out = (out_path.parent if out_path else work) / "gpu_memory_check.json"
    result: dict[str, Any] = {"bench": "gpu_check", "device": args.device, "tiny": args.tiny, "budget_s": budget,
                              "parts": {}, "summary": {}}

    def write() -> None:
        result["summary"] = summarise(result["parts"])
        result["elapsed_s"] = round(time.time() - t0, 1)
        if out_path:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = out_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
            tmp.replace(out_path)  # a kill mid-write leaves the previous complete file

    chosen = [name for name in PARTS if name in args.parts]
    log(f"parts {' '.join(chosen)} on {args.device}{' (tiny)' if args.tiny else ''}, budget {budget:.0f} s, "
        f"out {out_path}")
    for i, name in enumerate(chosen):
        deadline = t0 + budget * sum(SHARE[n] for n in chosen[: i + 1]) / sum(SHARE[n] for n in chosen)
        part: dict[str, Any] = {"deadline_s": round(deadline - t0, 1)}
        result["parts"][name] = part
        if deadline - time.time() < 10:
            part["skipped"] = "time budget: nothing left for this part"
        elif name == "memory_check":
            run_memory_check(args, deadline, memory_out, part, write)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--device", args.device,
                   "--deadline", str(deadline)] + (["--tiny"] if args.tiny else []) + \
                  (["--steps", str(args.steps)] if args.steps else [])
            run_child(cmd, deadline, part, write, on_line=lambda obj, p=part: merge(p, obj))
        write()
        log(part_line(name, part, result["parts"]))
    write()
    print(json.dumps({"summary": result["summary"], "elapsed_s": result["elapsed_s"], "out": str(out_path)},
                     indent=1))
    return 0


def run_child(cmd: list[str], deadline: float, part: dict[str, Any], write: Callable[[], None],
              on_line: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run one part's subprocess, take its result lines as they come (rewriting the output
    after each) and kill it when it outlives its deadline. Without `on_line` the child's
    stdout is dropped (the memory check's summary: its file holds it all); its stderr, the
    progress lines, goes straight through."""
    start = time.time()
    # Nothing here may reach a hub (the GPU machine has no network: a try would only wait).
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=ROOT)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(max(1.0, deadline + KILL_GRACE_S - time.time()), kill)
    timer.start()
    try:
        for line in proc.stdout:
            if on_line is None:
                continue
            if line.startswith(MARK):
                on_line(json.loads(line[len(MARK):]))
                write()
            else:  # what a library printed (TRL's logged metrics): still worth seeing
                sys.stderr.write(line)
        proc.wait()
    finally:
        timer.cancel()
    part["seconds"] = round(time.time() - start, 1)
    part["exit_code"] = proc.returncode
    if killed.is_set():
        part["killed"] = f"still running {KILL_GRACE_S:.0f} s past its deadline"


def merge(part: dict[str, Any], obj: dict[str, Any]) -> None:
    if "case" in obj:
        part.setdefault("cases", []).append(obj["case"])
    else:
        part.update(obj)


def run_memory_check(args: argparse.Namespace, deadline: float, memory_out: Path, part: dict[str, Any],
                     write: Callable[[], None]) -> None:
    cmd = [sys.executable, str(BENCH / "gpu_memory_check.py"), "--device", args.device,
           "--tiny" if args.tiny else "--quick", "--time-budget-s", f"{deadline - time.time():.0f}",
           "--out", str(memory_out)]
    run_child(cmd, deadline, part, write)
    part["file"] = memory_out.name
    try:
        full = json.loads(memory_out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        part["error"] = f"no result file: {e}"[:300]
        return
    part["summary"] = full.get("summary")
    part["environment"] = full.get("environment")
    part["not_started"] = len(full.get("not_started", []))
    part["cases"] = [case_line(c) for c in full.get("cases", [])]


def case_line(c: dict[str, Any]) -> dict[str, Any]:
    """A memory-check case in a line: what ran and its predicted / measured figures."""
    keys = ("model", "method", "seq_len", "micro_batch", "gradient_checkpointing", "offload_activations")
    row = {k: c.get(k) for k in keys}
    for key, check in c.get("checks", {}).items():
        row[key] = [check["predicted_gb"], check["measured_gb"], check["error_pct"]]
    for key in ("oom", "skipped", "error"):
        if c.get(key):
            row[key] = c[key]
    return row


def summarise(parts: dict[str, Any]) -> dict[str, Any]:
    """The figures to quote: each in one place, whatever parts ran."""
    s: dict[str, Any] = {}
    mem = (parts.get("memory_check") or {}).get("summary") or {}
    for key in ("allocated", "peak"):
        if key in mem:
            s[f"memory_check_{key}"] = {k: mem[key][k] for k in ("cases", "median_abs_error_pct", "max_abs_error_pct")}
    if "calibration" in mem:
        s["memory_check_suggested"] = mem["calibration"]["suggested"]
    for name in ("tunesmith", "tunesmith_offload", "trl"):
        for c in (parts.get(name) or {}).get("cases", []):
            if "tokens_per_s" in c:
                s[f"{name}_{c['method']}"] = {k: c.get(k) for k in ("tokens_per_s", "mfu_model", "mfu_executed",
                                                                    "peak_gb", "predicted_peak_gb")}
    lora, trl = s.get("tunesmith_lora"), s.get("trl_lora")
    if lora and trl and trl["tokens_per_s"]:
        s["tunesmith_over_trl"] = round(lora["tokens_per_s"] / trl["tokens_per_s"], 3)
    if lora and lora.get("mfu_model") is not None:
        s["lora_mfu_target"] = {"target": MFU_TARGET, "model_flops_met": lora["mfu_model"] >= MFU_TARGET,
                                "executed_flops_met": lora["mfu_executed"] >= MFU_TARGET}
    return s


def part_line(name: str, part: dict[str, Any], parts: dict[str, Any]) -> str:
    """One line on stderr per part: the figures, or why there are none."""
    took = f" [{part['seconds']:.0f} s]" if "seconds" in part else ""
    why = part.get("skipped") or part.get("error") or part.get("killed")
    if name == "memory_check":
        summary = part.get("summary") or {}
        bits = [f"{summary.get('cases_measured', 0)} cases measured, {part.get('not_started', 0)} not started"]
        for key in ("allocated", "peak"):
            if key in summary:
                bits.append(f"{key} |error| median {summary[key]['median_abs_error_pct']}% "
                            f"max {summary[key]['max_abs_error_pct']}%")
        if summary.get("oom"):
            bits.append(f"{len(summary['oom'])} OOM")
        return f"{name}: " + ", ".join(bits) + (f" ({why})" if why else "") + took
    bits = []
    for c in part.get("cases", []):
        label = c["method"] + ("+offload" if c.get("offload_activations") else "")
        if "tokens_per_s" not in c:
            bits.append(f"{label} {c.get('skipped') or c.get('error', '?')}"[:160])
            continue
        mfu = "" if c.get("mfu_model") is None else \
            f", MFU {100 * c['mfu_model']:.1f}% (executed {100 * c['mfu_executed']:.1f}%)"
        peak = "" if c.get("peak_gb") is None else \
            f", peak {c['peak_gb']} GB" + (f" (planner {c['predicted_peak_gb']} GB)" if c.get("predicted_peak_gb") else "")
        bits.append(f"{label} {c['tokens_per_s']:,.0f} tokens/s{mfu}{peak}")
    if name == "trl":
        ratio = summarise(parts).get("tunesmith_over_trl")
        if ratio:
            bits.append(f"tunesmith / TRL = {ratio}x")
    if part.get("skipped_all"):
        bits.append(part["skipped_all"])
    return f"{name}: " + ("; ".join(bits) or "nothing measured") + (f" ({why})" if why else "") + took


# ================================================================ the children: one part each

class Shape:
    """The model and step every throughput case runs: Llama-3.1-8B at 2 x 2048 in bf16, or the
    tiny Llama at 2 x 128 (fp32 on CPU)."""

    def __init__(self, tiny: bool, device: str, steps: int | None) -> None:
        from gpu_memory_check import TINY, model_config

        self.alias = TINY if tiny else "llama-3.1-8b"
        self.config = model_config(self.alias)
        self.seq_len, self.micro_batch = (128, 2) if tiny else (2048, 2)
        self.dtype = "float32" if device == "cpu" else "bfloat16"
        self.warmup = 1 if tiny else 2  # the first step allocates the optimizer state
        self.steps = steps or (3 if tiny else 5)
        # A case's build and warm-up before any step is timed: a guess for the first case only.
        self.first_case_s = 20.0 if tiny else 60.0

    def rows(self, count: int, seed: int = 0) -> list[list[int]]:
        """Random token ids, the same for every trainer; 0 left out (the TRL tokenizer's pad)."""
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, self.config["vocab_size"], (count, self.seq_len), generator=g).tolist()


def emit(obj: dict[str, Any]) -> None:
    print(MARK + json.dumps(obj), flush=True)


def child(args: argparse.Namespace) -> int:
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit({"skipped": "--device cuda: torch sees no CUDA device"})
        return 0
    shape = Shape(args.tiny, args.device, args.steps)
    env = environment(device, trl=args.child == "trl")
    emit({"environment": env, "shape": {"model": shape.alias, "seq_len": shape.seq_len,
                                        "micro_batch": shape.micro_batch, "dtype": shape.dtype,
                                        "lora_r": LORA_R, "lora_dropout": LORA_DROPOUT,
                                        "gradient_checkpointing": True, "warmup_steps": shape.warmup,
                                        "timed_steps": shape.steps}})
    if args.child == "trl":
        if env.get("trl_error"):
            emit({"skipped_all": f"trl not importable: {env['trl_error']}"})
            return 0
        cases = [("lora", False, lambda: trl_case(shape, device, args.deadline, env))]
    else:
        offload = args.child == "tunesmith_offload"
        cases = [(m, offload, lambda m=m: tunesmith_case(shape, m, offload, device, args.deadline, env))
                 for m in ("lora", "qlora")]
    took: list[float] = []
    for method, offload, run in cases:
        guess = max(took) * 1.5 if took else shape.first_case_s  # QLoRA's build quantises: slower
        if time.time() + guess > args.deadline:
            emit({"case": {"method": method, "offload_activations": offload,
                           "skipped": f"time budget: {args.deadline - time.time():.0f} s left, a case takes "
                                      f"~{guess:.0f} s"}})
            continue
        start = time.time()
        emit({"case": run()})
        took.append(time.time() - start)
        free(device)
    return 0


def environment(device: Any, trl: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "bitsandbytes") + (("trl", "datasets") if trl else ()):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:  # ImportError, or bitsandbytes failing to find its CUDA library
            env[name] = None
            env[f"{name}_error"] = repr(e)[:300]
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["device_total_gb"] = round(torch.cuda.mem_get_info()[1] / 1e9, 2)
        gpu = catalog_gpu(env["device_name"])
        env["catalog_gpu"] = gpu.name if gpu else None
        env["catalog_bf16_tflops"] = gpu.bf16_tflops if gpu else None
    else:
        env["threads"] = torch.get_num_threads()
    env["matmul_tflops"] = matmul_tflops(device)
    return env


def catalog_gpu(device_name: str) -> Any:
    """The catalog entry whose name (before any '-variant') the device's name holds: 'NVIDIA
    H200' is H200; of several (H100-SXM, H100-PCIe) the first in the catalog."""
    from tunesmith.catalog.gpu import load_gpus

    name = device_name.lower()
    exact = [g for g in load_gpus() if g.name.lower() in name]
    loose = [g for g in load_gpus() if g.name.lower().split("-")[0] in name.split()]
    return (exact or loose or [None])[0]


def matmul_tflops(device: Any) -> float:
    """The best dense matmul rate of a few runs on random data (bf16 8192^3 on CUDA, fp32
    512^3 on CPU): the ceiling to read MFU against besides the datasheet's."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    b = torch.randn_like(a)
    times = []
    for i in range(13 if cuda else 6):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:  # warm-up: cuBLAS picks its kernel, the clocks come up
            times.append(time.perf_counter() - start)
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return round(2 * n**3 / min(times) / 1e12, 3)


def free(device: Any) -> None:
    from gpu_memory_check import free_memory

    free_memory(device)


# ---------------------------------------------------------------- tunesmith's loop

def run_config(shape: Shape, method: str, offload: bool) -> Any:
    from tunesmith.config import build_config

    return build_config({
        "model": {"dtype": shape.dtype},
        "method": {"name": method, "r": LORA_R, "dropout": LORA_DROPOUT},
        "train": {"micro_batch": shape.micro_batch, "max_seq_len": shape.seq_len, "lr": LR,
                  "gradient_checkpointing": True, "offload_activations": offload},
    })


def planner(shape: Shape, method: str, offload: bool, device: Any) -> tuple[Any, Any]:
    """The planner's view of the same step: (facts, setup)."""
    from tunesmith.models.arch import ModelFacts
    from tunesmith.plan.memory import Setup

    setup = Setup(method=method, seq_len=shape.seq_len, micro_batch=shape.micro_batch, gradient_checkpointing=True,
                  lora_r=LORA_R, lora_dropout=LORA_DROPOUT, device=device.type, offload_activations=offload,
                  dtype="fp32" if shape.dtype == "float32" else "bf16",
                  trained_fraction=(shape.seq_len - 1) / shape.seq_len)  # all positions but each row's last
    return ModelFacts.from_config(shape.config), setup


def tunesmith_case(shape: Shape, method: str, offload: bool, device: Any, deadline: float,
                   env: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"trainer": "tunesmith", "method": method, "offload_activations": offload}
    if method == "qlora":
        if device.type != "cuda":
            return {**out, "skipped": "QLoRA needs a CUDA device (bitsandbytes 4-bit layers)"}
        if env.get("bitsandbytes") is None:
            return {**out, "skipped": f"bitsandbytes not importable: {env.get('bitsandbytes_error')}"}
    try:
        return {**out, **train_tunesmith(shape, method, offload, device, deadline, env)}
    except torch.cuda.OutOfMemoryError as e:
        return {**out, "error": f"out of memory: {e}"[:500]}
    except Exception as e:  # record and go on: the next case may still run
        import traceback

        return {**out, "error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-2000:]}


def train_tunesmith(shape: Shape, method: str, offload: bool, device: Any, deadline: float,
                    env: dict[str, Any]) -> dict[str, Any]:
    """Build, prepare and step the model the way tests/measure.py does (`tunesmith train`'s own
    prepare_model, accelerator, optimizer, TokenLoss and run_step), timing each step."""
    import torch
    import transformers

    from gpu_memory_check import nf4_quantize
    from measure import resident_bytes, trainable_parts
    from tunesmith.train.fit import run_step
    from tunesmith.train.pack import Row

    cfg = run_config(shape, method, offload)
    started = time.time()
    # What an earlier case left on the device (should be 0): it would count in this case's peak.
    left_over = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    torch.manual_seed(0)
    dtype = torch.float32 if shape.dtype == "float32" else torch.bfloat16
    config = transformers.AutoConfig.for_model(**shape.config)
    # Built on the device itself: random init of 8B weights on a CPU would take minutes, and
    # QLoRA's NF4 layers quantise real (random) weights, which the meta device does not hold.
    parts = trainable_parts(config, cfg, device, dtype, nf4_quantize if method == "qlora" else None)
    ids = shape.rows((shape.warmup + shape.steps) * shape.micro_batch)
    rows = [Row(input_ids=r, trained=[True] * len(r), position_ids=list(range(len(r)))) for r in ids]

    def step(i: int) -> tuple[float, int]:
        batch = rows[i * shape.micro_batch: (i + 1) * shape.micro_batch]
        loss, tokens, _ = run_step(parts, batch, shape.micro_batch, 0, cfg.train.max_grad_norm, device)
        return loss, tokens

    losses = [step(i)[0] for i in range(shape.warmup)]
    resident = resident_bytes(parts)
    setup_s = time.time() - started
    reset_peak(device)
    seconds, tokens = timed_steps(lambda i: step(shape.warmup + i), shape.steps, deadline, device, losses)
    result = throughput(shape, method, offload, device, env, seconds, tokens, losses)
    result["setup_s"] = round(setup_s, 1)
    result.update(memory_figures(shape, method, offload, device, resident))
    if device.type == "cuda":
        result["left_over_by_earlier_case_gb"] = round(left_over / 1e9, 3)
    return result


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def timed_steps(step: Callable[[int], tuple[float, int]], steps: int, deadline: float, device: Any,
                losses: list[float]) -> tuple[list[float], list[int]]:
    """Up to `steps` steps, each timed alone (run_step reads the loss back, so the device is done
    when it returns); stops early, after 2 at least, when the next would end past the deadline."""
    import torch

    seconds, tokens = [], []
    for i in range(steps):
        if len(seconds) >= 2 and time.time() + 1.3 * max(seconds) > deadline:
            break
        start = time.perf_counter()
        loss, n = step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        tokens.append(n)
        losses.append(loss)
    return seconds, tokens


def throughput(shape: Shape, method: str, offload: bool, device: Any, env: dict[str, Any], seconds: list[float],
               tokens: list[int], losses: list[float]) -> dict[str, Any]:
    """tokens/s over the timed steps, and the FLOP rates the planner's counting gives for them."""
    from tunesmith.plan.throughput import default_mfu, flops_per_token

    facts, setup = planner(shape, method, offload, device)
    work = flops_per_token(facts, setup)
    tps = sum(tokens) / sum(seconds)
    out: dict[str, Any] = {
        "steps_timed": len(seconds), "step_s": [round(s, 4) for s in seconds],
        "tokens_per_step": tokens[0] if tokens else None, "tokens_per_s": round(tps, 1),
        "losses": [round(x, 4) for x in losses],
        "flops_per_token": {k: round(v) for k, v in work.items()},
        "achieved_tflops": {k: round(tps * v / 1e12, 2) for k, v in work.items()},
    }
    peak = env.get("catalog_bf16_tflops")
    if peak:
        out["mfu_model"] = round(tps * work["model"] / (peak * 1e12), 4)
        out["mfu_executed"] = round(tps * work["executed"] / (peak * 1e12), 4)
        mfu = default_mfu(method, env["catalog_gpu"])
        # What `tunesmith plan` assumes this step runs at (plan.throughput.hours, one GPU).
        out["planner_tokens_per_s"] = round(peak * 1e12 * mfu.value / work["executed"], 1)
        out["planner_mfu"] = mfu.value
    else:
        out["mfu_model"] = out["mfu_executed"] = None
        out["mfu_why"] = "no catalog peak for this device (a CPU, or a GPU catalog/gpus.json lacks)"
    if env.get("matmul_tflops"):
        out["of_measured_matmul"] = round(tps * work["executed"] / (env["matmul_tflops"] * 1e12), 4)
    return out


def memory_figures(shape: Shape, method: str, offload: bool, device: Any, resident: int) -> dict[str, Any]:
    """The timed steps' peak against plan.memory.estimate for the same setup (CUDA only)."""
    import torch

    from gpu_memory_check import compare, non_torch_bytes
    from tunesmith.plan.memory import estimate

    facts, setup = planner(shape, method, offload, device)
    memory = estimate(facts, setup)
    comp = memory.components
    out: dict[str, Any] = {"predicted_peak_gb": round(memory.peak / 1e9, 3),
                           "predicted_components_gb": {k: round(v / 1e9, 3) for k, v in comp.items() if v}}
    if device.type != "cuda":
        out["peak_gb"] = None
        out["memory_why"] = "CPU: no allocator counters here (bench/gpu_memory_check.py --device cpu profiles them)"
        return out
    torch.cuda.synchronize()
    context = non_torch_bytes()
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    out.update(peak_gb=round((reserved + context) / 1e9, 3), max_allocated_gb=round(allocated / 1e9, 3),
               max_reserved_gb=round(reserved / 1e9, 3), context_gb=round(context / 1e9, 3))
    out["checks"] = {"allocated": compare(memory.allocated, allocated),
                     "peak": compare(memory.peak, reserved + context),
                     "resident": compare(comp["weights"] + comp["adapters"] + comp["optimizer"], resident)}
    return out


# ---------------------------------------------------------------- TRL

def trl_case(shape: Shape, device: Any, deadline: float, env: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"trainer": "trl", "method": "lora", "offload_activations": False}
    try:
        return {**out, **train_trl(shape, device, deadline, env)}
    except torch.cuda.OutOfMemoryError as e:
        return {**out, "error": f"out of memory: {e}"[:500]}
    except Exception as e:
        import traceback

        return {**out, "error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-2000:]}


def train_trl(shape: Shape, device: Any, deadline: float, env: dict[str, Any]) -> dict[str, Any]:
    """SFTTrainer with its defaults (bf16 autocast, gradient checkpointing, its fused LM head and
    per-step entropy/accuracy metrics, linear schedule) on the same random model, the same LoRA
    adapter and rows of the same shape, already tokenised (TRL then trains on every token, as
    the tunesmith cases do). Only what the comparison needs is set: batch, length, steps,
    lr, no saving or reporting, and the CPU when asked."""
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from tiny import build_tokenizer
    from trl import SFTConfig, SFTTrainer

    from tunesmith.config import ALL_LINEAR

    started = time.time()
    torch.manual_seed(0)
    dtype = torch.float32 if shape.dtype == "float32" else torch.bfloat16
    config = transformers.AutoConfig.for_model(**shape.config)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    total = shape.warmup + shape.steps
    dataset = Dataset.from_dict({"input_ids": shape.rows(total * shape.micro_batch)})
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=LORA_DROPOUT, target_modules=list(ALL_LINEAR),
                      task_type="CAUSAL_LM")
    work = tempfile.mkdtemp(prefix="gpu_check_trl_")
    args = SFTConfig(output_dir=work, max_steps=total, per_device_train_batch_size=shape.micro_batch,
                     gradient_accumulation_steps=1, max_length=shape.seq_len, learning_rate=LR, seed=0,
                     report_to="none", save_strategy="no", eval_strategy="no", use_cpu=device.type == "cpu")
    timer = StepTimer(shape.warmup, deadline, device)

    class Counting(SFTTrainer):
        """Counts the non-padding tokens each micro-batch holds before it trains on it."""

        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
            mask = inputs.get("attention_mask")
            timer.tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kwargs)

    # A tokenizer for its pad token only: the rows come tokenised (ids of the model's vocabulary).
    trainer = Counting(model=model, args=args, train_dataset=dataset, processing_class=build_tokenizer(),
                       peft_config=lora, callbacks=[timer.callback()])
    trainer.train()
    seconds = timer.seconds
    tokens = timer.tokens[shape.warmup: shape.warmup + len(seconds)]
    result = throughput(shape, "lora", False, device, env, seconds, tokens, [])
    # TRL logs the loss every logging_steps (10 by default), so a short run has only its mean.
    result["losses"] = [round(x["loss"], 4) for x in trainer.state.log_history if "loss" in x]
    result["train_loss"] = next((round(x["train_loss"], 4) for x in trainer.state.log_history
                                 if "train_loss" in x), None)
    result["setup_s"] = round(timer.first_timed_at - started, 1) if timer.first_timed_at else None
    result["settings"] = {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
                          "gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs,
                          "packing": args.packing, "padding_free": trainer.padding_free,
                          "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
                          "lr_scheduler": str(args.lr_scheduler_type), "optimizer": str(args.optim)}
    if device.type == "cuda":
        from gpu_memory_check import non_torch_bytes

        context = non_torch_bytes()
        reserved = torch.cuda.max_memory_reserved()
        result.update(peak_gb=round((reserved + context) / 1e9, 3),
                      max_allocated_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3),
                      max_reserved_gb=round(reserved / 1e9, 3), context_gb=round(context / 1e9, 3))
    else:
        result["peak_gb"] = None
    return result


class StepTimer:
    """Times each optimizer step after the warm-up (device synchronised at its end), resets the
    peak memory counters before the first timed one, and stops training, after 2 timed steps at
    least, when the next would end past the deadline."""

    def __init__(self, warmup: int, deadline: float, device: Any) -> None:
        self.warmup, self.deadline, self.device = warmup, deadline, device
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.first_timed_at: float | None = None
        self._start = 0.0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step >= timer.warmup:
                    if timer.first_timed_at is None:
                        timer.first_timed_at = time.time()
                        reset_peak(timer.device)
                    timer._start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step <= timer.warmup:  # global_step counts this step already
                    return
                if timer.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                timer.seconds.append(time.perf_counter() - timer._start)
                if len(timer.seconds) >= 2 and time.time() + 1.3 * max(timer.seconds) > timer.deadline:
                    control.should_training_stop = True

        return Callback()


if __name__ == "__main__":
    sys.exit(main())
