"""Auto-fit: a run predicted not to fit the device trains with the cheapest change that fits
(gradient checkpointing, then a smaller micro-batch with the same rows per step, then on a GPU
activation offload), records it, and continues with it; train.auto_fit=false refuses as before."""

import json

import pytest
import yaml

from tiny import order_rows, write_rows
from tunesmith.config import build_config
from tunesmith.plan.autofit import AutoFit, candidates, search, with_values
from tunesmith.plan.device import Device
from tunesmith.plan.preflight import preflight


def gpu(available_gb: float) -> Device:
    return Device(type="cuda", name="Test GPU", memory_gb=available_gb + 1, available_gb=available_gb)


def llama(**train):
    return build_config({"model": {"source": "llama-3.1-8b"}, "train": {"max_seq_len": 2048, **train}})


GC = {"train.gradient_checkpointing": (False, True)}


@pytest.mark.parametrize("available, changes, after", [
    # Planner peaks, LoRA r=16 all linear, 2048 tokens x 8: 160.07 GB as configured, 28.27 with
    # checkpointing, then 23.10 (4x2), 20.52 (2x4), 19.22 (1x8), then with the checkpointed
    # inputs offloaded 23.90 (8x1) ... 18.68 (1x8); it fits under 90% of what is free.
    (180.0, {}, 160.07),
    (79.0, GC, 28.27),
    (31.42, GC, 28.27),  # 28.270 <= 31.42 x 0.9 = 28.278
    (31.4, {**GC, "train.micro_batch": (8, 4), "train.grad_accum": (1, 2)}, 23.1),
    (25.0, {**GC, "train.micro_batch": (8, 2), "train.grad_accum": (1, 4)}, 20.52),
    (22.0, {**GC, "train.micro_batch": (8, 1), "train.grad_accum": (1, 8)}, 19.22),
    (21.0, {**GC, "train.offload_activations": (False, True), "train.micro_batch": (8, 1),
            "train.grad_accum": (1, 8)}, 18.68),
])
def test_the_cheapest_change_that_fits_with_headroom(available, changes, after):
    found = search(llama(micro_batch=8), gpu(available))
    assert found == AutoFit(True, 160.07, changes, after)
    fitted = preflight(with_values(llama(micro_batch=8), found.values()), gpu(available))
    assert (fitted["fits"], fitted["peak_gb"]) == (True, after)  # what the pre-flight then says


def test_nothing_fits_changes_nothing():
    assert search(llama(micro_batch=8), gpu(20.7)) == AutoFit(False, 160.07, {})


def test_an_odd_micro_batch_tries_every_divisor_of_the_rows_per_step():
    """6 rows per step: 3x2, 2x3, 1x6 (4 or 5 would change the rows per step)."""
    cfg = build_config({"model": {"source": "qwen2.5-7b"}, "train": {"max_seq_len": 2048, "micro_batch": 6}})
    assert [(c.get("train.micro_batch"), c.get("train.grad_accum")) for c in candidates(cfg, gpu(40))] == \
        [(None, None), (3, 2), (2, 3), (1, 6)] * 2  # then the same with offload
    assert search(cfg, gpu(25.0)).changes == {**GC, "train.micro_batch": (6, 3), "train.grad_accum": (1, 2)}
    accumulating = llama(micro_batch=4, grad_accum=3, gradient_checkpointing=True)  # 12 rows, checkpointing on
    assert [c for c in candidates(accumulating, gpu(40)) if "train.offload_activations" not in c] == [
        {"train.micro_batch": m, "train.grad_accum": 12 // m} for m in (3, 2, 1)]


def test_the_last_resort_is_offload_on_a_gpu_and_returning_freed_memory_on_a_cpu():
    cfg = llama(micro_batch=2)
    cpu = Device(type="cpu", name="CPU", memory_gb=64, available_gb=60)
    assert list(candidates(cfg, cpu)) == [
        {"train.gradient_checkpointing": True},
        {"train.gradient_checkpointing": True, "train.micro_batch": 1, "train.grad_accum": 2},
        {"train.gradient_checkpointing": True, "train.release_freed_memory": True},
        {"train.gradient_checkpointing": True, "train.release_freed_memory": True, "train.micro_batch": 1,
         "train.grad_accum": 2},
    ]
    assert list(candidates(cfg, gpu(40))) == [
        {"train.gradient_checkpointing": True},
        {"train.gradient_checkpointing": True, "train.micro_batch": 1, "train.grad_accum": 2},
        {"train.gradient_checkpointing": True, "train.offload_activations": True},
        {"train.gradient_checkpointing": True, "train.offload_activations": True, "train.micro_batch": 1,
         "train.grad_accum": 2},
    ]
    # With offload the configured micro-batch is tried first (a peak the planner would count).
    found = search(cfg, gpu(40), peak_of=lambda c: 30e9 if c.train.offload_activations else 50e9)
    assert found.changes == {**GC, "train.offload_activations": (False, True)}


# ---------------------------------------------------------------- through the CLI, on the tiny model

# The tiny model at 128 tokens, LoRA r=4, on a CPU (planner peaks, GB): 0.4760 at 8x1, 0.4646 with
# checkpointing, 0.4577 with checkpointing at 4x2. With 0.51 GB free, 90% is 0.459: 4x2 fits.
TIGHT_GB = 0.51
SETTINGS = ["--no-progress", "--set", "train.max_seq_len=128", "--set", "train.micro_batch=8", "--set", "method.r=4",
            "--set", "train.max_steps=3", "--set", "train.save_every=2", "--set", "train.eval_every=100",
            "--set", "train.early_stopping_patience=0"]
CHANGES = {"train.gradient_checkpointing": [False, True], "train.micro_batch": [8, 4], "train.grad_accum": [1, 2]}


@pytest.fixture
def free_memory(monkeypatch):
    """Set what the pre-flight sees as free memory on this CPU."""
    import tunesmith.plan.device as device

    def set_free(gb: float) -> None:
        monkeypatch.setattr(device, "visible_device", lambda: Device(type="cpu", name="Test CPU (2 cores)",
                                                                    memory_gb=gb + 1, available_gb=gb))
    return set_free


def tunesmith_here(capsys, *args):
    """The CLI in this process (so the device can be faked): (exit code, stdout, stderr), each
    output's lines joined."""
    from tunesmith.cli import run_guarded

    capsys.readouterr()
    code = run_guarded([str(a) for a in args])
    said = capsys.readouterr()
    return code, " ".join(said.out.split()), " ".join(said.err.split())


def interrupt_at_call(monkeypatch, call):
    """A Ctrl-C in the middle of a step: TokenLoss.forward raises KeyboardInterrupt at its
    `call`-th training call."""
    from tunesmith.train.loss import TokenLoss

    original, calls = TokenLoss.forward, {"n": 0}

    def forward(self, *args):
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(TokenLoss, "forward", forward)


def test_a_run_that_does_not_fit_trains_with_the_change_and_resumes_with_it(tiny_model_dir, tmp_path, free_memory,
                                                                           capsys, monkeypatch):
    data = write_rows(tmp_path / "d.jsonl", order_rows(40))
    free_memory(TIGHT_GB)
    train = ["train", "--model", tiny_model_dir, "--data", data, *SETTINGS]
    code, out, err = tunesmith_here(capsys, *train, "--out", tmp_path / "a")
    assert code == 0, err
    assert ("pre-flight: ~0.5 GB predicted of 0.5 GB free: training with train.gradient_checkpointing=true "
            "train.micro_batch=4 train.grad_accum=2 (~0.5 GB); 8x1 -> 4x2 rows per optimizer step: the same "
            "update") in out
    assert "trained 3 steps" in out
    record = {"changes": CHANGES, "predicted_gb": {"before": 0.48, "after": 0.46}}
    assert json.loads((tmp_path / "a" / "train.json").read_text())["auto_fit"] == record
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["this_machine"]["preflight"]["auto_fit"] == record
    written = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["train"]
    assert (written["gradient_checkpointing"], written["micro_batch"], written["grad_accum"]) == (True, 4, 2)

    # The same command again: this same run, finished (its config.yaml holds the changed fields).
    code, out, _ = tunesmith_here(capsys, *train, "--out", tmp_path / "a")
    assert code == 0 and f"{tmp_path / 'a'} already holds this run, finished (completed): nothing to do" in out

    # The same command into another folder makes the same choice; interrupted in step 3 ...
    interrupt_at_call(monkeypatch, 5)  # two micro-batches per step
    code, out, _ = tunesmith_here(capsys, *train, "--out", tmp_path / "b")
    assert code != 0 and json.loads((tmp_path / "b" / "train.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    # ... and continued where far more memory is free: the recorded changes, not a new search.
    free_memory(64.0)
    code, out, err = tunesmith_here(capsys, *train, "--out", tmp_path / "b")
    assert code == 0, err
    assert ("pre-flight: continuing this run as auto-fit changed it: train.gradient_checkpointing=true "
            "train.micro_batch=4 train.grad_accum=2") in out
    assert "continuing from checkpoint step-000002 (2 of 3 steps done)" in out
    assert json.loads((tmp_path / "b" / "train.json").read_text())["auto_fit"] == record
    # Bit for bit the uninterrupted run (CPU).
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "a" / "adapter" / "adapter_model.safetensors").read_bytes()


def test_auto_fit_off_refuses_as_before(tiny_model_dir, tmp_path, free_memory, capsys):
    data = write_rows(tmp_path / "d.jsonl", order_rows(40))
    free_memory(TIGHT_GB)
    run = tmp_path / "run"
    code, out, err = tunesmith_here(capsys, "train", "--model", tiny_model_dir, "--data", data, *SETTINGS, "--out", run,
                                    "--set", "train.auto_fit=false")
    assert code == 1
    assert "pre-flight: this run needs ~0.5 GB at its peak" in err and "--no-preflight" in err
    assert "Here, --set train.gradient_checkpointing=true" in err  # today's remedy on this device
    assert not run.exists()


def test_a_hand_edited_record_is_one_usage_error_naming_train_json(tmp_path):
    from tunesmith.errors import UsageError
    from tunesmith.train.setup import fit_to_device

    cfg = build_config({"model": {"source": "llama-3.1-8b"}, "output": {"dir": str(tmp_path / "run")}})
    edited = {"changes": {"train.micro_batch": [8, 0]}, "predicted_gb": {"before": 1.0, "after": 0.5}}
    with pytest.raises(UsageError, match=r"run/train.json: auto_fit.changes does not fit this config \(Input should "
                                         r"be greater than or equal to 1\): fix it, or add --restart"):
        fit_to_device(cfg, gpu(80), enforce=True, recorded=edited, tokens_per_epoch=None)
