"""`tunesmith data ...` end to end through the real CLI, as a user runs it."""

import json

import pytest

from test_clean import write_planted
from test_train_cli import tunesmith


def test_check_prints_a_report_and_exits_0_when_trainable(tmp_path):
    path, _ = write_planted(tmp_path)
    result = tunesmith("data", "check", path)
    assert "15 rows: 8 kept, 7 removed" in result.stdout
    assert "line 7: duplicate: same as line 1" in result.stdout
    assert "PII (redact): EMAIL 1, PHONE 1" in result.stdout
    assert "trainable" in result.stdout
    assert not list(tmp_path.glob("*.json*"))[1:]  # check writes nothing


def test_check_json_and_exit_1_when_not_trainable(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n{"oops\n{"oops\n')
    result = tunesmith("data", "check", path, "--json", check=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["trainable"] is False and report["reasons"] == {"invalid_json": 2}


def test_wholly_wrong_format_is_one_error_and_bad_flags_are_usage_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(5)))
    result = tunesmith("data", "check", path, check=False)
    assert result.returncode == 1 and result.stderr.count("error:") == 1  # data, not usage: gates a pipeline
    assert "question" in result.stderr
    good, _ = write_planted(tmp_path)
    bad_flag = tunesmith("data", "check", good, "--pii", "hide", check=False)
    assert bad_flag.returncode == 2 and "--pii hide: clean.pii: not allowed" in bad_flag.stderr
    bad_code = tunesmith("data", "check", good, "--drop", "refusals", check=False)
    assert bad_code.returncode == 2 and "unknown code 'refusals'" in bad_code.stderr
    missing = tunesmith("data", "check", tmp_path / "none.jsonl", check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_clean_writes_four_files_and_loses_no_line(tmp_path):
    path, expected = write_planted(tmp_path)
    out = tmp_path / "out"
    tunesmith("data", "clean", path, "--out", out, "--fix-encoding", "--drop", "refusal")
    kept = [json.loads(line) for line in (out / "clean.jsonl").read_text().splitlines()]
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert sorted([r["line"] for r in kept] + [r["line"] for r in removed]) == [n for n in range(1, 17) if n != 15]
    assert all(set(r) >= {"line", "messages"} for r in kept)
    assert all(set(r) == {"line", "reasons", "raw"} for r in removed)
    assert report["fixes"] == {"control_chars": 1, "mojibake": 1} and report["reasons"]["refusal"] == 1
    assert (report["input_rows"], report["kept"], report["removed"]) == (15, len(kept), len(removed))
    assert "<html" in (out / "report.html").read_text()


def test_split_through_the_cli(tmp_path):
    path, _ = write_planted(tmp_path)
    out = tmp_path / "split"
    result = tunesmith("data", "split", path, "--out", out, "--val-fraction", "0.25", "--seed", "1")
    assert "val 4 rows" in result.stdout
    assert len((out / "val.jsonl").read_text().splitlines()) == 4


def test_preview_marks_trained_tokens(tmp_path, tiny_model_dir):
    path, _ = write_planted(tmp_path)
    result = tunesmith("data", "preview", path, "--model", tiny_model_dir, "-n", "2")
    assert result.stdout.count("EOS trained") == 2
    assert "⟦Bonjour" not in result.stdout  # only the first two rows are shown
    assert "⟦The team agreed" in result.stdout and "<|im_end|>⟧" in result.stdout


@pytest.mark.slow
def test_clean_with_pii_ner_redacts_names_and_addresses(tmp_path):
    """Names need NER (the optional extra `ner`, which make test installs); structured PII does not."""
    path = tmp_path / "names.jsonl"
    path.write_text(
        json.dumps({"instruction": "Draft a note to the team.", "response": "Hi all, Maria Gonzalez will cover "
                    "support while John Smith is away; ship returns to 221B Baker Street."}) + "\n"
        + json.dumps({"instruction": "What is the capital of Australia?",
                      "response": "Canberra is the capital of Australia."}) + "\n")
    out = tmp_path / "out"
    tunesmith("data", "clean", path, "--out", out, "--pii-ner")
    kept = [json.loads(line) for line in (out / "clean.jsonl").read_text().splitlines()]
    assert kept[0]["messages"][1]["content"] == (
        "Hi all, <PERSON> will cover support while <PERSON> is away; ship returns to <LOCATION>.")
    assert kept[1]["messages"][1]["content"] == "Canberra is the capital of Australia."
    assert json.loads((out / "report.json").read_text())["pii"] == {"PERSON": 2, "LOCATION": 1}
    refused = tunesmith("data", "check", path, "--set", "clean.pii_types=[PERSON]", check=False)
    assert refused.returncode == 2 and "need clean.pii_ner: true" in refused.stderr
