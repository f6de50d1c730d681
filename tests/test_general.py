"""The forgetting check (eval/general.py)."""

import json
import re
from collections import Counter

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval import general
from tunesmith.eval.general import (
    CHECK_TYPES, KINDS, check_answer, check_problem, first_number, forgetting_verdict, item_problem,
    load_general_set, score_general, sign_test,
)


def item(check, kind="format", id="format-001"):
    return {"id": id, "kind": kind, "prompt": "p", "check": check}


# ---------------------------------------------------------------- the shipped set

def test_shipped_set_loads_with_enough_items_of_each_kind():
    items = load_general_set()
    kinds = Counter(i["kind"] for i in items)
    assert len(items) >= 120
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 35
    assert len({i["id"] for i in items}) == len(items)
    used = {c["type"] for i in items for c in [i["check"], *i["check"].get("checks", [])]}
    assert used == set(CHECK_TYPES)  # every documented check type is used, and no other


def test_every_prompt_says_what_form_of_answer_it_wants():
    """A prompt without a form ("What is the capital of Japan?") fails a good model that
    answers in a full sentence with a number in it, or in a paragraph."""
    form = re.compile(r"only|nothing else|no other text|exactly|single|capital letters|uppercase|lowercase|"
                      r"start|begin|three-line|inside|ends? with|last word|does not contain", re.IGNORECASE)
    assert [i["id"] for i in load_general_set() if not form.search(i["prompt"])] == []


def test_a_broken_set_file_is_refused_with_its_line(tmp_path, monkeypatch):
    good = json.dumps(item({"type": "uppercase"}))
    bad = json.dumps(item({"type": "word_count", "value": "five"}, id="format-002"))
    (tmp_path / "general_set.jsonl").write_text(good + "\n" + bad + "\n")
    monkeypatch.setattr(general.resources, "files", lambda package: tmp_path)
    with pytest.raises(TunesmithError, match=r"general_set.jsonl:2: check: word_count.value has the wrong type; "
                                             r"the installed package is damaged"):
        load_general_set()
    (tmp_path / "general_set.jsonl").write_text(good + "\n" + good + "\n")
    with pytest.raises(TunesmithError, match=r"general_set.jsonl:2: id 'format-001' is used twice"):
        load_general_set()


@pytest.mark.parametrize("broken, problem", [
    ({"id": "fact-1", "kind": "fact", "prompt": "p", "check": {"type": "uppercase"}}, "id 'fact-1' is not KIND-NNN"),
    ({"id": "fact-001", "kind": "format", "prompt": "p", "check": {"type": "uppercase"}}, "kind 'format' does not match"),
    ({"id": "fact-001", "kind": "fact", "prompt": " ", "check": {"type": "uppercase"}}, "prompt must be a non-empty"),
    ({"id": "fact-001", "kind": "fact", "prompt": "p"}, "exactly the keys id, kind, prompt, check"),
    (item({"type": "shout"}), "check: type must be one of contains_any"),
    (item({"type": "number", "value": 1, "tolerance": 2}), "check: number takes exactly the fields ['value']"),
    (item({"type": "number", "value": True}), "check: number.value has the wrong type"),
    (item({"type": "contains_any", "values": []}), "check: contains_any needs a non-empty list"),
    (item({"type": "lacks_letter", "value": "ee"}), "check: lacks_letter.value must be one letter"),
    (item({"type": "regex", "pattern": "("}), "check: regex.pattern does not compile"),
    (item({"type": "list_items", "value": 3, "sep": ""}), "check: list_items.sep must be a non-empty string"),
    (item({"type": "all", "checks": [{"type": "word_count", "value": 0}]}), "check: all: word_count.value must be at least 1"),
])
def test_item_problems_name_what_is_wrong(broken, problem):
    assert problem in item_problem(broken)


# ---------------------------------------------------------------- checks

CHECKS = [
    # (check, an answer that passes, an answer that fails)
    ({"type": "contains_any", "values": ["Tokyo"]}, "The capital is tokyo.", "Kyoto"),
    ({"type": "contains_any", "values": ["Au"]}, "Au.", "August"),  # whole words only
    ({"type": "contains_any", "values": ["blue whale"]}, "The Blue Whale", "a whale that is blue"),
    ({"type": "number", "value": 42}, "42.", "24"),
    ({"type": "number", "value": 1200}, "About 1,200 litres", "1,2 or 00"),
    ({"type": "number", "value": 0.75}, "0.750", "75"),
    ({"type": "number", "value": -5}, "-5", "5"),
    ({"type": "json_keys", "keys": ["x", "y"]}, '{"y": 2, "x": 1}', '{"x": 1, "y": 2, "z": 3}'),
    ({"type": "json_keys", "keys": ["x", "y"]}, '```json\n{"x": 1, "y": 2}\n```', 'Here: {"x": 1, "y": 2}'),
    ({"type": "json_keys", "keys": ["ok"]}, '{"ok": true}', '["ok"]'),
    ({"type": "word_count", "value": 5}, "Deep, blue, vast, wild - endless.", "Deep blue vast wild"),
    ({"type": "uppercase"}, "HELLO, WORLD!", "HELLO, World!"),
    ({"type": "uppercase"}, "OK 42", "42"),  # no letters is not uppercase
    ({"type": "list_items", "value": 3, "sep": ","}, "apple, pear, plum.", "apple, pear"),
    ({"type": "list_items", "value": 3, "sep": ";"}, "cat; dog; cow", "cat; dog; ; cow"),
    ({"type": "starts_with", "value": "Yes"}, '**yes**, it is.', "Yesterday it was."),
    ({"type": "starts_with", "value": "No"}, "No: fish cannot climb.", "Not really."),
    ({"type": "lacks_letter", "value": "e"}, "A big dog ran past.", "A dog ran past the gate."),
    ({"type": "lacks_letter", "value": "a"}, "Blue sky", "...."),  # no letters at all fails
    ({"type": "regex", "pattern": r"^2\.?$"}, "2.", "2 wheels"),
    ({"type": "all", "checks": [{"type": "uppercase"}, {"type": "contains_any", "values": ["HELLO"]}]},
     "HELLO", "HI THERE"),
]


@pytest.mark.parametrize("check, right, wrong", CHECKS)
def test_each_check_passes_a_right_answer_and_fails_a_wrong_one(check, right, wrong):
    assert check_problem(check) is None
    assert check_answer(item(check), right) is True
    assert check_answer(item(check), wrong) is False


def test_the_table_covers_every_check_type():
    assert {check["type"] for check, _, _ in CHECKS} == set(CHECK_TYPES)


@pytest.mark.parametrize("text, number", [
    ("42", 42.0), ("42.", 42.0), ("42.0", 42.0), ("The answer is 1,200.", 1200.0), ("1,234,567.5", 1234567.5),
    ("-12", -12.0), ("\u22125", -5.0), (".25", 0.25), ("0.75 litres", 0.75), ("$30", 30.0), ("30%", 30.0),
    ("H2O has 3 atoms", 3.0), ("version v1.2 says 7", 7.0), ("1,2,3", 1.0), ("no number", None), ("", None),
])
def test_first_number(text, number):
    assert first_number(text) == number


def test_answers_are_stripped_before_checking():
    assert check_answer(item({"type": "regex", "pattern": "^OK$"}), "  OK\n") is True


# ---------------------------------------------------------------- scores and the verdict

ITEMS = [
    {"id": "fact-001", "kind": "fact", "prompt": "p", "check": {"type": "contains_any", "values": ["Paris"]}},
    {"id": "fact-002", "kind": "fact", "prompt": "p", "check": {"type": "contains_any", "values": ["Rome"]}},
    {"id": "arithmetic-001", "kind": "arithmetic", "prompt": "p", "check": {"type": "number", "value": 4}},
    {"id": "format-001", "kind": "format", "prompt": "p", "check": {"type": "uppercase"}},
]


def test_score_general_gives_exact_shares_by_model_and_kind():
    scores = score_general(ITEMS, {
        "base": ["Paris", "Rome", "4", "YES"],
        "tuned": ["Paris", "Milan", "5", "YES"],
        "compare": ["Lyon", "Milan", "4", "yes"],
    })
    assert scores == {
        "n": 4, "base": 1.0, "tuned": 0.5, "compare": 0.25,
        "by_kind": {
            "fact": {"n": 2, "base": 1.0, "tuned": 0.5, "compare": 0.0},
            "arithmetic": {"n": 1, "base": 1.0, "tuned": 0.0, "compare": 1.0},
            "format": {"n": 1, "base": 1.0, "tuned": 1.0, "compare": 0.0},
        },
        "failed": {"base": [], "tuned": ["fact-002", "arithmetic-001"], "compare": ["fact-001", "fact-002", "format-001"]},
    }


def test_score_general_rounds_to_four_decimals_and_refuses_a_short_answer_list():
    three = ITEMS[:3]
    assert score_general(three, {"base": ["Paris", "x", "x"]})["base"] == 0.3333
    with pytest.raises(ValueError, match="tuned: 2 answers for 3 general items"):
        score_general(three, {"tuned": ["Paris", "Rome"]})


def shares(base, tuned, n=100):
    """Scores with `base` and `tuned` items passed out of n, tuned failing a superset of base's."""
    ids = [f"fact-{i:03d}" for i in range(1, n + 1)]
    return {"n": n, "base": base / n, "tuned": tuned / n, "by_kind": {},
            "failed": {"base": ids[base:], "tuned": ids[tuned:]}}


@pytest.mark.parametrize("base, tuned, flagged", [
    (60, 54, True),   # drop 0.06 > 0.05
    (60, 55, False),  # drop 0.05: at the threshold is not above it
    (60, 58, False),
    (55, 60, False),  # tuned better
])
def test_forgetting_is_flagged_only_above_the_threshold(base, tuned, flagged):
    verdict = forgetting_verdict(shares(base, tuned))
    assert verdict["drop"] == round((base - tuned) / 100, 4)
    assert (verdict["threshold"], verdict["flagged"]) == (0.05, flagged)
    assert (verdict["advice"] is not None) == flagged
    assert verdict["n"] == 100 and "by_kind" in verdict  # the scores are kept


def test_flagged_advice_names_the_three_remedies_and_the_items_behind_the_drop():
    verdict = forgetting_verdict(shares(60, 50), threshold=0.05)
    assert (verdict["lost"], verdict["gained"]) == (10, 0)
    assert "drop 10.0% = 10 items" in verdict["advice"]
    for remedy in ("train.lr", "--set train.epochs=1", "--set data.mix_general=0.1"):
        assert remedy in verdict["advice"]
    assert verdict["noise"].startswith("the difference is 10 of 100 items (fewer passed by tuned than by base): "
                                       "tuned lost 10 items base passed and gained 0; a sign test on those 10 "
                                       "gives p = 0.00")


def test_a_drop_of_a_few_items_is_called_possible_chance():
    scores = {"n": 40, "base": 0.6, "tuned": 0.5, "by_kind": {},
              "failed": {"base": ["a", "b"], "tuned": ["c", "d", "e", "f", "g", "h"]}}
    verdict = forgetting_verdict(scores)
    assert verdict["flagged"] is True
    assert (verdict["lost"], verdict["gained"]) == (6, 2)
    assert "the difference is 4 of 40 items" in verdict["noise"] and "p = 0.29" in verdict["noise"]
    assert "a few items either way can be chance" in forgetting_verdict({"n": 40, "base": 0.5, "tuned": 0.45})["noise"]


@pytest.mark.parametrize("lost, gained, p", [(0, 0, 1.0), (5, 0, 0.0625), (0, 5, 0.0625), (6, 2, 0.2890625), (3, 3, 1.0)])
def test_sign_test_exact_values(lost, gained, p):
    assert sign_test(lost, gained) == pytest.approx(p, abs=1e-12)
