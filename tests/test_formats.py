import json

import pytest

from tunesmith.data.formats import read_examples, split_rows
from tunesmith.errors import UsageError


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
    with pytest.raises(UsageError, match="no examples"):
        read_examples(tmp_path / "empty.jsonl")


def test_split_is_seeded_and_disjoint():
    rows = [{"line": i} for i in range(100)]
    train, val = split_rows(rows, 0.1, seed=3, max_val=50)
    assert len(val) == 10 and len(train) == 90
    assert {r["line"] for r in train}.isdisjoint(r["line"] for r in val)
    assert split_rows(rows, 0.1, seed=3, max_val=50) == (train, val)
    assert split_rows(rows, 0.1, seed=4, max_val=50)[1] != val
    assert len(split_rows(rows, 0.5, seed=3, max_val=7)[1]) == 7
