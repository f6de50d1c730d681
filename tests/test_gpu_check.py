"""bench/gpu_check.py, the one script a GPU machine runs, checked end to end on CPU with --tiny:
every part really trains (a 2-layer Llama-3.1-8B-shaped model) and leaves numbers or a reason."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 26-42 s on 2 shared cores: four subprocesses, each importing torch, transformers and peft
def test_tiny_run_fills_every_part_with_figures_or_a_reason(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert list(parts) == ["memory_check", "tunesmith", "trl", "tunesmith_offload"]
    for name in parts:  # one summary line per part on stderr
        assert f"[gpu_check] {name}: " in proc.stderr

    memory = parts["memory_check"]
    assert memory["summary"]["cases_measured"] == 2 and memory["exit_code"] == 0
    assert memory["summary"]["allocated"]["max_abs_error_pct"] < 10
    assert (tmp_path / "gpu_memory_check.json").is_file()

    by_part = {name: {c["method"]: c for c in parts[name]["cases"]} for name in ("tunesmith", "tunesmith_offload")}
    for name, cases in by_part.items():
        lora = cases["lora"]
        assert lora["offload_activations"] == (name == "tunesmith_offload")
        assert lora["steps_timed"] == 3 and lora["tokens_per_step"] == 2 * 128 and lora["tokens_per_s"] > 0
        assert lora["flops_per_token"]["executed"] > lora["flops_per_token"]["model"] > 0
        assert lora["mfu_model"] is None and "no catalog peak" in lora["mfu_why"]
        assert lora["predicted_peak_gb"] > 0 and lora["peak_gb"] is None
        # 1 warm-up + 3 timed steps on random tokens of a 512-word vocabulary: about ln(512)
        assert len(lora["losses"]) == 4 and all(abs(x - math.log(512)) < 0.5 for x in lora["losses"])
        assert "CUDA" in cases["qlora"]["skipped"]
    # Offloading the checkpointed inputs moves them, it computes nothing differently.
    assert by_part["tunesmith"]["lora"]["losses"] == by_part["tunesmith_offload"]["lora"]["losses"]

    trl = parts["trl"]["cases"][0]
    assert trl["trainer"] == "trl" and trl["steps_timed"] == 3 and trl["tokens_per_step"] == 256
    assert trl["settings"]["gradient_checkpointing"] is True and trl["settings"]["packing"] is False
    assert math.isfinite(trl["train_loss"])
    assert result["summary"]["tunesmith_over_trl"] > 0
