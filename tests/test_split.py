"""Split: seeded, stratified by category, and no near-duplicate of a validation row in train."""

import json

from tunesmith.data.split import split_examples, split_file, stratified_sample, subset


def example(i, category=None, text=None, answer=None):
    text = text or f"Question number {i}: what is {i} squared times {i + 7} minus {i * 3}?"
    answer = answer or f"The answer for case {i} is {i * i * (i + 7) - i * 3}."
    row = {"line": i + 1, "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
    if category:
        row["category"] = category
    return row


def test_split_is_seeded_disjoint_and_complete():
    rows = [example(i) for i in range(100)]
    a = split_examples(rows, val_fraction=0.1, seed=3)
    b = split_examples(rows, val_fraction=0.1, seed=3)
    c = split_examples(rows, val_fraction=0.1, seed=4)
    assert [r["line"] for r in a.val] == [r["line"] for r in b.val]
    assert [r["line"] for r in a.val] != [r["line"] for r in c.val]
    assert len(a.val) == 10 and len(a.train) + len(a.removed) == 90
    assert {r["line"] for r in a.train}.isdisjoint(r["line"] for r in a.val)


def test_split_is_stratified_by_category():
    rows = [example(i, "rare" if i % 10 == 0 else "common") for i in range(200)]
    result = split_examples(rows, val_fraction=0.2, seed=0)
    val_cats = [r["category"] for r in result.val]
    assert val_cats.count("rare") == 4 and val_cats.count("common") == 36


def test_no_near_duplicate_of_a_validation_row_stays_in_train():
    base = "Write a short product description for a stainless steel water bottle that keeps drinks cold for a day."
    rows = [example(i) for i in range(20)]
    answer = "Keeps water ice-cold for 24 hours, fits every cup holder, and the steel never tastes of metal."
    rows += [example(100 + k, text=base.replace("short", word), answer=answer)
             for k, word in enumerate(["short", "brief", "small"])]
    for seed in range(5):
        result = split_examples(rows, val_fraction=0.3, seed=seed)
        val_bottles = [r for r in result.val if "bottle" in r["messages"][0]["content"]]
        train_bottles = [r for r in result.train if "bottle" in r["messages"][0]["content"]]
        if val_bottles:
            assert not train_bottles
            assert all(r["reasons"][0].startswith("leaks_into_val: near-duplicate of validation line")
                       for r in result.removed)


def test_subset_keeps_the_category_mix():
    rows = [example(i, "a" if i < 80 else "b") for i in range(100)]
    chosen = subset(rows, 0.1, seed=1)
    assert [r["category"] for r in chosen].count("b") == 2 and len(chosen) == 10
    assert stratified_sample(rows, 0, seed=1) == ([], list(range(100)))


def test_split_file_writes_every_row_somewhere(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"instruction": r["messages"][0]["content"], "response": r["messages"][1]["content"]})
             for r in (example(i) for i in range(50))]
    path.write_text("\n".join(lines + ["not json"]) + "\n")
    summary = split_file(path, tmp_path / "out", val_fraction=0.2, seed=0, subset_fraction=0.5)
    out = tmp_path / "out"
    counted = {name: len((out / name).read_text().splitlines())
               for name in ("train.jsonl", "val.jsonl", "removed.jsonl", "rest.jsonl")}
    assert counted == {"train.jsonl": 20, "val.jsonl": 10, "removed.jsonl": 1, "rest.jsonl": 20}
    assert summary["reasons"] == {"invalid_json": 1}
    assert json.loads((out / "split.json").read_text())["train"] == 20


def test_holdout_never_takes_every_row():
    """Regression: --val-fraction 0.95 of 10 rows rounded to 10 held out and none to train."""
    from tunesmith.data.split import holdout_size

    assert holdout_size(10, 0.95, None) == 9 and holdout_size(2, 0.9, None) == 1 and holdout_size(1, 0.5, None) == 0
    result = split_examples([example(i) for i in range(10)], val_fraction=0.95, seed=0)
    assert (len(result.train), len(result.val)) == (1, 9)
