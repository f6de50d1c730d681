"""`tunesmith eval` through the real CLI on the tiny model: held-out rows, a curated file,
a checkpoint, run vs run, categories, perplexity and the general set."""

import csv
import json
import math

import pytest

from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows

QUICK = ["--set", "eval.max_new_tokens=6"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    rows = [{**row, "category": "odd" if i % 2 else "even"} for i, row in enumerate(order_rows(30))]
    data = write_rows(tmp / "train.jsonl", rows)
    run = tmp / "run"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "train.max_steps=4", "--set", "data.val_fraction=0.2", *FAST)
    return run


@pytest.fixture(scope="module")
def held_out(run):
    result = tunesmith("eval", run, "--no-general", *QUICK)
    return result, json.loads((run / "eval" / "scores.json").read_text()), read_jsonl(run / "eval" / "outputs.jsonl")


def test_held_out_rows_are_scored_per_model_and_per_category(run, held_out):
    result, scores, outputs = held_out
    val = read_jsonl(run / "data" / "val.jsonl")
    assert scores["n"] == len(outputs) == len(val) == 6
    assert [o["line"] for o in outputs] == [v["line"] for v in val]
    assert {o["file"] for o in outputs} == {str(run.parent / "train.jsonl")}
    expected = {}
    for v in val:
        expected[v["category"]] = expected.get(v["category"], 0) + 1
    assert {c: part["n"] for c, part in scores["categories"].items()} == expected
    assert scores["models"] == ["base", "tuned"]
    assert set(scores["tuned"]) == {"exact_match", "json_valid", "json_field_accuracy", "perplexity"}
    assert scores["general"] is None
    assert scores["source"] == {"data": None, "checkpoint": None, "compare": None, "seen_in_training": []}
    assert "base vs tuned on 6 held-out examples" in result.stdout
    assert "correlate poorly" in result.stdout and "per category" in result.stdout
    assert "6 held-out rows: the guide asks for 100-200" in result.stdout
    assert (run / "eval" / "report.html").is_file()


def test_reference_perplexity_of_the_kept_adapter_is_its_eval_loss(run, held_out):
    """The adapter is the checkpoint with the lowest eval loss; that loss is the mean NLL of the
    same held-out reference tokens, computed packed by the training loop. Our perplexity,
    computed unpacked by the eval stage, must be exp of it."""
    _, scores, outputs = held_out
    record = json.loads((run / "train.json").read_text())
    assert math.log(scores["tuned"]["perplexity"]) == pytest.approx(record["best_eval_loss"], abs=1e-4)
    assert scores["base"]["perplexity"] != scores["tuned"]["perplexity"]
    assert all(o["scores"]["tuned"]["ref_nll_per_token"] > 0 for o in outputs)


def test_the_adapters_own_checkpoint_gives_the_same_answers(run, held_out):
    _, scores, outputs = held_out
    step = json.loads((run / "train.json").read_text())["adapter_step"]
    tunesmith("eval", run, "--checkpoint", str(step), "--no-general", *QUICK)
    again = json.loads((run / "eval" / "scores.json").read_text())
    assert again["source"]["checkpoint"] == f"step-{step:06d}"
    assert [(o["base"], o["tuned"]) for o in read_jsonl(run / "eval" / "outputs.jsonl")] == \
        [(o["base"], o["tuned"]) for o in outputs]
    assert again["tuned"] == scores["tuned"] and again["base"] == scores["base"]


def test_another_checkpoint_is_another_model(run, held_out):
    _, scores, _ = held_out
    step = json.loads((run / "train.json").read_text())["adapter_step"]
    other = 2 if step == 4 else 4
    tunesmith("eval", run, "--checkpoint", str(run / "checkpoints" / f"step-{other:06d}"), "--no-general", *QUICK)
    again = json.loads((run / "eval" / "scores.json").read_text())
    assert again["base"]["perplexity"] == scores["base"]["perplexity"]
    assert again["tuned"]["perplexity"] != scores["tuned"]["perplexity"]


def test_compare_with_itself_answers_exactly_as_tuned(run):
    result = tunesmith("eval", run, "--compare", run, "--no-general", *QUICK)
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["models"] == ["base", "tuned", "compare"]
    assert scores["compare"] == scores["tuned"]
    assert all(o["compare"] == o["tuned"] for o in read_jsonl(run / "eval" / "outputs.jsonl"))
    assert "base vs tuned vs compare" in result.stdout


def test_a_curated_csv_with_a_bad_row(run, tmp_path):
    path = tmp_path / "curated.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "response", "category"])
        for i in range(4):
            writer.writerow([f"Say the number {i}.", str(i), "numbers" if i % 2 else "words"])
        writer.writerow(["No answer here.", "", "words"])
    result = tunesmith("eval", run, "--data", path, "--no-general", *QUICK)
    scores = json.loads((run / "eval" / "scores.json").read_text())
    outputs = read_jsonl(run / "eval" / "outputs.jsonl")
    assert scores["n"] == 4 and [o["line"] for o in outputs] == [2, 3, 4, 5]
    assert [o["reference"] for o in outputs] == ["0", "1", "2", "3"]
    assert {c: p["n"] for c, p in scores["categories"].items()} == {"numbers": 2, "words": 2}
    assert set(scores["tuned"]) == {"exact_match", "token_f1", "rouge_l", "perplexity"}
    assert scores["source"]["data"] == str(path)
    assert "1 row(s) not evaluated: empty_field 1 (line 6" in result.stdout
    assert f"examples of {path}" in result.stdout


def test_a_curated_row_the_run_trained_on_is_named(run, tmp_path):
    """Regression guard: a curated eval file that repeats training rows flatters the tuned
    model; the user is told which rows, and with which training line."""
    trained = read_jsonl(run / "data" / "train.jsonl")[0]
    rows = [{"prompt": "Name a colour.", "completion": "Blue."}, {"prompt": "Name a fruit.", "completion": "Pear."},
            {"messages": trained["messages"]}]
    path = write_rows(tmp_path / "curated.jsonl", rows)
    result = tunesmith("eval", run, "--data", path, "--no-general", *QUICK)
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["source"]["seen_in_training"] == [3]
    assert (f"1 of 3 examples are near-duplicates (similarity >= 0.7) of rows the run trained on: lines 3 "
            f"(train line {trained['line']}, 1.00)") in " ".join(result.stdout.split())


def test_the_general_set_scores_both_models(run):
    result = tunesmith("eval", run, "--set", "eval.max_examples=2", *QUICK)
    general = json.loads((run / "eval" / "scores.json").read_text())["general"]
    assert general["n"] >= 120
    assert 0 <= general["base"] <= 1 and 0 <= general["tuned"] <= 1
    assert general["flagged"] == (general["base"] - general["tuned"] > 0.05)
    assert f"general set ({general['n']} items" in result.stdout
