"""The step loop's decisions, on the tiny model in-process: the pinned loss curve, early
stopping and the best checkpoint, out-of-memory retries, non-finite steps, loss spikes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import order_rows, write_rows
from tunesmith.config import build_config
from tunesmith.errors import OutOfMemory, TunesmithError
from tunesmith.train import fit
from tunesmith.train.loss import TokenLoss
from tunesmith.train.setup import train


def config(model_dir, data, out, *extra):
    return build_config({}, [f"model.source={model_dir}", f"data.train={data}", f"output.dir={out}",
                             "train.max_seq_len=128", "train.micro_batch=2", "method.r=4", "train.seed=3", *extra])


@pytest.fixture
def data(tmp_path):
    return write_rows(tmp_path / "d.jsonl", order_rows(60))


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def record(run):
    return json.loads((run / "train.json").read_text())


def test_the_loss_curve_of_the_tiny_model_is_pinned(tiny_model_dir, data, tmp_path):
    """A broken schedule, a shifted label or a changed packing order moves these numbers."""
    run = tmp_path / "run"
    train(config(tiny_model_dir, data, run, "train.max_steps=6", "train.eval_every=3"), progress=False)
    logged = metrics(run)
    assert [r["loss"] for r in logged] == pytest.approx(LOSSES, abs=1e-4)
    assert {r["step"]: r["eval_loss"] for r in logged if "eval_loss" in r} == pytest.approx(EVAL_LOSSES, abs=1e-4)
    assert [r["tokens"] for r in logged] == TOKENS
    assert [r["lr"] for r in logged] == pytest.approx(LRS, rel=1e-9)


# Measured once on CPU (torch 2.13, the tiny model of tests/tiny.py, seed 3); cosine from 2e-4
# with no warmup at 6 steps (round(6 x 0.03) = 0).
LOSSES = [5.7138, 5.7198, 5.724, 5.695, 5.6828, 5.719]
EVAL_LOSSES = {3: 5.7041, 6: 5.7005}
TOKENS = [186, 369, 551, 735, 921, 1103]
LRS = [0.00018660254037844388, 0.00015000000000000001, 0.0001, 5.000000000000002e-05, 1.339745962155613e-05, 0.0]


def scripted_eval(monkeypatch, values):
    """Eval loss returns `values` in turn, so the early-stopping decisions are known."""
    calls = iter(values)
    monkeypatch.setattr(fit, "evaluate_loss", lambda *a, **k: next(calls))


def test_early_stopping_keeps_the_best_checkpoint_as_the_adapter(tiny_model_dir, data, tmp_path, monkeypatch):
    scripted_eval(monkeypatch, [3.0, 2.0, 2.5, 2.1, 2.2, 1.0])
    run = tmp_path / "run"
    notes = []
    result = train(config(tiny_model_dir, data, run, "train.max_steps=10", "train.eval_every=1",
                          "train.save_every=100"), progress=False, on_note=notes.append)
    assert (result.status, result.steps, result.best_step, result.adapter_step) == ("stopped_early", 5, 2, 2)
    assert record(run)["status"] == "stopped_early" and record(run)["best_eval_loss"] == 2.0
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    assert any("early stopping at step 5: eval loss has not improved for 3 evaluations (best 2.0000 at step 2" in n
               for n in notes)
    best = load_file(run / "checkpoints" / "step-000002" / "weights.safetensors")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(best[k], adapter[k.replace(".default", "")]) for k in best)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000001", "step-000002"]


def test_min_delta_and_patience_zero(tiny_model_dir, data, tmp_path, monkeypatch):
    scripted_eval(monkeypatch, [3.0, 2.995, 2.99, 2.5])
    result = train(config(tiny_model_dir, data, tmp_path / "a", "train.max_steps=4", "train.eval_every=1",
                          "train.early_stopping_min_delta=0.01", "train.early_stopping_patience=2"), progress=False)
    assert (result.status, result.steps, result.best_step) == ("stopped_early", 3, 1)  # 0.005 and 0.01 are not > 0.01
    scripted_eval(monkeypatch, [3.0, 3.1, 3.2, 3.3])
    result = train(config(tiny_model_dir, data, tmp_path / "b", "train.max_steps=4", "train.eval_every=1",
                          "train.early_stopping_patience=0"), progress=False)
    assert (result.status, result.steps, result.best_step, result.adapter_step) == ("completed", 4, 1, 1)


def on_training_call(monkeypatch, change):
    """TokenLoss.forward with `change(call, loss)` applied to each training call's loss (calls
    count from 1; with one micro-batch per step, the call is the step)."""
    original = TokenLoss.forward
    calls = {"n": 0}

    def forward(self, input_ids, position_ids, labels):
        if not self.training:
            return original(self, input_ids, position_ids, labels)
        calls["n"] += 1
        loss, n = original(self, input_ids, position_ids, labels)
        return change(calls["n"], loss), n

    monkeypatch.setattr(TokenLoss, "forward", forward)


def failing_forward(monkeypatch, fails):
    """TokenLoss.forward raises CUDA's out-of-memory error when `fails(batch_rows, model)`."""
    original = TokenLoss.forward

    def forward(self, input_ids, position_ids, labels):
        if self.training and fails(input_ids.shape[0], self.model):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, input_ids, position_ids, labels)

    monkeypatch.setattr(TokenLoss, "forward", forward)


def test_out_of_memory_halves_the_micro_batch_for_the_same_update(tiny_model_dir, data, tmp_path, monkeypatch):
    common = ["train.max_steps=3", "method.dropout=0.0", "train.eval_every=100"]
    reference = tmp_path / "reference"
    train(config(tiny_model_dir, data, reference, "train.micro_batch=1", "train.grad_accum=4", *common), progress=False)
    failing_forward(monkeypatch, lambda rows, model: rows > 1)
    run = tmp_path / "run"
    notes = []
    train(config(tiny_model_dir, data, run, "train.micro_batch=4", *common), progress=False, on_note=notes.append)
    changes = record(run)["memory_changes"]
    assert [(c["step"], c["micro_batch"], c["grad_accum"]) for c in changes] == [(1, [4, 2], [1, 2]), (1, [2, 1], [2, 4])]
    assert all("predicted_peak_gb" in c and c["measured_peak_gb"] is None for c in changes)  # CPU: nothing measured
    assert notes[-2:] == ["out of memory at step 1: retrying with train.micro_batch=2 train.grad_accum=2",
                          "out of memory at step 1: retrying with train.micro_batch=1 train.grad_accum=4"]
    a, b = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (run, reference))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in metrics(reference)], abs=1e-5)


def test_out_of_memory_with_nothing_left_to_lighten_stops_with_one_message(tiny_model_dir, data, tmp_path,
                                                                             monkeypatch):
    failing_forward(monkeypatch, lambda rows, model: True)
    run = tmp_path / "run"
    with pytest.raises(OutOfMemory, match="out of GPU memory while training step 1 of 3"):
        train(config(tiny_model_dir, data, run, "train.max_steps=3"), progress=False)
    changes = record(run)["memory_changes"]
    assert [c.get("gradient_checkpointing") for c in changes] == [None, [False, True]]
    assert record(run)["status"] == "failed"


def test_non_finite_steps_are_skipped_then_stop_the_run(tiny_model_dir, data, tmp_path, monkeypatch):
    on_training_call(monkeypatch, lambda call, loss: loss * float("nan") if call in (3, 5, 6, 7) else loss)
    run = tmp_path / "run"
    with pytest.raises(TunesmithError, match="training stopped at step 7: the loss or the gradients were not finite"):
        train(config(tiny_model_dir, data, run, "train.max_steps=10", "train.save_every=1", "train.eval_every=100",
                     "train.keep_checkpoints=10"), progress=False)
    rec = record(run)
    assert rec["status"] == "failed"
    assert [(a["kind"], a["step"]) for a in rec["alarms"]] == [
        ("non_finite", 3), ("non_finite", 5), ("non_finite", 6), ("non_finite_stop", 7)]
    logged = metrics(run)
    assert [r["loss"] is None for r in logged] == [False, False, True, False, True, True, True]
    # A skipped step leaves the weights as they were.
    two, three = (load_file(run / "checkpoints" / f"step-00000{n}" / "weights.safetensors") for n in (2, 3))
    assert all(torch.equal(two[k], three[k]) for k in two)
    four = load_file(run / "checkpoints" / "step-000004" / "weights.safetensors")
    assert any(not torch.equal(three[k], four[k]) for k in three)
    assert not (run / "adapter").exists()


def test_a_loss_spike_names_the_rows_of_its_step(tiny_model_dir, data, tmp_path, monkeypatch):
    on_training_call(monkeypatch, lambda call, loss: loss * 5 if call == 15 else loss)
    run = tmp_path / "run"
    notes = []
    train(config(tiny_model_dir, data, run, "train.max_steps=16", "train.eval_every=100", "train.lr=1e-5"),
          progress=False, on_note=notes.append)
    alarms = record(run)["alarms"]
    assert [(a["kind"], a["step"]) for a in alarms] == [("loss_spike", 15)]
    rows = alarms[0]["detail"]["rows"]
    assert rows and all(r.startswith(f"{data}:") and 1 <= int(r.rsplit(":", 1)[1]) <= 60 for r in rows)
    assert [r.get("alarms", [{}])[0].get("kind") for r in metrics(run) if "alarms" in r] == ["loss_spike"]
    assert any(n.startswith("loss spike at step 15") for n in notes), notes


def test_epochs_auto_takes_three_passes_over_a_small_set(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(20))
    notes = []
    result = train(config(tiny_model_dir, data, tmp_path / "run", "train.packing=false", "train.eval_every=1000",
                          "train.micro_batch=4"), progress=False, on_note=notes.append)
    n_train = len((tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines())
    assert (n_train, result.steps) == (18, -(-3 * 18 // 4))  # 2 held out; 3 x 18 rows in steps of 4
    assert any(n.startswith("train.epochs auto: 3 for ") and "training tokens per epoch (under 500,000)" in n
               for n in notes), notes


def test_an_abort_mid_step_keeps_the_last_checkpoint_and_the_same_command_finishes_the_run(
        tiny_model_dir, data, tmp_path, monkeypatch):
    """A second Ctrl-C raises KeyboardInterrupt wherever the loop is (the signal handling
    itself: tests/test_preempt.py): no half step is kept, train.json says interrupted, and
    running again gives the uninterrupted run's adapter. (Through the CLI two signals race
    with the step, so the abort is injected here.)"""
    settings = ["train.max_steps=8", "train.save_every=2", "train.eval_every=100"]
    reference = tmp_path / "reference"
    train(config(tiny_model_dir, data, reference, *settings), progress=False)
    def abort_in_step_5(call, loss):
        if call == 5:
            raise KeyboardInterrupt
        return loss

    original = TokenLoss.forward
    on_training_call(monkeypatch, abort_in_step_5)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, data, run, *settings), progress=False)
    rec = record(run)
    assert (rec["status"], rec["steps_done"]) == ("interrupted", 4)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000004"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    monkeypatch.setattr(TokenLoss, "forward", original)
    result = train(config(tiny_model_dir, data, run, *settings), progress=False)
    assert result.resumed_from == 4 and record(run)["status"] == "completed"
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (reference / "adapter" / "adapter_model.safetensors").read_bytes()
