"""How long a resume takes: process start to the first step after the checkpoint.

Trains the demo model (SmolLM2-135M-Instruct, LoRA, the bundled sample) with `tunesmith
train`, stops it with SIGTERM after a few steps (it checkpoints and exits 143), runs the same
command again and reads the restart time the resumed run recorded in RUN/train.json
(`resumes[-1].restart_seconds`: model load, data stage, checkpoint restore and one step).
For comparison, the same figure for the fresh start: process start to its first step.
The planner's spot estimate uses the resume figure (catalog/mfu.json, spot.resume_seconds).

    python bench/resume_time.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "src" / "tunesmith" / "demo" / "sample"


def command(run: Path) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", "train", "--model", "smollm2-135m-instruct",
            "--data", str(SAMPLE / "train.jsonl"), "--val", str(SAMPLE / "val.jsonl"), "--out", str(run),
            "--no-progress", "--set", "train.max_steps=8", "--set", "train.save_every=2", "--set", "train.eval_every=100",
            "--set", "train.max_seq_len=256"]


def logged(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    run = Path(args.work or tempfile.mkdtemp(prefix="resume-time-")) / "run"
    started = time.time()
    process = subprocess.Popen(command(run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_step = None
    while process.poll() is None and logged(run) < 3:
        if first_step is None and logged(run) >= 1:
            first_step = time.time() - started
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate()[1]
    if process.returncode != 143:
        raise SystemExit(f"expected exit 143 after SIGTERM, got {process.returncode}: {stderr[-500:]}")
    stopped_at = json.loads((run / "train.json").read_text())["steps_done"]
    subprocess.run(command(run), check=True, capture_output=True)
    record = json.loads((run / "train.json").read_text())
    resume = record["resumes"][-1]
    print(json.dumps({
        "model": "smollm2-135m-instruct (LoRA r=16, fp32, CPU)",
        "stopped_after_step": stopped_at,
        "resumed_from_step": resume["from_step"],
        "resume_seconds": resume["restart_seconds"],
        "fresh_start_to_first_step_seconds": round(first_step, 2) if first_step else None,
        "resume_over_fresh_start": round(resume["restart_seconds"] / first_step, 3) if first_step else None,
        "status": record["status"],
    }, indent=2))


if __name__ == "__main__":
    main()
