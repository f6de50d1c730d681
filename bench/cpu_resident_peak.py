"""What a CPU training process really holds (peak RSS) against what the planner predicts.

The planner's `Memory.allocated` counts the tensors torch's allocator hands out at the
step's peak. The kernel kills a process for its resident set, which is more: the
interpreter and libraries, the C allocator's freed-but-kept blocks (glibc raises its mmap
threshold after each large free, so later large tensors come from heaps it rarely gives
back), the eval pass, and the cleaned data and packed rows the loop keeps in Python lists.

Each point runs `tunesmith train` (the demo model, SmolLM2-135M-Instruct, LoRA r=16 on all
linear layers, fp32, packing on, `data.train_on_inputs=true` so every position is trained as
the pre-flight assumes) for a few steps plus the final eval pass, in its own subprocess, and
reads the child's peak RSS from `wait4` (`ru_maxrss`). A watchdog samples the child's VmRSS
and kills it above `--limit-gb`; a point whose prediction is already above the limit is
skipped. Two more subprocesses measure the baseline (imports; imports + the model loaded with
its adapters) and the Python-held data per token.

    python bench/cpu_resident_peak.py [--points 256x1,512x1,512x2,1024x1] [--steps 2] [--limit-gb 6]
                                      [--release-freed-memory]

JSON on stdout (figures and ratios, no asserts), logs on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DEMO = SRC / "tunesmith" / "demo"
MODEL = "smollm2-135m-instruct"
FACTS = "smollm2-135m"  # the catalog entry with the same architecture
RELEASE = [False]  # --release-freed-memory, for the children and the prediction
sys.path.insert(0, str(SRC))


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def _rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status", encoding="ascii"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_limited(command: list[str], limit_gb: float, **kwargs) -> dict:
    """Run `command`, killing it if its resident set passes `limit_gb`; its peak RSS from
    wait4 (the kernel's own high-water mark, not a sample)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    killed, done = threading.Event(), threading.Event()

    def watch() -> None:
        # Not child.poll(): it would reap the child before wait4 reads its rusage.
        while not done.is_set():
            if _rss_kb(child.pid) > limit_gb * 1e9 / 1024:
                killed.set()
                child.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    watcher.join()
    return {"rc": child.returncode, "killed_over_limit": killed.is_set(), "maxrss_bytes": usage.ru_maxrss * 1024,
            "seconds": round(time.perf_counter() - started, 1), "output_tail": output[-1500:]}


# ---------------------------------------------------------------- the process baseline

BASELINE = textwrap.dedent("""
    import json, resource, sys
    import torch
    def status():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    from tunesmith.train.setup import build_model
    from tunesmith.config import build_config
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.source import resolve_source
    import accelerate, peft, transformers
    imports = status()
    cfg = build_config({"model": {"source": sys.argv[1]}})
    path = resolve_source(cfg.model.source)
    tokenizer = load_tokenizer(path)
    model = build_model(cfg, path, torch.device("cpu"))
    loaded = status()
    tensors = sum(p.numel() * p.element_size() for p in model.parameters())
    tensors += sum(b.numel() * b.element_size() for b in model.buffers())
    print(json.dumps({"imports": imports, "loaded": loaded, "tensor_bytes": tensors}))
""")

# Python-held data: the cleaned examples (Encoded) and the packed rows of every epoch
# (plan_steps builds the whole schedule up front).
DATA = textwrap.dedent("""
    import gc, json, sys
    from pathlib import Path
    def rss():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["VmRSS"].split()[0]) * 1024
    from tunesmith.config import build_config
    from tunesmith.data.prepare import prepare_run_data
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.source import resolve_source
    from tunesmith.train.fit import plan_steps
    train, val, out, seq, epochs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cfg = build_config({"model": {"source": sys.argv[6]}, "data": {"train": train, "val": val, "train_on_inputs": True},
                        "clean": {"dedup": False}, "train": {"max_seq_len": seq, "epochs": epochs}})
    tokenizer = load_tokenizer(resolve_source(cfg.model.source))
    tokenizer("warm up the tokenizer")
    gc.collect()
    before = rss()
    data = prepare_run_data(cfg, tokenizer, out)
    gc.collect()
    examples = rss()
    steps = plan_steps(data.train, cfg, epochs)
    gc.collect()
    after = rss()
    tokens = data.report["tokens"]["per_epoch"]
    print(json.dumps({"tokens_per_epoch": tokens, "rows": len(data.train), "epochs": epochs,
                      "examples_bytes": examples - before, "packed_rows_bytes": after - examples}))
""")


def baseline(limit_gb: float) -> dict:
    result = run_limited([sys.executable, "-c", BASELINE, MODEL], limit_gb)
    if result["rc"] != 0:
        raise SystemExit(f"baseline failed: {result['output_tail']}")
    figures = json.loads(result["output_tail"].strip().splitlines()[-1])
    return {
        "imports_rss_gb": round(figures["imports"]["VmRSS"] / 1e9, 3),
        "loaded_rss_gb": round(figures["loaded"]["VmRSS"] / 1e9, 3),
        "loaded_hwm_gb": round(figures["loaded"]["VmHWM"] / 1e9, 3),
        "tensor_gb": round(figures["tensor_bytes"] / 1e9, 3),
        # Loaded weights are mmapped from safetensors and count only once touched, so RSS
        # after the load can be below the tensors' bytes: the imports are the baseline.
        "process_beyond_tensors_gb": round(max(figures["imports"]["VmRSS"],
                                               figures["loaded"]["VmRSS"] - figures["tensor_bytes"]) / 1e9, 3),
    }


def data_per_token(work: Path, copies: int, seq: int, epochs: float, limit_gb: float) -> dict:
    """The demo sample repeated `copies` times (dedup off), cleaned, split and packed."""
    rows = (DEMO / "sample" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    big = work / "big.jsonl"
    big.write_text("\n".join(rows * copies) + "\n", encoding="utf-8")
    result = run_limited([sys.executable, "-c", DATA, str(big), str(DEMO / "sample" / "val.jsonl"),
                          str(work / "data-run"), str(seq), str(epochs), MODEL], limit_gb)
    if result["rc"] != 0:
        raise SystemExit(f"data measurement failed: {result['output_tail']}")
    figures = json.loads(result["output_tail"].strip().splitlines()[-1])
    tokens = figures["tokens_per_epoch"]
    return {**figures, "examples_bytes_per_token": round(figures["examples_bytes"] / tokens, 1),
            "packed_bytes_per_token_per_epoch": round(figures["packed_rows_bytes"] / (tokens * epochs), 1)}


# ---------------------------------------------------------------- training points

def predict(seq: int, batch: int) -> dict:
    from tunesmith.models.facts import model_facts
    from tunesmith.plan.memory import GB, Setup, estimate

    facts, _ = model_facts(FACTS)
    memory = estimate(facts, Setup(seq_len=seq, micro_batch=batch, device="cpu", dtype="fp32",
                                   release_freed_memory=RELEASE[0]))
    return {"allocated_gb": round(memory.allocated / GB, 3), "peak_gb": round(memory.peak / GB, 3)}


def train_point(seq: int, batch: int, steps: int, work: Path, limit_gb: float) -> dict:
    predicted = predict(seq, batch)
    point = {"seq": seq, "micro_batch": batch, "predicted": predicted}
    # Before the resident model was calibrated the peak was allocated + 1 GB; either way
    # a point expected above the limit does not start.
    if max(predicted["peak_gb"], 1.4 * predicted["allocated_gb"] + 0.6) > limit_gb:
        return {**point, "skipped": f"predicted above --limit-gb {limit_gb}"}
    run = work / f"run-{seq}x{batch}"
    # A short validation file: the eval pass runs (its peak is what counts), without the
    # minutes a full pass takes on a busy 2-core machine.
    val = work / "val.jsonl"
    val.write_text("".join((DEMO / "sample" / "val.jsonl").read_text(encoding="utf-8").splitlines(True)[:12]),
                   encoding="utf-8")
    command = [sys.executable, "-m", "tunesmith.cli", "train", "--model", MODEL,
               "--data", str(DEMO / "sample" / "train.jsonl"), "--val", str(val),
               "--out", str(run), "--no-progress",
               "--set", f"train.max_seq_len={seq}", "--set", f"train.micro_batch={batch}",
               "--set", f"train.max_steps={steps}", "--set", f"train.eval_every={steps}",
               "--set", "train.save_every=1000", "--set", "data.train_on_inputs=true",
               "--set", f"train.release_freed_memory={str(RELEASE[0]).lower()}"]
    log(f"{seq} x {batch}:", " ".join(command[3:]))
    result = run_limited(command, limit_gb)
    measured = result["maxrss_bytes"] / 1e9
    point.update({"rc": result["rc"], "killed_over_limit": result["killed_over_limit"], "seconds": result["seconds"],
                  "measured_rss_gb": round(measured, 3),
                  "measured_over_predicted_peak": round(measured / predicted["peak_gb"], 3)})
    if result["rc"] != 0:
        point["output_tail"] = result["output_tail"]
    log(json.dumps({k: v for k, v in point.items() if k != "output_tail"}))
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="256x1,512x1,512x2,1024x1")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=6.0)
    parser.add_argument("--data-copies", type=int, default=16, help="repeats of the demo sample for the data figure")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="train with train.release_freed_memory=true (and predict with its slack)")
    args = parser.parse_args()
    RELEASE[0] = args.release_freed_memory
    import torch

    from tunesmith.plan.device import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log("load average at start", os.getloadavg())
        base = baseline(args.limit_gb)
        log("baseline", json.dumps(base))
        data = data_per_token(work, args.data_copies, 512, 1.0, args.limit_gb)
        log("data", json.dumps(data))
        points = []
        for spec in args.points.split(","):
            seq, batch = (int(x) for x in spec.split("x"))
            points.append(train_point(seq, batch, args.steps, work, args.limit_gb))
    measured = [p for p in points if p.get("rc") == 0]
    # The slack a resident model needs: (peak RSS - process baseline) / allocated.
    for p in measured:
        p["rss_beyond_baseline_over_allocated"] = round(
            (p["measured_rss_gb"] - base["process_beyond_tensors_gb"]) / p["predicted"]["allocated_gb"], 3)
    print(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "model": MODEL, "setup": "LoRA r=16 all linear, fp32, packing, every position trained",
                      "steps": args.steps, "load_average_at_end": os.getloadavg(), "baseline": base, "data": data, "points": points}, indent=2))


if __name__ == "__main__":
    main()
