"""End to end through the real CLI on the tiny model: train, metrics, adapter, eval."""

import json

import pytest
import torch
from safetensors.torch import load_file

import cli_forkserver
from tiny import order_rows, write_rows

FAST = ["--set", "train.max_seq_len=128", "--set", "train.micro_batch=2", "--set", "train.eval_every=2",
        "--set", "train.log_every=1", "--set", "train.save_every=2", "--set", "method.r=4"]


def tunesmith(*args, check=True):
    """`python -m tunesmith.cli ARGS`, without paying for Python's and torch's imports each time."""
    result = cli_forkserver.run([*map(str, args)])
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def train_four_steps(model_dir, tmp):
    """A LoRA run of 4 steps on 40 order rows, in tmp/run (what export and gguf start from)."""
    data = write_rows(tmp / "train.jsonl", order_rows(40))
    folder = tmp / "run"
    tunesmith("train", "--model", model_dir, "--data", data, "--out", folder, "--no-progress",
              "--set", "train.max_steps=4", *FAST)
    return folder


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    rows = order_rows(40)
    data = write_rows(tmp / "train.jsonl", rows)
    with data.open("a") as f:  # two bad lines: both must be accounted for, neither may stop the run
        f.write('{"instruction": "oops"\n')
        f.write(json.dumps({"instruction": "x", "response": ""}) + "\n")
    run = tmp / "run"
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                       "--set", "train.max_steps=4", *FAST)
    return run, result


def test_train_writes_metrics_adapter_config_and_data(trained_run):
    run, result = trained_run
    assert "trained 4 steps" in result.stdout
    printed = " ".join(result.stdout.split())
    assert "data: 42 rows, 40 kept, 2 removed (empty_field 1, invalid_json 1)" in printed
    assert (run / "data" / "report.html").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed"} <= set(r)
    assert [("eval_loss" in r) for r in records] == [False, True, False, True]
    tokens = [r["tokens"] for r in records]
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert (run / "adapter" / "adapter_config.json").is_file()
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in weights) and any("lora_B" in k for k in weights)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    # Checkpoints every 2 steps and at each new best eval loss; RUN/adapter is the best one.
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    best = min(evals, key=evals.get)
    record = json.loads((run / "train.json").read_text())
    assert (record["status"], record["steps_planned"], record["steps_done"]) == ("completed", 4, 4)
    assert (record["best_step"], record["adapter_step"]) == (best, best)
    assert record["best_eval_loss"] == pytest.approx(evals[best], abs=1e-6)
    assert record["tokens"] == records[-1]["tokens"] and record["resumes"] == []
    saved = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert saved == (["step-000002", "step-000004"] if best == 4 else ["step-000002"])
    assert (run / "checkpoints" / "latest").read_text().strip() == saved[-1]
    best_weights = load_file(run / "checkpoints" / f"step-{best:06d}" / "weights.safetensors")
    assert {k.replace(".default", "") for k in best_weights} == set(weights)
    assert all(torch.equal(best_weights[k], weights[k.replace(".default", "")]) for k in best_weights)
    assert "train:" in (run / "config.yaml").read_text()
    removed = [json.loads(line) for line in (run / "data" / "removed.jsonl").read_text().splitlines()]
    assert sorted((r["line"], r["reasons"][0].split(":")[0]) for r in removed) == [(41, "invalid_json"), (42, "empty_field")]
    n_train = len((run / "data" / "train.jsonl").read_text().splitlines())
    n_val = len((run / "data" / "val.jsonl").read_text().splitlines())
    assert (n_train, n_val) == (36, 4)  # seeded 10% hold-out of the 40 good rows


def test_eval_writes_outputs_and_scores(trained_run):
    run, _ = trained_run
    result = tunesmith("eval", run, "--set", "eval.max_new_tokens=8")
    assert "base vs tuned on 4 held-out examples" in result.stdout
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["n"] == 4
    for side in ("base", "tuned"):
        assert set(scores[side]) == {"exact_match", "json_valid", "json_field_accuracy", "perplexity"}
    outputs = [json.loads(line) for line in (run / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert len(outputs) == 4
    assert {"line", "prompt", "reference", "base", "tuned", "scores"} <= set(outputs[0])


def test_train_from_a_config_file(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "train.jsonl", order_rows(12))
    val = write_rows(tmp_path / "val.jsonl", order_rows(3))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{source: {tiny_model_dir}}}\n"
        f"data: {{train: {data}, val: {val}}}\n"
        f"train: {{max_steps: 2, max_seq_len: 128, micro_batch: 2, grad_accum: 2}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    tunesmith("train", config, "--no-progress")
    assert len((tmp_path / "run" / "data" / "val.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "m"], "give a CONFIG file, or all of --model, --data and --out"),
        (["train", "missing.yaml"], "missing.yaml: config file not found"),
        (["eval", "no-such-run"], "is not a run folder"),
    ],
)
def test_usage_errors_exit_2_with_one_message(args, message, tmp_path):
    result = tunesmith(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_file_and_unknown_model(tiny_model_dir, tmp_path):
    result = tunesmith("train", "--model", tiny_model_dir, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "r",
                       check=False)
    assert result.returncode == 2 and "nope.jsonl: training file (data.train) not found" in result.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written
    data = write_rows(tmp_path / "d.jsonl", order_rows(4))
    result = tunesmith("train", "--model", tmp_path / "not-a-model", "--data", data, "--out", tmp_path / "r", check=False)
    assert result.returncode == 2 and "is neither a model folder" in result.stderr


def test_wrong_target_module_is_a_usage_error(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(8))
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "r", "--no-progress",
                       "--set", "method.target_modules=[qkv_proj]", check=False)
    assert result.returncode == 2 and "method.target_modules" in result.stderr


def test_full_fine_tuning_saves_a_model_and_evaluates(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(20))
    run = tmp_path / "full"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "method=full", "--set", "train.max_steps=2", "--set", "train.max_seq_len=128")
    assert (run / "model" / "model.safetensors").is_file()
    assert not (run / "adapter").exists()
    assert "lr: 2.0e-05" in (run / "config.yaml").read_text()
    tunesmith("eval", run, "--set", "eval.max_new_tokens=4")
    assert json.loads((run / "eval" / "scores.json").read_text())["n"] == 2


def test_examples_longer_than_max_seq_len_are_removed_with_a_reason(tiny_model_dir, tmp_path):
    rows = order_rows(10) + [{"instruction": "Extract the order as JSON. " * 40, "response": "{}"}]
    data = write_rows(tmp_path / "d.jsonl", rows)
    run = tmp_path / "run"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "train.max_steps=1", "--set", "train.max_seq_len=128", "--set", "data.val_fraction=0.2")
    removed = [json.loads(line) for line in (run / "data" / "removed.jsonl").read_text().splitlines()]
    assert [r["line"] for r in removed] == [11]
    assert removed[0]["reasons"][0].startswith("too_long:") and "> max_seq_len 128" in removed[0]["reasons"][0]
    kept = (run / "data" / "train.jsonl").read_text() + (run / "data" / "val.jsonl").read_text()
    assert len(kept.splitlines()) == 10 and '"line": 11' not in kept


def test_train_stops_before_loading_the_model_when_the_data_is_blocked(tiny_model_dir, tmp_path):
    """A wrong column mapping used to show up only after the model had loaded (LLaMA-Factory's
    "Cannot find valid samples"); the data stage refuses it first and says where to look."""
    rows = order_rows(6)
    data = write_rows(tmp_path / "d.jsonl", rows)
    with data.open("a") as f:
        f.write('{"instruction": "Extract", "answer": "{}"}\n' * 3)  # 3 of 9 rows: a field named wrongly
    run = tmp_path / "run"
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress", *FAST,
                       check=False)
    assert result.returncode == 1
    assert "cannot train on this data: 3 of 9 rows (33%) cannot be read" in result.stderr
    assert (run / "data" / "report.html").is_file() and not (run / "adapter").exists()
    removed = json.loads((run / "data" / "report.json").read_text())["reasons"]
    assert removed == {"unknown_format": 3}


def test_a_bf16_base_trains_on_a_cpu_with_fp32_adapters(tiny_model_dir, tmp_path):
    """`--set model.dtype=bfloat16` on a CPU (faster where the CPU has native bf16: the
    pre-flight says which): the same steps as fp32, a loss within bf16's rounding of fp32's, and
    the adapter saved in fp32 (the master weights)."""
    data = write_rows(tmp_path / "train.jsonl", order_rows(40))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        run = tmp_path / dtype
        result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                           "--set", "train.max_steps=4", "--set", f"model.dtype={dtype}", *FAST)
        assert "trained 4 steps" in result.stdout
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[dtype] = [r["loss"] for r in records if "loss" in r and "tokens" in r]
        weights = load_file(run / "adapter" / "adapter_model.safetensors")
        assert weights and {w.dtype for w in weights.values()} == {torch.float32}
    plan = json.loads((tmp_path / "bfloat16" / "plan.json").read_text())
    assert plan["this_machine"]["setup"]["dtype"] == "bf16"
    assert len(losses["bfloat16"]) == len(losses["float32"]) == 4
    assert losses["bfloat16"] != losses["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
