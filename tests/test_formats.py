import json
import re

import pytest

from tunesmith.data.formats import read_examples
from tunesmith.errors import DataError, UsageError


def test_every_line_is_kept_or_removed_with_a_reason(tmp_path):
    lines = [
        json.dumps({"instruction": "Say hi", "response": "hi"}),
        json.dumps({"instruction": "Add", "input": "2+2", "response": "4", "system": "Be brief", "category": "math"}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        "",
        '{"instruction": "broken",',
        json.dumps({"instruction": "x", "response": ""}),
        json.dumps({"instruction": "x", "response": 3}),
        json.dumps({"prompt": "x", "answer": "y"}),
        json.dumps({"messages": [{"role": "bot", "content": "b"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"instruction": "\xff", "response": "x"}\n')
    result = read_examples(path)
    assert [r["line"] for r in result.kept] == [1, 2, 3]
    assert result.formats == {"instruction": 2, "messages": 1}
    assert result.kept[1]["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Add\n\n2+2"},
        {"role": "assistant", "content": "4"},
    ]
    assert result.kept[1]["category"] == "math"
    removed = {r["line"]: r["reasons"][0] for r in result.removed}
    assert removed[5].startswith("invalid_json: Expecting")
    assert removed[6] == "empty_field: response"
    assert removed[7] == "wrong_type: response is int, expected a string"
    assert removed[8].startswith("unknown_format: keys answer, prompt")
    assert removed[9].startswith("unknown_role: messages[0].role = 'bot'")
    assert removed[10] == "no_assistant_turn: nothing to train on"
    assert removed[11].startswith("not_object")
    assert removed[12].startswith("invalid_utf8: byte 18")
    # every non-blank line exactly once
    assert sorted([r["line"] for r in result.kept] + list(removed)) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    assert result.reasons()["empty_field"] == 1


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_examples(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------- row formats


def _read_lines(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return read_examples(path)


def _removed_reasons(result):
    return {r["line"]: r["reasons"][0] for r in result.removed}


def test_alpaca_rows(tmp_path):
    result = _read_lines(tmp_path, [
        {"instruction": "Add", "input": "", "output": "4", "text": "ignored"},
        {"instruction": "Add", "input": "2+2", "output": "4", "system": "Be brief"},
        {"instruction": "x", "output": " "},
        {"instruction": "x", "output": 1},
        {"instruction": "", "output": "y"},
    ])
    assert result.formats == {"alpaca": 2}
    assert result.kept[0]["messages"] == [{"role": "user", "content": "Add"}, {"role": "assistant", "content": "4"}]
    assert result.kept[1]["messages"][0] == {"role": "system", "content": "Be brief"}
    assert result.kept[1]["messages"][1] == {"role": "user", "content": "Add\n\n2+2"}
    assert _removed_reasons(result) == {
        3: "empty_field: output",
        4: "wrong_type: output is int, expected a string",
        5: "empty_field: instruction",
    }


def test_prompt_completion_rows(tmp_path):
    result = _read_lines(tmp_path, [
        {"prompt": "Capital of France?", "completion": "Paris", "category": "geo"},
        {"prompt": "", "completion": "x"},
        {"prompt": "q", "completion": ["a"]},
        {"prompt": "q"},
    ])
    assert result.formats == {"prompt_completion": 1}
    assert result.kept == [{
        "line": 1, "category": "geo",
        "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
    }]
    reasons = _removed_reasons(result)
    assert reasons[2] == "empty_field: prompt"
    assert reasons[3] == "wrong_type: completion is list, expected a string"
    assert reasons[4].startswith("unknown_format: keys prompt; expected instruction+response, ")


def test_openai_messages_rows(tmp_path):
    user = {"role": "user", "content": "hi"}
    result = _read_lines(tmp_path, [
        {"messages": [
            {"role": "system", "content": "S", "name": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c", "weight": 1},
        ]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                      {"role": "assistant", "content": "c"}]},
        {"messages": [user, {"role": "assistant", "content": 3}]},
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "c"}]},
        {"messages": [user, {"role": "assistant", "content": "c"}, {"role": "tool", "content": "x"}]},
        {"messages": []},
        {"messages": [user, {"role": "assistant", "content": "  "}]},
        {"messages": [user, {"role": "assistant", "content": [{"type": "text", "text": 5}]}]},
        {"messages": "hi"},
        {"messages": [user, {"role": "assistant"}]},
    ])
    assert result.formats == {"messages": 1}
    assert result.kept[0]["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"},
    ]
    assert _removed_reasons(result) == {
        2: "wrong_type: messages[0].content[0] is a part of type 'image_url', expected type 'text'",
        3: "wrong_type: messages[1].content is int, expected a string or a list of text parts",
        4: "missing_field: messages[0].role",
        5: "unknown_role: messages[2].role = 'tool'; allowed: system, user, assistant",
        6: "empty_field: messages",
        7: "empty_field: messages[1].content (assistant)",
        8: "wrong_type: messages[1].content[0].text is int, expected a string",
        9: "wrong_type: messages is str, expected a list",
        10: "missing_field: messages[1].content",
    }


def test_sharegpt_rows(tmp_path):
    result = _read_lines(tmp_path, [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "a"},
                           {"from": "gpt", "value": "b"}], "category": "chat"},
        {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "system": "T"},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "gpt", "value": 3}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]},
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "b"}]},
        {"conversations": ["hi"]},
    ])
    assert result.formats == {"sharegpt": 2}
    assert result.kept[0]["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
    ]
    assert result.kept[0]["category"] == "chat"
    assert result.kept[1]["messages"][0] == {"role": "system", "content": "T"}
    assert _removed_reasons(result) == {
        3: "wrong_type: conversations[2].value is int, expected a string",
        4: "unknown_role: conversations[1].from = 'function_call'; allowed: human, gpt, system (or user, assistant)",
        5: "no_assistant_turn: nothing to train on",
        6: "empty_field: conversations[1].value (assistant)",
        7: "missing_field: conversations[0].value",
        8: "wrong_type: conversations[0] is str, expected an object",
    }


def test_format_precedence_and_non_string_category(tmp_path):
    result = _read_lines(tmp_path, [
        {"instruction": "a", "response": "r", "output": "o", "category": 3},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "m"}], "prompt": "p",
         "completion": "c"},
    ])
    assert result.formats == {"instruction": 1, "messages": 1}
    assert result.kept[0]["messages"][-1]["content"] == "r"
    assert "category" not in result.kept[0]


# ---------------------------------------------------------------- robustness


def test_invalid_json_in_jsonl_names_line_and_column(tmp_path):
    result = _read_lines(tmp_path, [
        {"prompt": "a", "completion": "b"},
        '{"prompt": "a" "completion": "b"}',
        '{"prompt": "a", "completion": "b"} x',
        '{"prompt": "a\tb", "completion": "b"}',
        "[" * 100_000,
        '{"prompt": 1' + "0" * 5000 + "}",
    ])
    assert _removed_reasons(result) == {
        2: "invalid_json: Expecting ',' delimiter at line 2 column 16",
        3: "invalid_json: Extra data at line 3 column 36",
        4: "invalid_json: Invalid control character at line 4 column 14",
        5: "invalid_json: nested too deeply",
        6: "invalid_json: Exceeds the limit (4300 digits) for integer string conversion",
    }


def test_bom_crlf_blank_lines_and_no_final_newline(tmp_path):
    row = json.dumps({"prompt": "a", "completion": "b"}).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + row + b"\r\n\r\n   \t\r\n" + row + b"\r\n\xef\xbb\xbf" + row)
    result = read_examples(path)
    assert [r["line"] for r in result.kept] == [1, 4, 5]
    assert result.removed == [] and result.file_format == "jsonl"


def test_lone_surrogates_are_removed_not_kept(tmp_path):
    result = _read_lines(tmp_path, [
        '{"prompt": "a\\ud800", "completion": "b"}',
        '{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "b"}]}',
        '{"prompt": "a", "completion": "b", "category": "\\ud800"}',
        '{"prompt": "ok \\ud83d\\ude00", "completion": "b"}',  # a proper pair is one emoji
        '{"\\ud800": 1}',
    ])
    reasons = _removed_reasons(result)
    assert reasons[1] == "invalid_utf8: lone surrogate in prompt"
    assert reasons[2] == "invalid_utf8: lone surrogate in messages[0].content"
    assert reasons[3] == "invalid_utf8: lone surrogate in category"
    assert reasons[5] == "unknown_format: keys \\ud800; expected " + (
        "instruction+response, instruction+output (alpaca), prompt+completion, messages, conversations (ShareGPT)")
    assert result.kept[0]["messages"][0]["content"] == "ok \U0001F600"
    for row in result.kept + result.removed:
        json.dumps(row, ensure_ascii=False).encode("utf-8")


def test_huge_line(tmp_path):
    big = "x" * 10_000_000
    result = _read_lines(tmp_path, [{"prompt": "p", "completion": big}, {"prompt": big}])
    assert result.kept[0]["messages"][1]["content"] == big
    assert result.removed[0]["reasons"][0].startswith("unknown_format: keys prompt;")


# ---------------------------------------------------------------- file formats

ROWS = [
    {"instruction": "a", "response": "b"},
    {"instruction": "c", "input": "", "output": "d"},
    {"prompt": "p", "completion": "q", "category": "k"},
]


def test_pretty_printed_json_array_gives_start_lines(tmp_path):
    for name in ("d.json", "d.jsonl", "d.txt"):  # the content decides, not the extension
        path = tmp_path / name
        path.write_text(json.dumps(ROWS, indent=2))
        result = read_examples(path)
        assert result.file_format == "json"
        assert [r["line"] for r in result.kept] == [2, 6, 11]
        assert result.formats == {"instruction": 1, "alpaca": 1, "prompt_completion": 1}


def test_json_array_on_one_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS) + "\n")
    result = read_examples(path)
    assert (result.file_format, [r["line"] for r in result.kept]) == ("json", [1, 1, 1])


def test_broken_json_array_element_is_removed_and_reading_resumes(tmp_path):
    text = json.dumps(ROWS + ROWS, indent=2)
    text = text.replace('"c"', '"c', 1)  # element 2 (line 6) now has an unterminated string
    path = tmp_path / "d.json"
    path.write_text(text[:-20])  # and the last element (line 25) is cut off
    result = read_examples(path)
    assert [r["line"] for r in result.kept] == [2, 11, 16, 20]
    assert _removed_reasons(result) == {
        6: "invalid_json: Invalid control character at line 7 column 23",
        25: "invalid_json: Unterminated string starting at line 28 column 5",
    }
    assert result.removed[0]["raw"] == '{\n    "instruction": "c,\n    "input": "",\n    "output": "d"\n  }'


def test_json_array_delimiter_and_closing_errors(tmp_path):
    text = json.dumps(ROWS, indent=2).replace("},", "}", 1)
    path = tmp_path / "d.json"
    path.write_text(text + "\nleftover\n")
    result = read_examples(path)
    assert [r["line"] for r in result.kept] == [2, 6, 11]
    assert _removed_reasons(result) == {
        6: "invalid_json: Expecting ',' delimiter at line 6 column 3",
        17: "invalid_json: extra data after the closing ']' at line 17 column 1",
    }
    path.write_text(json.dumps(ROWS, indent=2)[:-1])
    assert _removed_reasons(read_examples(path)) == {
        15: "invalid_json: the array is not closed: expected ']' at line 15 column 4"}


def test_stream_of_pretty_printed_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n".join(json.dumps(r, indent=2) for r in ROWS))
    result = read_examples(path)
    assert (result.file_format, [r["line"] for r in result.kept]) == ("json", [1, 5, 10])


def test_jsonl_with_a_broken_first_line_stays_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    for first in ('{"instruction": ', "[1, 2"):
        path.write_text(first + "\n" + "\n".join(json.dumps(r) for r in ROWS) + "\n")
        result = read_examples(path)
        assert result.file_format == "jsonl"
        assert [r["line"] for r in result.kept] == [2, 3, 4]
        assert result.removed[0]["line"] == 1 and result.removed[0]["reasons"][0].startswith("invalid_json:")


def test_csv_with_quoted_multiline_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'\xef\xbb\xbfinstruction,response,category\r\n'
        b'"Write a haiku\r\nabout ""rain""",Drops on the roof,poem\r\n'
        b'\r\n'
        b',,\r\n'
        b'Say hi,hi,greet\r\n'
        b'only two,fields\r\n'
        b'"bad"quote,x,y\r\n'
        b'Empty answer,,z\r\n'
        b'last,"multi\nline\nanswer",k'
    )
    result = read_examples(path)
    assert result.file_format == "csv"
    assert [r["line"] for r in result.kept] == [2, 6, 10]
    assert result.kept[0]["messages"] == [
        {"role": "user", "content": 'Write a haiku\r\nabout "rain"'},
        {"role": "assistant", "content": "Drops on the roof"},
    ]
    assert result.kept[0]["category"] == "poem"
    assert result.kept[2]["messages"][1]["content"] == "multi\nline\nanswer"
    assert _removed_reasons(result) == {
        7: "invalid_csv: the record has 2 fields, the header has 3",
        8: "invalid_csv: ',' expected after '\"'",
        9: "empty_field: response",
    }


def test_csv_prompt_completion_with_tabs_and_no_csv_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("prompt\tcompletion\nq\ta\n")
    result = read_examples(path)
    assert (result.file_format, result.formats) == ("csv", {"prompt_completion": 1})
    assert "csv: 1 rows kept (prompt_completion 1), 0 removed" == result.describe()


# ---------------------------------------------------------------- files in another format


EXPECTED = ("Expected one of: instruction+response, instruction+output (alpaca), prompt+completion, messages, "
            "conversations (ShareGPT)")


def test_file_wholly_in_another_format_gets_one_usage_error(tmp_path):
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(5)) + "\n{broken\n")
    with pytest.raises(DataError) as e:
        read_examples(jsonl)
    assert str(e.value) == (
        f"{jsonl}: no row is in a known format; rows have keys answer, question. {EXPECTED}. "
        "Rename the keys, e.g. question -> prompt, answer -> completion."
    )
    csv_file = tmp_path / "qa.csv"
    csv_file.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match="rows have keys answer, question"):
        read_examples(csv_file)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}, indent=2))
    with pytest.raises(DataError, match="rows have keys data.*If the rows are inside 'data'"):
        read_examples(wrapped)


def test_files_that_are_not_json_or_csv(tmp_path):
    cases = {
        "notes.txt": (b"Dear diary,\ntoday I trained a model.\n", "no row could be read as JSONL; line 1: invalid_json"),
        "d.parquet": (b"PAR1\x15\x04\x15", "the file is a Parquet file"),
        "d.jsonl.gz": (b"\x1f\x8b\x08\x00", "gzip-compressed"),
        "d.jsonl": ('{"prompt": "a", "completion": "b"}\n'.encode("utf-16"), "UTF-16 text"),
        "bytes.jsonl": (bytes(range(256)) * 4, "not UTF-8 text"),
        "numbers.jsonl": (b"1\n2\n[3]\n", "line 1: not_object"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=re.escape(message)):
            read_examples(tmp_path / name)


def test_rows_in_a_known_format_with_bad_fields_are_returned_not_raised(tmp_path):
    result = _read_lines(tmp_path, [{"prompt": "a", "completion": ""}, {"question": "a", "answer": "b"}])
    assert result.kept == [] and result.reasons() == {"empty_field": 1, "unknown_format": 1}


def test_reason_summary_counts_codes_most_frequent_first_with_one_example_each():
    from tunesmith.data.formats import summarise_reasons

    removed = [{"line": n, "reasons": [reason]} for n, reason in enumerate(
        ["empty_field: response", "invalid_json: Expecting value at line 2 column 1", "empty_field: instruction",
         "not_object: expected a JSON object, got list", "wrong_type: input is int, expected a string",
         "unknown_role: messages[0].role = 'bot'; allowed: system, user, assistant" + " x" * 80], start=1)]
    assert summarise_reasons(removed, codes=3) == (
        "empty_field 2 (line 1: empty_field: response), invalid_json 1 (line 2: invalid_json: Expecting value at line "
        "2 column 1), not_object 1 (line 4: not_object: expected a JSON object, got list), and 2 more codes")
    clipped = summarise_reasons(removed[5:])  # an example is clipped to 90 characters, not the whole row
    assert clipped == f"unknown_role 1 (line 6: {removed[5]['reasons'][0][:89]}…)"
