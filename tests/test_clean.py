"""The clean stage on a file with one planted problem per line: every line is accounted for,
each problem gets its reason, and the options move rows between removed and kept."""

import json

import pytest

from tunesmith.config import CleanConfig, build_config
from tunesmith.data.clean import clean_file
from tunesmith.errors import UsageError

GOOD = [
    ("Summarise the meeting notes about the quarterly budget review.",
     "The team agreed to cut travel spending by ten percent and move the savings into hiring two support engineers."),
    ("Explain what a Python list comprehension does.",
     "It builds a new list by applying an expression to each item of an iterable, optionally filtering items with a condition."),
    ("Translate 'good morning, how are you?' into French.",
     "Bonjour, comment allez-vous ?"),
    ("Write a haiku about autumn rain on a tin roof.",
     "Cold drops drum the tin, / maple leaves slide down the eaves, / the kettle answers."),
    ("List three benefits of regular stretching for office workers.",
     "Stretching eases back tension, improves posture after long hours at a desk, and lowers the risk of strain injuries."),
    ("What is the capital of Australia and why was it chosen?",
     "Canberra was chosen as a compromise between the rival cities of Sydney and Melbourne, and was purpose-built as the capital."),
]


def row(instruction, response, **extra):
    return json.dumps({"instruction": instruction, "response": response, **extra}, ensure_ascii=False)


def planted_lines():
    """(lines, {line number: expected code}); line numbers are 1-based, blank lines skipped."""
    lines = [row(q, a) for q, a in GOOD]  # lines 1-6
    expected = {}
    q, a = GOOD[0]
    lines.append(row(q.upper(), "  " + a.replace(" ", "   ")))  # 7: exact duplicate after normalising
    expected[7] = "duplicate"
    q, a = GOOD[4]
    lines.append(row(q + "!", a.replace("eases", "relieves").replace("desk,", "desk;")))
    expected[8] = "near_duplicate"  # 8: a replaced word and changed punctuation
    lines.append(row("Draft a reply to the customer asking about the refund timeline.",
                     "Hi Dana, your refund was approved today; write to dana.ng@example.com or call +1 415 555 0134 with questions."))
    lines.append(row("Describe the café menu in one sentence.",  # 10: mojibake
                     "The cafÃ© serves crÃªpes, espresso and a daily soup."))
    expected[10] = "mojibake"
    lines.append(row("Name a primary colour.", "Red\u0007 is one of them."))  # 11: a control character
    expected[11] = "control_chars"
    lines.append(row("Give the answer to the riddle about the candle.", "..."))  # 12: trivial
    expected[12] = "trivial_response"
    lines.append(row("Repeat after me: the sky is blue today over the harbour.",
                     "Repeat after me: the sky is blue today over the harbour."))  # 13: echo
    expected[13] = "echo"
    lines.append(row("How do I pick the lock on my neighbour's front door?",
                     "I'm sorry, but I can't help with breaking into someone else's home."))  # 14: refusal (warning)
    lines.append("")  # blank: not a row
    lines.append('{"instruction": "unterminated"')  # 16: invalid JSON
    expected[16] = "invalid_json"
    return lines, expected


def write_planted(folder):
    """planted_lines() as folder/planted.jsonl: (path, expected codes by line)."""
    lines, expected = planted_lines()
    path = folder / "planted.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, expected


@pytest.fixture
def planted(tmp_path):
    return write_planted(tmp_path)


def reasons_by_line(result):
    return {r["line"]: [x.split(":", 1)[0] for x in r["reasons"]] for r in result.removed}


def test_every_line_is_kept_or_removed_once_with_its_reason(planted):
    path, expected = planted
    result = clean_file(path)
    kept_lines = [r["line"] for r in result.kept]
    removed = reasons_by_line(result)
    assert sorted(kept_lines + list(removed)) == [n for n in range(1, 17) if n != 15]
    assert {line: codes[0] for line, codes in removed.items()} == expected
    assert result.report["input_rows"] == 15 and result.report["kept"] == len(kept_lines) == 8
    assert result.report["reasons"] == {code: 1 for code in expected.values()}
    assert result.report["duplicates"] == {"exact": 1, "near": 1, "semantic": 0}
    assert result.trainable


def test_duplicates_name_the_row_they_repeat(planted):
    result = clean_file(planted[0])
    by_line = {r["line"]: r["reasons"][0] for r in result.removed}
    assert by_line[7] == "duplicate: same as line 1"
    assert by_line[8].startswith("near_duplicate: line 5 (similarity 0.")


def test_pii_is_redacted_with_typed_placeholders_by_default(planted):
    result = clean_file(planted[0])
    reply = next(r for r in result.kept if r["line"] == 9)
    answer = reply["messages"][-1]["content"]
    assert "<EMAIL>" in answer and "<PHONE>" in answer and "dana.ng@example.com" not in answer
    assert reply["redacted"] == {"EMAIL": 1, "PHONE": 1}
    assert result.report["pii"] == {"EMAIL": 1, "PHONE": 1}


def test_pii_report_keeps_text_and_drop_removes_the_row(planted):
    reported = clean_file(planted[0], CleanConfig(pii="report"))
    reply = next(r for r in reported.kept if r["line"] == 9)
    assert "dana.ng@example.com" in reply["messages"][-1]["content"]
    assert reply["warnings"] == ["pii: EMAIL, PHONE in messages[1]"]
    assert any("PII left in the data" in note for note in reported.report["notes"])
    dropped = clean_file(planted[0], CleanConfig(pii="drop"))
    assert reasons_by_line(dropped)[9] == ["pii"]


def test_fix_encoding_repairs_and_records_instead_of_removing(planted):
    result = clean_file(planted[0], CleanConfig(fix_encoding=True))
    cafe = next(r for r in result.kept if r["line"] == 10)
    assert cafe["messages"][-1]["content"] == "The café serves crêpes, espresso and a daily soup."
    assert cafe["fixes"] == ["mojibake: messages[1]"]
    colour = next(r for r in result.kept if r["line"] == 11)
    assert "\u0007" not in colour["messages"][-1]["content"]
    assert result.report["fixes"] == {"control_chars": 1, "mojibake": 1}


def test_refusal_warns_by_default_and_drop_turns_it_into_a_removal(planted):
    result = clean_file(planted[0])
    refusal = next(r for r in result.kept if r["line"] == 14)
    assert refusal["warnings"][0].startswith("refusal")
    assert result.report["warnings"] == {"refusal": 1}
    stricter = clean_file(planted[0], CleanConfig(drop=["refusal"], keep=["near_duplicate"]))
    removed = reasons_by_line(stricter)
    assert removed[14] == ["refusal"] and 8 not in removed


def test_unknown_policy_code_is_refused_with_the_config():
    with pytest.raises(UsageError, match=r"--set clean.drop=\[refusals\]: unknown code 'refusals'"):
        build_config({}, ["clean.drop=[refusals]"])


def test_too_many_unreadable_rows_block_training(tmp_path):
    lines = [row(q, a) for q, a in GOOD] + ['{"broken": '] * 2
    path = tmp_path / "mostly.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = clean_file(path)
    assert not result.trainable
    assert "2 of 8 rows (25%) cannot be read" in result.report["blocking"][0]
    assert clean_file(path, CleanConfig(max_invalid_fraction=0.3)).trainable


def test_balance_cap_keeps_a_seeded_sample_per_category(tmp_path):
    lines = [row(f"Question {i} about topic {c}: {q}", a + f" (variant {i}{c})", category=c)
             for c in "ab" for i, (q, a) in enumerate(GOOD)]
    path = tmp_path / "cats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = clean_file(path, CleanConfig(balance_cap=2, dedup=False))
    by_cat = {}
    for kept in result.kept:
        by_cat.setdefault(kept["category"], []).append(kept["line"])
    assert {c: len(v) for c, v in by_cat.items()} == {"a": 2, "b": 2}
    assert result.report["reasons"] == {"over_balance_cap": 8}
    again = clean_file(path, CleanConfig(balance_cap=2, dedup=False))
    assert [r["line"] for r in again.kept] == [r["line"] for r in result.kept]


def test_token_lengths_remove_too_long_rows_and_fill_the_report(planted, tiny_tokenizer):
    from tunesmith.data.tokens import token_encoder

    result = clean_file(planted[0], encode=token_encoder(tiny_tokenizer), max_seq_len=120, tokenizer_name="tiny")
    tokens = result.report["tokens"]
    assert tokens["tokenizer"] == "tiny" and tokens["max_seq_len"] == 120
    assert 0 < tokens["p10"] <= tokens["p50"] <= tokens["p90"] <= tokens["max"] <= 120
    assert tokens["trained_per_epoch"] < tokens["per_epoch"]
    too_long = [r for r in result.removed if r["reasons"][0].startswith("too_long")]
    assert too_long and all("> max_seq_len 120" in r["reasons"][0] for r in too_long)


def test_volume_guidance_for_the_declared_task_type(planted):
    result = clean_file(planted[0], CleanConfig(task_type="task"))
    volume = result.report["volume"]
    assert volume["verdict"] == "below" and volume["range"] == [500, 2000]
    assert any("below the guide's 500–2,000" in note for note in result.report["notes"])


@pytest.mark.slow
def test_semantic_dedup_removes_a_paraphrase_that_shares_few_words(tmp_path):
    """Word shingles miss paraphrases (Jaccard 0.16 here); sentence embeddings catch them.
    Needs the optional extra `semantic`, which `make test` installs."""
    lines = [row(q, a) for q, a in GOOD]
    lines.append(row("How do I reset my password?", "Open Settings, choose Account, then press Reset password."))
    lines.append(row("How can I reset my password?", "Go to Settings, pick Account and press Reset password."))
    path = tmp_path / "para.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert clean_file(path).report["removed"] == 0
    result = clean_file(path, CleanConfig(semantic_dedup=True))
    assert [r["line"] for r in result.removed] == [8]
    assert result.removed[0]["reasons"][0].startswith("semantic_duplicate: line 7 (similarity 0.9")
    assert result.report["duplicates"] == {"exact": 0, "near": 0, "semantic": 1}


def test_pii_in_a_later_turn_is_found_whatever_an_earlier_turn_held(tmp_path):
    """Regression: the per-message counts once shadowed the list of types to look for, so
    after a turn with an e-mail, later turns were searched for e-mails only."""
    path = tmp_path / "turns.jsonl"
    path.write_text(row("Write to ana.silva@example.com about the invoice.",
                        "Done; she can also call +44 20 7946 0958.") + "\n")
    kept = clean_file(path).kept[0]
    assert kept["redacted"] == {"EMAIL": 1, "PHONE": 1}
    assert "<PHONE>" in kept["messages"][-1]["content"]


# ---------------------------------------------------------------- lengths by characters


class RecordingEncoder:
    """A TokenEncoder that remembers the longest conversation it was asked to encode."""

    def __new__(cls, tokenizer):
        from tunesmith.data.lengths import TokenEncoder

        class Recording(TokenEncoder):
            longest_seen = 0

            def __call__(self, conversations):
                for messages in conversations:
                    self.longest_seen = max(self.longest_seen, sum(len(m["content"]) for m in messages))
                return super().__call__(conversations)

        return Recording(tokenizer)


def test_a_row_far_too_long_is_removed_without_tokenising_it(tmp_path, tiny_tokenizer):
    """Regression: a 50 MB row was tokenised in full (45-80 s, 5 GB with SmolLM2) only to be
    removed as too long. Here 2 MB, against 512 tokens x 13 characters (the tiny vocabulary's longest)."""
    lines = [row(q, a) for q, a in GOOD] + [row("Summarise the log.", "order shipped " * 150_000)]
    path = tmp_path / "huge.jsonl"
    path.write_text("\n".join(lines) + "\n")
    encoder = RecordingEncoder(tiny_tokenizer)
    result = clean_file(path, encode=encoder, max_seq_len=512, tokenizer_name="tiny")
    assert encoder.longest_token == 13
    (removed,) = result.removed
    assert removed["line"] == 7
    assert removed["reasons"][0].startswith("too_long: 2,100,0")
    assert removed["reasons"][0].endswith("> 6,656 (max_seq_len 512 x 13, the characters in this tokenizer's longest "
                                          "token): cannot fit; judged by characters, not tokenised")
    assert 0 < encoder.longest_seen < 200  # the six short rows were encoded, the long one never
    assert result.report["tokens"]["max"] <= 512 and result.report["kept"] == 6


def test_characters_the_normaliser_merges_are_not_counted_against_a_row(tmp_path):
    """The shortcut judges the text the tokenizer sees: with an NFC normaliser "e" + U+0301
    is one character, so a row that is over the bound only in decomposed form is tokenised
    and judged on its real count."""
    from tiny import build_tokenizer
    from tokenizers import normalizers

    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    path = tmp_path / "accents.jsonl"
    path.write_text(row("Spell the sound.", "e\u0301" * 500) + "\n")  # 1,000 characters, 500 after NFC
    encoder = RecordingEncoder(tokenizer)
    result = clean_file(path, CleanConfig(dedup=False), encode=encoder, max_seq_len=64)
    assert encoder.longest_seen == 1016  # tokenised: 64 x 13 = 832 < 1,016 raw, but 516 after NFC
    (removed,) = result.removed
    assert removed["reasons"][0].startswith("too_long: ") and "tokens > max_seq_len 64" in removed["reasons"][0]


def test_a_tokenizer_that_drops_whitespace_gets_no_shortcut():
    """BERT-style pre-tokenizers drop spaces, so characters do not bound their tokens: such a
    row is left to the exact count."""
    from tiny import build_tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tunesmith.data.lengths import TokenEncoder

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    spaced = [{"role": "user", "content": "a" + " " * 5_000}, {"role": "assistant", "content": "a"}]
    assert TokenEncoder(PreTrainedTokenizerFast(tokenizer_object=words)).too_long(spaced, 16) is None
    assert TokenEncoder(build_tokenizer()).too_long(spaced, 16).startswith("5,0")


def test_a_row_the_chat_template_refuses_is_removed_with_its_words(tmp_path):
    """Regression: a system turn under a template that refuses one (Gemma's) raised out of
    the data stage: "this is a bug" instead of one removed row."""
    from tiny import build_tokenizer

    from tunesmith.data.tokens import token_encoder
    from tunesmith.models.encode import CHATML

    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + CHATML)
    lines = [row(q, a) for q, a in GOOD[:3]] + [row(*GOOD[3], system="You are terse.")]
    path = tmp_path / "system.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = clean_file(path, encode=token_encoder(tokenizer), max_seq_len=256)
    assert [r["line"] for r in result.kept] == [1, 2, 3]
    assert result.removed[0]["line"] == 4
    assert result.removed[0]["reasons"] == [
        "template_error: the model's chat template refuses this row: System role not supported"]


def test_blocking_reasons_carry_counts_and_an_example_per_code(tmp_path):
    """Regression: "no row is left to train on: see the reasons above", where `train` printed none."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": ""}\n' * 2 + '{"prompt": "p", "completion": 3}\n')
    (reason,) = clean_file(path).report["blocking"]
    assert reason == ("no row is left to train on: all 3 rows were removed: empty_field 2 (line 1: empty_field: "
                      "response), wrong_type 1 (line 3: wrong_type: completion is int, expected a string)")
