import json
import re
from pathlib import Path

import pytest

from tunesmith.demo.generate import (
    KEYS,
    N_TRAIN,
    N_VAL,
    PLANT_COUNTS,
    SAMPLE_DIR,
    generate,
    planted_lines,
    write_sample,
)

ROW_KEYS = {"instruction", "input", "response", "category"}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\+\d{1,3}(?: \d{2,4}){2,4}")
MOJIBAKE = ("Ã", "â€")


def _lines(name: str) -> list[str]:
    return (SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines()


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in _lines(name)]


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _rows("train.jsonl")


@pytest.fixture(scope="module")
def val() -> list[dict]:
    return _rows("val.jsonl")


@pytest.fixture(scope="module")
def planted() -> dict[str, list[int]]:
    return planted_lines()


def _clean(train: list[dict], planted: dict[str, list[int]]) -> list[dict]:
    dirty = {line for lines in planted.values() for line in lines}
    return [row for line, row in enumerate(train, start=1) if line not in dirty]


def test_committed_sample_matches_generator(tmp_path: Path) -> None:
    write_sample(tmp_path)
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


def test_generate_is_deterministic_and_matches_files(train: list[dict], val: list[dict]) -> None:
    assert generate() == generate()
    assert generate() == (train, val)
    assert generate(seed=1) != generate(seed=0)


def test_counts(train: list[dict], val: list[dict], planted: dict[str, list[int]]) -> None:
    assert {kind: len(lines) for kind, lines in planted.items()} == PLANT_COUNTS
    assert len(train) == N_TRAIN + sum(PLANT_COUNTS.values()) == 623
    assert len(val) == N_VAL == 60
    assert len(_clean(train, planted)) == N_TRAIN


def test_every_row_is_a_json_object_with_the_right_keys() -> None:
    for name in ("train.jsonl", "val.jsonl"):
        for number, line in enumerate(_lines(name), start=1):
            row = json.loads(line)
            assert set(row) == ROW_KEYS, (name, number)
            assert all(isinstance(value, str) for value in row.values()), (name, number)


def test_messages_are_short(train: list[dict], val: list[dict]) -> None:
    assert max(len(row["input"].split()) for row in train + val) < 60


def test_planted_lines_are_distinct_and_in_range(train: list[dict], planted: dict[str, list[int]]) -> None:
    all_lines = [line for lines in planted.values() for line in lines]
    assert len(set(all_lines)) == len(all_lines)
    assert all(1 <= line <= len(train) for line in all_lines)


def test_exact_duplicates_repeat_an_earlier_line(planted: dict[str, list[int]]) -> None:
    lines = _lines("train.jsonl")
    for line in planted["exact_duplicate"]:
        assert lines[line - 1] in lines[: line - 1], line


def test_near_duplicates_are_close_to_an_earlier_row(train: list[dict], planted: dict[str, list[int]]) -> None:
    for line in planted["near_duplicate"]:
        row = train[line - 1]
        earlier = [r for r in train[: line - 1] if r["response"] == row["response"]]
        assert len(earlier) == 1, line
        assert row["input"] != earlier[0]["input"]
        assert _one_edit_apart(row["input"], earlier[0]["input"]), line


def _one_edit_apart(edited: str, original: str) -> bool:
    """Same words up to casing and punctuation, or one word dropped, or two words swapped."""
    new, old = _words(edited), _words(original)
    if new == old or sorted(new) == sorted(old):
        return True
    return any(old[:i] + old[i + 1 :] == new for i in range(len(old)))


def _words(text: str) -> list[str]:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split()


def test_personal_data_rows(train: list[dict], planted: dict[str, list[int]]) -> None:
    for line in planted["email"]:
        assert EMAIL.search(train[line - 1]["input"]), line
    for line in planted["phone"]:
        assert PHONE.search(train[line - 1]["input"]), line
    clean = _clean(train, planted)
    assert not any(EMAIL.search(row["input"]) or PHONE.search(row["input"]) for row in clean)


def test_mojibake_rows(train: list[dict], planted: dict[str, list[int]]) -> None:
    for line in planted["mojibake"]:
        text = train[line - 1]["input"]
        assert any(marker in text for marker in MOJIBAKE), line
    clean = _clean(train, planted)
    assert not any(marker in row["input"] for row in clean for marker in MOJIBAKE)


def test_empty_response_rows(train: list[dict], planted: dict[str, list[int]]) -> None:
    empty = [line for line, row in enumerate(train, start=1) if row["response"] == ""]
    assert empty == planted["empty_response"]


def test_clean_rows_are_unique(train: list[dict], planted: dict[str, list[int]]) -> None:
    inputs = [row["input"] for row in _clean(train, planted)]
    assert len(set(inputs)) == len(inputs)


def test_responses_are_compact_json_with_the_five_keys(
    train: list[dict], val: list[dict], planted: dict[str, list[int]]
) -> None:
    empty = set(planted["empty_response"])
    rows = [row for line, row in enumerate(train, start=1) if line not in empty] + val
    for row in rows:
        order = json.loads(row["response"])
        assert tuple(order) == KEYS
        assert isinstance(order["quantity"], int) and 1 <= order["quantity"] <= 12
        assert all(isinstance(order[key], str) and order[key] for key in KEYS if key != "quantity")
        assert row["response"] == json.dumps(order, ensure_ascii=False)


def test_clean_inputs_mention_every_field(train: list[dict], val: list[dict], planted: dict[str, list[int]]) -> None:
    words = ("zero one two three four five six seven eight nine ten eleven twelve").split()
    for row in _clean(train, planted) + val:
        order = json.loads(row["response"])
        text = row["input"]
        for key in ("name", "city", "item", "color"):
            assert order[key] in text, (key, text)
        # Digits may be glued to a marker ("x7"), so only other digits count as a boundary.
        quantity = rf"(?<!\d){order['quantity']}(?!\d)|\b{words[order['quantity']]}\b"
        assert re.search(quantity, text), text


def test_val_is_unseen(train: list[dict], val: list[dict]) -> None:
    train_inputs = {row["input"] for row in train}
    assert not any(row["input"] in train_inputs for row in val)
    # Not even the same order with different wording.
    train_orders = {row["response"] for row in train}
    assert not any(row["response"] in train_orders for row in val)


def test_demo_clean_settings_find_exactly_the_planted_problems(planted: dict[str, list[int]]) -> None:
    """The data stage with the demo's own settings: every planted problem found, at the
    planted line, and nothing else touched (no false positive on the 600 clean rows)."""
    from tunesmith.data.clean import clean_file
    from tunesmith.demo.run import demo_config

    result = clean_file(SAMPLE_DIR / "train.jsonl", demo_config(Path("unused")).clean)
    removed = {r["line"]: r["reasons"][0].split(":")[0] for r in result.removed}
    assert removed == {
        **{n: "duplicate" for n in planted["exact_duplicate"]},
        **{n: "near_duplicate" for n in planted["near_duplicate"]},
        **{n: "empty_field" for n in planted["empty_response"]},
    }
    fixed = {r["line"]: r["fixes"] for r in result.kept if "fixes" in r}
    assert fixed == {n: ["mojibake: messages[0]"] for n in planted["mojibake"]}
    redacted = {r["line"]: r["redacted"] for r in result.kept if "redacted" in r}
    assert redacted == {**{n: {"EMAIL": 1} for n in planted["email"]}, **{n: {"PHONE": 1} for n in planted["phone"]}}
    assert not any("warnings" in r for r in result.kept)
