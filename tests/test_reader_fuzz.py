"""Property tests for the example reader: no input bytes make it crash, every row is
accounted for exactly once, kept rows are always trainable, and everything it returns can
be written out as UTF-8 JSON by the later stages."""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import ROLES, read_examples
from tunesmith.errors import DataError

# A few seconds per test in the suite; TUNESMITH_FUZZ_EXAMPLES=2000 for a deeper run.
FUZZ = settings(max_examples=int(os.environ.get("TUNESMITH_FUZZ_EXAMPLES", "80")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# Text that includes lone surrogates now and then: json.dumps writes them as \udXXX escapes.
# (st.text leaves surrogates out by default, hence lists of characters.)
chars = st.one_of(st.characters(), st.sampled_from("\n\r\t\x00\"\\{}[],:\ufeff "), st.characters(categories=["Cs"]))
texts = st.lists(chars, max_size=12).map("".join)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12
)
roles = st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "function_call", ""])
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts | json_values}),
                 max_size=3)
turn = st.dictionaries(
    st.sampled_from(["role", "content", "from", "value", "name", "weight"]),
    roles | texts | json_values | parts,
    max_size=4,
)
field = texts | json_values
row_like = st.one_of(
    st.fixed_dictionaries({"instruction": field, "response": field},
                          optional={"input": field, "system": field, "category": field}),
    st.fixed_dictionaries({"instruction": field, "output": field}, optional={"input": field, "system": field}),
    st.fixed_dictionaries({"prompt": field, "completion": field}, optional={"category": field}),
    st.fixed_dictionaries({"messages": st.lists(turn, max_size=4) | field}),
    st.fixed_dictionaries({"conversations": st.lists(turn, max_size=4) | field}, optional={"system": field}),
    st.dictionaries(texts, json_values, max_size=4),
    json_values,
)
valid_row = st.builds(
    lambda p, c: {"prompt": p or "p", "completion": c or "c"},
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20).filter(lambda s: s.strip()),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20).filter(lambda s: s.strip()),
)


def dumped(value) -> str:
    # ensure_ascii: lone surrogates must become escapes to be written as UTF-8 at all
    return json.dumps(value, ensure_ascii=True)


line = st.one_of(
    valid_row.map(dumped),
    row_like.map(dumped),
    row_like.map(dumped).flatmap(lambda s: st.integers(0, len(s)).map(lambda n: s[:n])),  # truncated
    # garbage; no lone surrogates: a line is written as UTF-8, which cannot hold them (st.text
    # leaves them out by default, but not when given an alphabet of st.characters)
    st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=40),
    st.integers(1, 1500).map(lambda n: "[" * n),  # deep nesting, closed or not
    st.integers(1, 1500).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 1500).map(lambda n: '{"a":' * n),
    st.integers(4200, 4400).map(lambda n: "9" * n),  # the integer digit limit
    st.just(""),
    st.just("  \t"),
)


def read_bytes(data: bytes, name: str = "d.jsonl"):
    """read_examples on `data`; None when it raised DataError (the one allowed exception)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return read_examples(path)
        except DataError:
            return None


def check_rows(result) -> None:
    for row in result.kept:
        assert set(row) <= {"line", "messages", "category"}
        assert isinstance(row["line"], int) and row["line"] >= 1
        assert row["messages"] and all(set(m) == {"role", "content"} for m in row["messages"])
        assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in row["messages"])
        assistant = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert assistant and all(content.strip() for content in assistant)
    for row in result.removed:
        assert set(row) == {"line", "reasons", "raw"} and row["reasons"] and isinstance(row["raw"], str)
        assert all(reason.split(":", 1)[0].isidentifier() for reason in row["reasons"])
    for row in result.kept + result.removed:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # what later stages write
    assert sum(result.formats.values()) == len(result.kept)
    assert result.file_format in ("jsonl", "json", "csv")


def non_blank_lines(text: str) -> list[int]:
    return [i for i, piece in enumerate(text.split("\n"), start=1) if piece.strip()]


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.txt"]))
def test_random_bytes_never_crash(data, name):
    result = read_bytes(data, name)
    if result is not None:
        check_rows(result)


@FUZZ
@given(st.lists(line, max_size=12), st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans())
def test_jsonl_mix_every_line_once(lines, newline, bom, final_newline):
    text = newline.join(lines) + (newline if final_newline else "")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    result = read_bytes(data)
    if result is None:
        return
    check_rows(result)
    if result.file_format == "jsonl":
        seen = sorted(r["line"] for r in result.kept + result.removed)
        assert seen == non_blank_lines(text)


@FUZZ
@given(valid_row, st.lists(line, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_jsonl_starting_with_a_valid_row_is_read_as_jsonl(first, lines, newline):
    text = newline.join([dumped(first), *lines])
    result = read_bytes(text.encode("utf-8"))
    assert result is not None and result.file_format == "jsonl"
    check_rows(result)
    assert result.kept[0]["line"] == 1
    assert sorted(r["line"] for r in result.kept + result.removed) == non_blank_lines(text)


@settings(max_examples=15, deadline=None)
@given(st.integers(200_000, 2_000_000), st.integers(0, 3))
def test_huge_lines(size, kind):
    big = "x" * size
    line = [dumped({"prompt": "p", "completion": big}), "[" * size, big, '"' + big][kind]
    result = read_bytes((dumped({"prompt": "a", "completion": "b"}) + "\n" + line + "\n").encode())
    check_rows(result)
    assert len(result.kept) + len(result.removed) == 2


@FUZZ
@given(st.lists(row_like | valid_row, min_size=1, max_size=6), st.sampled_from([None, 0, 1, 2, 4]))
def test_json_arrays_give_each_element_its_start_line(elements, indent):
    text = json.dumps(elements, indent=indent)
    result = read_bytes(text.encode(), "d.json")
    if result is None:
        return
    check_rows(result)
    assert result.file_format == "json"
    if indent is None:
        expected = [1] * len(elements)
    else:  # "[" on line 1, then each element on as many lines as it takes on its own
        expected, line_no = [], 2
        for element in elements:
            expected.append(line_no)
            line_no += json.dumps(element, indent=indent).count("\n") + 1
    assert sorted(r["line"] for r in result.kept + result.removed) == expected


@FUZZ
@given(st.lists(row_like | valid_row, min_size=1, max_size=6), st.sampled_from([None, 2]), st.data())
def test_damaged_json_arrays_never_crash(elements, indent, data):
    text = json.dumps(elements, indent=indent)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 20)))
    damaged = text[:start] + data.draw(st.text(max_size=5)) + text[end:]
    result = read_bytes(damaged.encode("utf-8", "surrogatepass"), "d.json")
    if result is not None:
        check_rows(result)


csv_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=15)


@FUZZ
@given(st.sampled_from([("prompt", "completion"), ("instruction", "response", "category"),
                        ("instruction", "input", "output")]),
       st.data(), st.sampled_from(["\r\n", "\n"]))
def test_csv_records_keep_their_start_lines(header, data, terminator):
    records = data.draw(st.lists(st.tuples(*[csv_text] * len(header)), min_size=1, max_size=8))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=terminator, quoting=data.draw(st.sampled_from([csv.QUOTE_MINIMAL,
                                                                                          csv.QUOTE_ALL])))
    writer.writerow(header)
    expected, line_no = [], 2
    for record in records:
        piece = io.StringIO(newline="")
        # csv.writer leaves a lone \r unquoted (a reader takes it as a line end): quote those.
        quoting = csv.QUOTE_ALL if any("\r" in value for value in record) else writer.dialect.quoting
        csv.writer(piece, lineterminator=terminator, quoting=quoting).writerow(record)
        out.write(piece.getvalue())
        if any(value.strip() for value in record):  # all-blank records are skipped, as blank lines
            expected.append(line_no)
        line_no += piece.getvalue().count("\n")
    result = read_bytes(out.getvalue().encode("utf-8"), "d.csv")
    if result is None:
        return
    check_rows(result)
    assert result.file_format == "csv"
    assert sorted(r["line"] for r in result.kept + result.removed) == expected
    by_line = dict(zip(expected, [r for r in records if any(v.strip() for v in r)]))
    for row in result.kept:
        fields = dict(zip(header, by_line[row["line"]]))
        answer = fields.get("completion", fields.get("response", fields.get("output")))
        assert row["messages"][-1] == {"role": "assistant", "content": answer}
