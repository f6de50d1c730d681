"""The forgetting check (eval/general.py) and the general-data mix (data/mix.py, prepare)."""

import json
import re
from collections import Counter
from importlib import resources

import pytest

from tiny import order_rows, write_rows
from tunesmith.config import RunConfig
from tunesmith.data import mix
from tunesmith.data.clean import clean_file
from tunesmith.data.dedup import shingles
from tunesmith.data.mix import general_rows, mix_count, shipped_rows
from tunesmith.data.prepare import prepare_run_data
from tunesmith.errors import TunesmithError
from tunesmith.eval import general
from tunesmith.eval.general import (
    CHECK_TYPES, KINDS, check_answer, check_problem, forgetting_verdict, stated_numbers, item_problem,
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


# What a good model might answer to each format item: each item can be passed, by the
# kind of answer its prompt asks for.
FORMAT_ANSWERS = {
    "format-001": "Vast, deep, blue, restless, ancient.", "format-002": "Curious, soft, independent.",
    "format-003": "Rain taps gently on the window glass.",
    "format-004": "Coffee wakes me up and warms my hands every morning.",
    "format-005": "To rest and recover.", "format-006": '{"x": 3, "y": 4}',
    "format-007": '```json\n{"city": "Lisbon", "country": "Portugal"}\n```', "format-008": '{"a": 1, "b": 2, "c": 3}',
    "format-009": '{"ok": true}', "format-010": '{"title": "Casablanca", "year": 1942}', "format-011": "HELLO",
    "format-012": "IT IS BLUE.", "format-013": "HELLO THERE, HAVE A GREAT DAY!", "format-014": "autumn",
    "format-015": "Apple, banana, cherry", "format-016": "Red, green, blue, yellow", "format-017": "Dog; cat; horse",
    "format-018": "2, 4, 6, 8, 10", "format-019": "hat, bat", "format-020": "Certainly! Carrot.",
    "format-021": "No, a fish cannot climb a tree.", "format-022": "Yes, ten is greater than three.",
    "format-023": "Today is a wonderful day!", "format-024": "A big dog ran far.", "format-025": "Big blue sky",
    "format-026": "2", "format-027": "Yes", "format-028": "Down", "format-029": "1 2 3 4 5",
    "format-030": "ananab", "format-031": "Honey.", "format-032": "- Python\n- Rust\n- Go", "format-033": "2021-07-04",
    "format-034": "c-a-t", "format-035": "Red, done.", "format-036": "[Mars]",
    "format-037": '["Monday", "Tuesday", "Friday"]', "format-038": "White flakes drift down\nHushing the sleeping town\nSoft and slow",
    "format-039": "blue blue blue", "format-040": "OK", "format-041": "A", "format-042": "Will it rain tomorrow?",
}


def good_answer(item):
    check = item["check"]
    if check["type"] == "contains_any":
        return f"The answer is {check['values'][0]}."
    if check["type"] == "number":
        return f"{check['value']:g}"
    return FORMAT_ANSWERS[item["id"]]


def test_every_item_can_be_passed_by_the_answer_its_prompt_asks_for():
    """An item no answer passes (a regex one character too strict) would count against both
    models and hide a real drop."""
    items = load_general_set()
    assert sorted(FORMAT_ANSWERS) == sorted(i["id"] for i in items if i["kind"] == "format")
    assert [i["id"] for i in items if not check_answer(i, good_answer(i))] == []
    assert score_general(items, {"base": [good_answer(i) for i in items]})["base"] == 1.0


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
    ({"type": "number", "value": 132}, "12 × 11 = 132\n\nThis is multiplication of 2 numbers.", "12 × 11 = 121"),
    ({"type": "number", "value": 42}, "42 (because 6 × 7)", "17 + 25 = 32.\n42"),  # the first numeric line counts
    ({"type": "number", "value": 30}, "15% of 200 is 0.15 * 200 = 30.", "15% of 200 is 0.15 * 200 = 25."),
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


@pytest.mark.parametrize("text, numbers", [
    ("42", (42.0, 42.0)), ("42.", (42.0, 42.0)), ("42.0", (42.0, 42.0)), ("The answer is 1,200.", (1200.0, 1200.0)),
    ("1,234,567.5", (1234567.5, 1234567.5)), ("-12", (-12.0, -12.0)), ("\u22125", (-5.0, -5.0)), (".25", (0.25, 0.25)),
    ("0.75 litres", (0.75, 0.75)), ("$30", (30.0, 30.0)), ("30%", (30.0, 30.0)), ("H2O has 3 atoms", (3.0, 3.0)),
    ("version v1.2 says 7", (7.0, 7.0)), ("1,2,3", (1.0, 3.0)), ("2 + 2 = 4\nmore: 5", (2.0, 4.0)),
    ("Sure!\n\n10 - 3 = 7", (10.0, 7.0)), ("A hexagon has six sides.", (6.0, 6.0)),
    ("Seven days, or 7.", (7.0, 7.0)), ("someone has sixteenth place", ()), ("no number", ()), ("", ()),
])
def test_stated_numbers(text, numbers):
    assert stated_numbers(text) == numbers


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


# ---------------------------------------------------------------- the mix file

def mix_path():
    return resources.files("tunesmith.data") / "general_mix.jsonl"


def test_mix_file_reads_and_cleans_without_removing_or_redacting_anything():
    result = clean_file(str(mix_path()))
    report = result.report
    assert report["input_rows"] >= 300 and report["kept"] == report["input_rows"] == shipped_rows()
    assert (report["removed"], report["warnings"], report["fixes"], report["pii"]) == (0, {}, {}, {})
    assert report["duplicates"] == {"exact": 0, "near": 0, "semantic": 0}
    assert report["formats"] == {"instruction": report["input_rows"]}


def user_text(row):
    return row["instruction"] + ("\n\n" + row["input"] if "input" in row else "")


def mix_file_rows():
    return [json.loads(line) for line in mix_path().read_text(encoding="utf-8").splitlines()]


def test_no_mix_row_is_near_an_eval_item():
    """Training on a near-copy of a general item would hide forgetting, not prevent it."""
    prompts = [(i["id"], shingles(i["prompt"], 3)) for i in load_general_set()]
    close = []
    for number, row in enumerate(mix_file_rows(), start=1):
        for text in (user_text(row), user_text(row) + "\n" + row["response"]):
            mine = shingles(text, 3)
            close += [(number, id) for id, theirs in prompts if len(mine & theirs) / len(mine | theirs) >= 0.5]
    assert close == []


# Words of a fact question that say nothing about its subject.
QUESTION_WORDS = {
    "what", "which", "who", "how", "the", "and", "for", "are", "its", "our", "does", "there", "many", "known",
    "called", "comes", "right", "after", "first", "last", "number", "famous", "usual", "count", "taught",
    "english", "speaking", "schools", "credited", "largest", "smallest", "whole", "with",
}


def subject_words(prompt):
    question = prompt.split(" Answer with")[0]
    return {w for w in re.findall(r"[a-z0-9]+", question.lower()) if len(w) >= 3 and w not in QUESTION_WORDS}


def test_no_mix_row_asks_an_eval_fact_and_answers_it():
    """A mix row that asks about half the subject of a fact item and whose response passes
    that item's check teaches the eval its answer (e.g. "frozen water" -> "ice")."""
    facts = [i for i in load_general_set() if i["kind"] == "fact"]
    asked = []
    for number, row in enumerate(mix_file_rows(), start=1):
        words = set(re.findall(r"[a-z0-9]+", user_text(row).lower()))
        for fact in facts:
            subject = subject_words(fact["prompt"])
            if len(subject & words) >= len(subject) / 2 and check_answer(fact, row["response"]):
                asked.append((number, fact["id"]))
    assert asked == []


# ---------------------------------------------------------------- choosing and counting rows

def test_general_rows_are_a_seeded_choice_in_file_order():
    first = general_rows(25, seed=7)
    assert first == general_rows(25, seed=7)
    assert [r["line"] for r in first] != [r["line"] for r in general_rows(25, seed=8)]
    lines = [r["line"] for r in first]
    assert lines == sorted(set(lines)) and len(lines) == 25
    assert set(first[0]) == {"line", "messages"} and first[0]["messages"][-1]["role"] == "assistant"
    assert len(general_rows(shipped_rows(), seed=1)) == shipped_rows() and general_rows(0, seed=1) == []
    first[0]["messages"].clear()  # the caller's copy: the shipped rows stay intact
    assert general_rows(25, seed=7)[0]["messages"]


def test_general_rows_refuses_more_than_shipped():
    with pytest.raises(ValueError, match=f"between 0 and {shipped_rows()}"):
        general_rows(shipped_rows() + 1, seed=0)


@pytest.mark.parametrize("train_rows, share, count", [
    (36, 0.2, 9), (100, 0.1, 11), (10, 0.2, 3), (90, 0.1, 10), (0, 0.3, 0), (50, 0.0, 0), (1, 0.49, 1), (1000, 0.05, 53),
])
def test_mix_count(train_rows, share, count):
    assert mix_count(train_rows, share) == count


def test_mix_count_refuses_a_share_of_one():
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\)"):
        mix_count(10, 1.0)


# ---------------------------------------------------------------- through the data stage

def config(path, mix_general, data=None, train=None):
    return RunConfig.model_validate({"data": {"train": str(path), "mix_general": mix_general, **(data or {})},
                                     "train": {"max_seq_len": 1024, **(train or {})}})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("mix") / "train.jsonl", order_rows(40))


def test_mix_general_adds_exactly_its_rows_to_train_and_none_to_val(user_data, tiny_tokenizer, tmp_path):
    plain = prepare_run_data(config(user_data, 0.0), tiny_tokenizer, tmp_path / "plain")
    mixed = prepare_run_data(config(user_data, 0.2), tiny_tokenizer, tmp_path / "mixed")
    train, val = read_jsonl(tmp_path / "mixed" / "data" / "train.jsonl"), read_jsonl(tmp_path / "mixed" / "data" / "val.jsonl")
    plain_train = read_jsonl(tmp_path / "plain" / "data" / "train.jsonl")
    assert (len(plain_train), len(train)) == (36, 36 + 9)  # mix_count(36, 0.2) == 9: 20% of 45
    assert train[:36] == plain_train  # the user's rows, unchanged and first
    assert val == read_jsonl(tmp_path / "plain" / "data" / "val.jsonl")
    added = train[36:]
    assert all(r["file"] == "general-mix" and set(r) == {"line", "messages", "file"} for r in added)
    assert [r["line"] for r in added] == [r["line"] for r in general_rows(9, seed=RunConfig().train.seed)]
    assert "file" not in plain_train[0]
    assert [e.origin for e in mixed.train[36:]] == [f"general-mix:{r['line']}" for r in added]
    assert mixed.train[:36] == plain.train and mixed.val == plain.val
    assert mixed.report["mix_general"] == {"share": 0.2, "rows": 9, "shipped": shipped_rows(), "wanted": 9,
                                           "left_out": {}, "tokens": sum(len(e.input_ids) for e in mixed.train[36:])}
    assert "mix_general" not in plain.report
    assert ("data.mix_general 0.2: 9 general instruction rows shipped with tunesmith added to the 36 training rows "
            "(20% of 45; validation has none)") in mixed.report["notes"]
    saved = json.loads((tmp_path / "mixed" / "data" / "report.json").read_text())
    assert saved["mix_general"]["rows"] == 9
    assert "9 general instruction rows" in (tmp_path / "mixed" / "data" / "report.html").read_text()
    # what train plans and pre-flights with counts the mixed rows' tokens too
    from tunesmith.plan.inputs import report_tokens

    assert report_tokens(mixed.report, "d").per_epoch == \
        report_tokens(plain.report, "d").per_epoch + mixed.report["mix_general"]["tokens"]
    assert report_tokens(mixed.report, "d").source.endswith("plus 9 general-mix rows")


def test_mixed_rows_are_encoded_as_training_encodes_a_row(user_data, tiny_tokenizer, tmp_path):
    from tunesmith.models.encode import encode

    mixed = prepare_run_data(config(user_data, 0.2), tiny_tokenizer, tmp_path / "run")
    added = read_jsonl(tmp_path / "run" / "data" / "train.jsonl")[36:]
    for row, encoded in zip(added, mixed.train[36:]):
        expected = encode(tiny_tokenizer, row["messages"])
        assert (encoded.input_ids, encoded.trained) == (expected.input_ids, expected.trained)


def test_the_same_seed_mixes_the_same_rows_and_another_seed_others(user_data, tiny_tokenizer, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        prepare_run_data(config(user_data, 0.25, train={"seed": seed}), tiny_tokenizer, tmp_path / name)
    train = {name: (tmp_path / name / "data" / "train.jsonl").read_bytes() for name in "abc"}
    assert train["a"] == train["b"] and train["a"] != train["c"]


def test_rows_too_long_for_max_seq_len_are_left_out_into_removed(user_data, tiny_tokenizer, tmp_path):
    mixed = prepare_run_data(config(user_data, 0.2, train={"max_seq_len": 128}), tiny_tokenizer, tmp_path / "run")
    info = mixed.report["mix_general"]
    removed = [r for r in read_jsonl(tmp_path / "run" / "data" / "removed.jsonl") if r["file"] == "general-mix"]
    assert set(info["left_out"]) == {"too_long"} and info["rows"] + info["left_out"]["too_long"] == 9
    assert len(removed) == info["left_out"]["too_long"] and all(r["reasons"][0].startswith("too_long: ") for r in removed)
    assert all(len(e.input_ids) <= 128 for e in mixed.train)
    assert len(read_jsonl(tmp_path / "run" / "data" / "train.jsonl")) == 36 + info["rows"]


def test_a_mixed_row_near_a_validation_row_is_left_out(user_data, tiny_tokenizer, tmp_path):
    """Training on a near-copy of a validation row would make eval loss measure memory."""
    seed = RunConfig().train.seed
    leaked = general_rows(mix_count(40, 0.2), seed)[0]  # all 40 rows train: data.val holds the validation rows
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": leaked["messages"][0]["content"], "completion": leaked["messages"][1]["content"]}) + "\n")
    mixed = prepare_run_data(config(user_data, 0.2, data={"val": str(val)}), tiny_tokenizer, tmp_path / "run")
    assert mixed.report["mix_general"]["rows"] == 9 and mixed.report["mix_general"]["left_out"] == {"leaks_into_val": 1}
    removed = read_jsonl(tmp_path / "run" / "data" / "removed.jsonl")
    assert [(r["file"], r["line"]) for r in removed] == [("general-mix", leaked["line"])]
    assert leaked["line"] not in [r["line"] for r in read_jsonl(tmp_path / "run" / "data" / "train.jsonl")[40:]]


def test_a_share_beyond_the_shipped_rows_is_capped_with_a_note(user_data, tiny_tokenizer, tmp_path, monkeypatch):
    five = tuple(general_rows(5, seed=0))
    monkeypatch.setattr(mix, "_shipped", lambda: five)
    mixed = prepare_run_data(config(user_data, 0.4), tiny_tokenizer, tmp_path / "run")
    assert mixed.report["mix_general"] == {"share": 0.4, "rows": 5, "shipped": 5, "wanted": 24, "left_out": {},
                                           "tokens": sum(len(e.input_ids) for e in mixed.train[36:])}
    assert any("24 were asked for, but tunesmith ships 5, so all 5 were chosen" in n for n in mixed.report["notes"])
    assert len(read_jsonl(tmp_path / "run" / "data" / "train.jsonl")) == 36 + 5
