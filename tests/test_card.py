"""A portable, documented result: the adapter names its base as the user did (with the
hashes of the files it resolved to), and README.md is a model card built from the run
folder's files, refreshed by eval and review."""

import hashlib
import json
import shutil

import pytest

from test_model_sources import write_cached_model
from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows
from tunesmith.config import RunConfig
from tunesmith.models.card import base_record, find_base, make_portable, write_model_card


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- through the CLI

@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A run trained on the tiny model, and its card as train left it (before any eval)."""
    tmp = tmp_path_factory.mktemp("card")
    rows = [{**row, "category": "odd" if i % 2 else "even"} for i, row in enumerate(order_rows(30))]
    data = write_rows(tmp / "train.jsonl", rows)
    run = tmp / "run"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "train.max_steps=4", "--set", "data.val_fraction=0.2", *FAST)
    return run, (run / "adapter" / "README.md").read_text()


@pytest.fixture(scope="module")
def evaluated(trained):
    run, _ = trained
    tunesmith("eval", run, "--no-general", "--set", "eval.max_new_tokens=6")
    return run, json.loads((run / "eval" / "scores.json").read_text())


def test_the_adapter_names_the_base_as_given_with_its_hashes(trained, tiny_model_dir):
    """Regression: adapter_config.json held the absolute path the base was loaded from."""
    run, _ = trained
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    manifest = json.loads((run / "adapter" / "tunesmith.json").read_text())
    assert manifest["base"]["source"] == str(tiny_model_dir)
    assert manifest["base"]["sha256"] == {"model.safetensors": sha256(tiny_model_dir / "model.safetensors"),
                                          "config.json": sha256(tiny_model_dir / "config.json")}
    assert manifest["method"] == {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.05,
                                  "target_modules": RunConfig().method.target_modules}
    assert manifest["run"] == "run"
    assert find_base(run / "adapter") == str(tiny_model_dir)


def test_train_writes_a_card_with_the_training_record(trained, tiny_model_dir):
    """Regression: README.md was PEFT's empty template."""
    run, card = trained
    record = json.loads((run / "train.json").read_text())
    assert card.startswith(f"---\nbase_model: {tiny_model_dir}\nlibrary_name: peft\ntags:\n- tunesmith\n- lora\n---\n")
    lines = card.splitlines()
    for line in [f"- steps: {record['steps_done']} of {record['steps_planned']}", f"- tokens: {record['tokens']}",
                 f"- best step: {record['best_step']}", f"- best eval loss: {record['best_eval_loss']:.4f}",
                 "- rows in: 30", "- kept: 30", "- removed: 0 (none)", "- r: 4", "- alpha: 8",
                 "Categories in the data (rows): even (15), odd (15).",
                 f"- `model.safetensors`: `{sha256(tiny_model_dir / 'model.safetensors')}`"]:
        assert line in lines, line
    assert "## Evaluation\n\nnot evaluated yet: run `tunesmith eval RUN`." in card
    assert "## Expert review\n\nnot evaluated yet." in card


def test_eval_still_loads_the_adapter_and_puts_its_scores_in_the_card(evaluated):
    run, scores = evaluated
    lines = (run / "adapter" / "README.md").read_text().splitlines()
    assert f"Base vs tuned on {scores['n']} held-out examples:" in lines
    base, tuned = scores["base"], scores["tuned"]
    assert (f"| perplexity (lower is better) | {base['perplexity']:.3f} | {tuned['perplexity']:.3f} | "
            f"{tuned['perplexity'] - base['perplexity']:+.3f} |") in lines
    assert f"| exact_match | {base['exact_match']:.3f} | {tuned['exact_match']:.3f} | " \
           f"{tuned['exact_match'] - base['exact_match']:+.3f} |" in lines
    assert "General set: not evaluated yet." in lines
    assert f"- best eval loss: {json.loads((run / 'train.json').read_text())['best_eval_loss']:.4f}" in lines


# ---------------------------------------------------------------- hand-made run folders

def hand_made_run(tmp_path, *, method="lora", source="/models/base", scores=None):
    cfg = RunConfig.model_validate({"model": {"source": source}, "method": {"name": method, "r": 8},
                                    "clean": {"task_type": "domain"}, "output": {"dir": str(tmp_path / "run")}})
    run = tmp_path / "run"
    weights = run / ("model" if method == "full" else "adapter")
    weights.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "data").mkdir()
    (run / "data" / "report.json").write_text(json.dumps({
        "file": "/data/tickets.jsonl", "input_rows": 120, "kept": 110, "removed": 10,
        "reasons": {"invalid_json": 3, "empty_field": 7}, "duplicates": {"exact": 2, "near": 1},
        "balance": {"field": "category", "counts": {"billing": 70, "refund": 40}}}))
    (run / "train.json").write_text(json.dumps({
        "status": "completed", "steps_planned": 30, "steps_done": 30, "best_step": 20, "best_eval_loss": 1.23456,
        "adapter_step": 20, "tokens": 98765, "final_loss": 1.1}))
    if scores is not None:
        (run / "eval").mkdir()
        (run / "eval" / "scores.json").write_text(json.dumps(scores))
    if method != "full":
        (weights / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/snapshots/abc"}))
    make_portable(weights, cfg, {"source": source, "resolved": "/cache/snapshots/abc", "sha256": {}})
    return run


SCORES = {"n": 50, "models": ["base", "tuned"],
          "base": {"exact_match": 0.2, "perplexity": 12.5}, "tuned": {"exact_match": 0.64, "perplexity": 4.25},
          "general": {"n": 40, "base": 0.8, "tuned": 0.7, "drop": 0.1, "threshold": 0.05, "flagged": True},
          "caveat": "lexical scores are rough"}


def test_a_card_shows_each_section_from_its_file(tmp_path):
    run = hand_made_run(tmp_path, scores=SCORES)
    card = write_model_card(run)
    assert card == run / "adapter" / "README.md"
    lines = card.read_text().splitlines()
    for line in ["base_model: /models/base", "library_name: peft", "- lora",
                 "Tuned for the task of its training data (domain): answers to prompts like the rows it "
                 "was trained on.",
                 "Categories in the data (rows): billing (70), refund (40).",
                 "- file: `tickets.jsonl`", "- rows in: 120", "- kept: 110", "- removed: 10 (empty_field 7, invalid_json 3)",
                 "- duplicates removed: exact 2, near 1",
                 "- method: lora", "- r: 8", "- alpha: 16", "- dropout: 0.05", "- learning rate: 0.0002",
                 "- steps: 30 of 30", "- tokens: 98765", "- best step: 20", "- best eval loss: 1.2346",
                 "Base vs tuned on 50 held-out examples:",
                 "| exact_match | 0.200 | 0.640 | +0.440 |",
                 "| perplexity (lower is better) | 12.500 | 4.250 | -8.250 |",
                 "General set (40 items): base passed 80.0%, tuned 70.0%; drop 0.100 against a threshold of 0.050: "
                 "forgetting flagged.",
                 "Caveat: lexical scores are rough",
                 'base = AutoModelForCausalLM.from_pretrained("/models/base")',
                 "- The general set flagged forgetting: general skills dropped against the base."]:
        assert line in lines, line
    assert "not evaluated yet" not in "\n".join(lines).split("## Expert review")[0]


def test_a_card_without_eval_says_not_evaluated_yet(tmp_path):
    run = hand_made_run(tmp_path)
    text = write_model_card(run).read_text()
    assert "## Evaluation\n\nnot evaluated yet: run `tunesmith eval RUN`." in text
    assert "- General skills after tuning: not evaluated yet." in text
    assert "| metric |" not in text


def test_the_review_summary_is_kept_for_later_refreshes(tmp_path):
    run = hand_made_run(tmp_path, scores=SCORES)
    (run / "review").mkdir()
    (run / "review" / "votes.db").write_bytes(b"")
    assert "`tunesmith review RUN --results` adds them here" in write_model_card(run).read_text()
    review = {"win_rate": 0.625, "ci": [0.5, 0.75], "votes": 40, "counted": 36, "raters": {"ann": {}, "bob": {}}}
    expected = ("Tuned model's win rate against the base: 62.5% (95% CI 50.0%-75.0%), from 40 votes by 2 raters "
                "(36 counted; ties count half).")
    assert expected in write_model_card(run, review=review).read_text().splitlines()
    assert expected in write_model_card(run).read_text().splitlines()  # eval refreshes without it


def test_a_full_fine_tune_gets_its_card_in_run_model(tmp_path):
    run = hand_made_run(tmp_path, method="full")
    text = write_model_card(run).read_text()
    assert text.startswith("---\nbase_model: /models/base\nlibrary_name: transformers\ntags:\n- tunesmith\n- full\n---\n")
    assert "- r:" not in text and 'AutoModelForCausalLM.from_pretrained("RUN/model")' in text
    assert find_base(run / "model") == "/models/base"


def test_no_card_before_there_are_weights(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert write_model_card(run) is None


def test_an_alias_is_recorded_as_the_alias(tiny_model_dir, tmp_path, monkeypatch):
    """A catalog alias resolves to a cached hub snapshot; the adapter names the alias, and the
    hashes are those of the snapshot's files."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = write_cached_model(tmp_path / "hub", "meta-llama/Llama-3.1-8B", tiny_model_dir)
    cfg = RunConfig.model_validate({"model": {"source": "llama-3.1-8b"}, "output": {"dir": str(tmp_path / "run")}})
    base = base_record(cfg)
    assert base == {"source": "llama-3.1-8b", "resolved": str(snapshot),
                    "sha256": {"model.safetensors": sha256(tiny_model_dir / "model.safetensors"),
                               "config.json": sha256(tiny_model_dir / "config.json")}}
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(snapshot), "r": 16}))
    make_portable(adapter, cfg, base)
    assert json.loads((adapter / "adapter_config.json").read_text()) == {"base_model_name_or_path": "llama-3.1-8b",
                                                                         "r": 16}
    assert find_base(adapter) == "llama-3.1-8b"
    (tmp_path / "run" / "config.yaml").write_text(cfg.to_yaml())
    assert "base_model: llama-3.1-8b" in write_model_card(tmp_path / "run").read_text().splitlines()
    # Without tunesmith.json (an adapter from elsewhere), PEFT's own field names the base.
    (adapter / "tunesmith.json").unlink()
    assert find_base(adapter) == "llama-3.1-8b"
    shutil.rmtree(adapter)
