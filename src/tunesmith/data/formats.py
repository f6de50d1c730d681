"""Read a file of examples and normalise every row to the chat format.

Every row ends up either kept, as `{"line", "messages", "category"?}`, or removed, as
`{"line", "reasons", "raw"}`: nothing is dropped silently. `line` is the line of the file
where the row starts. Messages have only the roles system, user and assistant.

Row formats, detected per row (the name is what `ReadResult.formats` counts):

- `instruction`: `instruction` + `response`, optional `input` (appended to the
  instruction after a blank line) and `system`.
- `alpaca`: `instruction` + `output`, optional `input` and `system`.
- `prompt_completion`: `prompt` + `completion`, both strings: one user and one assistant turn.
- `messages` (OpenAI chat): `messages: [{"role", "content"}, ...]`. Other keys of a message
  (`name`, `weight`, ...) are dropped; `content` may also be a list of
  `{"type": "text", "text": ...}` parts, which are concatenated.
- `sharegpt`: `conversations: [{"from", "value"}, ...]` with `from` one of human, gpt,
  system (user and assistant too); the role/content variant of `conversations` is accepted,
  and so is a top-level `system` string (LLaMA-Factory's ShareGPT), put first.

`category` (a string) is carried over. When a row has the keys of several formats, the
first in the order messages, conversations, instruction+response, instruction+output,
prompt+completion wins.

File formats, detected from the content (the extension only breaks ties): JSONL; a JSON
array of objects, on one line or pretty-printed (also a stream of concatenated objects,
as `jq` prints them); CSV with a header row naming the fields above (a comma, tab or
semicolon between fields; quoted fields may span lines). A UTF-8 BOM, CRLF line ends, blank
lines and a last line without a newline are all fine.

A broken element of a JSON array is reported as one removed row and reading resumes at the
next line that starts an element at the same indentation as the last good one; in a
one-line array everything from the broken element on is that one removed row.

Reason codes: invalid_utf8, invalid_json, invalid_csv, not_object, unknown_format,
missing_field, empty_field, wrong_type, unknown_role, no_assistant_turn. Each reason reads
"code: detail" and names the field. A file in which no row could be read at all (another
format, other key names, not text) raises one DataError that says what was found and
what is expected, instead of returning a removed row per line.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tunesmith.errors import DataError, UsageError
from tunesmith.io import require_file

ROLES = ("system", "user", "assistant")
# Fields carried from the input row to the normalised one when present.
PASSTHROUGH = ("category",)
# ShareGPT's speaker names; user and assistant appear in converted datasets too.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
EXPECTED_FORMATS = (
    "instruction+response, instruction+output (alpaca), prompt+completion, messages, conversations (ShareGPT)"
)
# Header names that mark a first line as a CSV header rather than a stray line of text.
CSV_FIELDS = frozenset(
    {"instruction", "response", "output", "input", "system", "prompt", "completion", "category"}
)
# Reasons that say a row is not in any format we read, as opposed to a row in a known
# format with a bad field. A file with only these gets one DataError instead of rows.
UNREADABLE_CODES = frozenset({"invalid_utf8", "invalid_json", "invalid_csv", "not_object", "unknown_format"})

_DECODER = json.JSONDecoder()
_JSON_WS = re.compile(r"[ \t\n\r]*")
_ABSENT = object()


@dataclass
class ReadResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    file_format: str = "jsonl"  # "jsonl" | "json" | "csv"
    # The source text of each kept row, in step with `kept`: a later stage that removes the
    # row shows it as written, not re-serialised.
    kept_raw: list[str] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        return count_reasons(row["reasons"] for row in self.removed)

    def describe(self) -> str:
        """One line for the user: the file format, the row formats found, what was removed."""
        formats = ", ".join(f"{name} {n}" for name, n in sorted(self.formats.items())) or "none"
        return f"{self.file_format}: {len(self.kept)} rows kept ({formats}), {len(self.removed)} removed"


def reason_code(reason: str) -> str:
    """"near_duplicate: line 5 (similarity 0.81)" -> "near_duplicate"."""
    return reason.split(":", 1)[0]


def count_reasons(reason_lists: Iterable[list[str]]) -> dict[str, int]:
    """Rows per code, sorted by code; a row with one code twice counts once."""
    counts: Counter[str] = Counter()
    for reasons in reason_lists:
        counts.update({reason_code(r) for r in reasons})
    return dict(sorted(counts.items()))


def summarise_reasons(removed: Sequence[dict[str, Any]], *, codes: int = 4, width: int = 90) -> str:
    """Rows per code, the most frequent first, each with its first row as an example, short
    enough for a one-line message that must stand on its own (nothing printed above it):
    "empty_field 5 (line 1: empty_field: response), missing_field 1 (line 6: ...)"."""
    counts = count_reasons(r["reasons"] for r in removed)
    first: dict[str, str] = {}
    for row in removed:
        for reason in row["reasons"]:
            first.setdefault(reason_code(reason), f"line {row['line']}: {_clip(reason, width)}")
    ranked = sorted(counts, key=lambda code: (-counts[code], code))
    parts = [f"{code} {counts[code]} ({first[code]})" for code in ranked[:codes]]
    if len(ranked) > codes:
        parts.append(f"and {len(ranked) - codes} more code{'s' * (len(ranked) - codes > 1)}")
    return ", ".join(parts) or "none"


class RowError(ValueError):
    """A row that cannot be trained on; the message starts with a reason code.

    `keys` is set for unknown_format: the row's keys, so that a file whose rows all have
    other keys can be reported once, naming them.
    """

    def __init__(self, message: str, keys: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.keys = keys


# ---------------------------------------------------------------- reading a file


def read_examples(path: str | Path) -> ReadResult:
    path = require_file(path, "data file")
    data = _read_bytes(path)
    _reject_known_binary(path, data)
    text, bad_bytes = _decode(data)
    rows = _read_text(path, text, bad_bytes)
    _raise_if_nothing_readable(path, rows)
    return rows.result


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a file that changed between the check and the read (removed,
    replaced by a folder, its mode changed) gets the same one-line message as up front."""
    try:
        return path.read_bytes()
    except OSError as e:
        require_file(path, "data file")  # names what changed, when it can be seen
        raise UsageError(f"{path}: data file cannot be read ({e.strerror or e}): check it and run again") from None


class _Rows:
    """Collects kept and removed rows for one file, and what the reports at the end need."""

    def __init__(self, file_format: str, bad_bytes: bool) -> None:
        self.result = ReadResult(file_format=file_format)
        self.bad_bytes = bad_bytes
        self.unknown_keys: Counter[tuple[str, ...]] = Counter()
        self.syntax_errors = 0

    def add(self, line: int, value: Any, raw: str) -> None:
        if self.bad_bytes and _has_surrogate(raw):
            self.remove(line, _bad_byte_reason(raw), raw, syntax=True)
            return
        try:
            row, fmt = normalise_row(value)
        except RowError as e:
            if e.keys is not None:
                self.unknown_keys[e.keys] += 1
            self.remove(line, str(e), raw)
            return
        self.result.kept.append({"line": line, **row})
        self.result.kept_raw.append(raw.rstrip("\r\n"))
        formats = self.result.formats
        formats[fmt] = formats.get(fmt, 0) + 1

    def remove(self, line: int, reason: str, raw: str, syntax: bool = False) -> None:
        self.syntax_errors += syntax
        self.result.removed.append({"line": line, "reasons": [reason], "raw": _printable(raw.rstrip("\r\n"))})


def _reject_known_binary(path: Path, data: bytes) -> None:
    """Files that are obviously not text get a message naming what they are."""
    signatures = (
        (b"PAR1", "a Parquet file", "convert it, e.g. pandas.read_parquet(f).to_json(out, orient='records', lines=True)"),
        (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
        (b"PK\x03\x04", "a ZIP archive (or an .xlsx workbook)", "unzip it, or save the sheet as CSV"),
        (b"\xd0\xcf\x11\xe0", "an old Office file (.xls)", "save the sheet as CSV"),
        (b"ARROW1", "an Arrow file", "convert it to JSONL"),
        (b"SQLite format 3\x00", "an SQLite database", "export the table as JSONL or CSV"),
        (codecs.BOM_UTF16_LE, "UTF-16 text", "save it as UTF-8"),
        (codecs.BOM_UTF16_BE, "UTF-16 text", "save it as UTF-8"),
    )
    for magic, what, fix in signatures:
        if data.startswith(magic):
            raise DataError(f"{path}: the file is {what}, not JSONL, JSON or CSV text; {fix}")


def _decode(data: bytes) -> tuple[str, bool]:
    """(text, whether some bytes are not UTF-8).

    Bytes that are not UTF-8 become lone surrogates (surrogateescape) so that the rest of the
    file still reads; the rows that hold them are removed as invalid_utf8.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text, bad_bytes = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, bad_bytes = data.decode("utf-8", "surrogateescape"), True
    return text, bad_bytes


def _read_text(path: Path, text: str, bad_bytes: bool) -> _Rows:
    first = re.search(r"\S", text)
    if first is None:
        raise DataError(f"{path}: the file has no examples")
    start = first.start()
    first_line = _line_from(text, start)
    suffix = path.suffix.lower()
    if first_line[0] in "[{":
        if not _parses_alone(first_line):
            return _read_multiline_json(text, bad_bytes, start, suffix)
        rest = start + len(first_line)
        if first_line[0] == "[" and re.compile(r"\s*\Z").match(text, rest) is not None:
            return _read_json_document(text, bad_bytes, start)  # a JSON array on one line
        return _read_jsonl(text, bad_bytes)
    delimiter = _csv_delimiter(first_line, suffix)
    if delimiter is None and "\n" not in text and "\r" in text:
        # Old Mac line ends (\r alone), which some spreadsheet exports still write.
        mac_text = text.replace("\r", "\n")
        delimiter = _csv_delimiter(_line_from(mac_text, start), suffix)
        if delimiter is not None:
            text = mac_text
    if delimiter is not None:
        return _read_csv(path, text, bad_bytes, delimiter)
    return _read_jsonl(text, bad_bytes)


def _line_from(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _parses_alone(line: str) -> bool:
    try:
        _DECODER.decode(line)
    except (ValueError, RecursionError):
        return False
    return True


def _read_multiline_json(text: str, bad_bytes: bool, start: int, suffix: str) -> _Rows:
    """A first line that is not a whole JSON value: a pretty-printed array (or stream of
    objects), or JSONL whose first line is broken. Read as a document; when that is not
    clean and the next line is a JSON object on its own (as in JSONL, never in a
    pretty-printed document of more than one element), read it as JSONL as well and keep
    the reading that keeps more rows."""
    document = _read_json_document(text, bad_bytes, start)
    if document.syntax_errors == 0 or not _second_line_is_object(text, start):
        return document
    lines = _read_jsonl(text, bad_bytes)
    kept_document, kept_lines = len(document.result.kept), len(lines.result.kept)
    if kept_document != kept_lines:
        return document if kept_document > kept_lines else lines
    prefer_document = suffix == ".json" or (text[start] == "[" and suffix not in (".jsonl", ".ndjson"))
    return document if prefer_document else lines


def _second_line_is_object(text: str, start: int) -> bool:
    match = re.compile(r"\n[ \t\r]*(\S[^\n]*)").search(text, start)
    if match is None:
        return False
    try:
        return isinstance(_DECODER.decode(match.group(1)), dict)
    except (ValueError, RecursionError):
        return False


def _raise_if_nothing_readable(path: Path, rows: _Rows) -> None:
    result = rows.result
    if result.kept:
        return
    if not result.removed:
        raise DataError(f"{path}: the file has no examples")
    codes = {row["reasons"][0].split(":", 1)[0] for row in result.removed}
    if not codes <= UNREADABLE_CODES:
        return  # rows in a known format with bad fields: the caller reports them
    if rows.unknown_keys:
        raise DataError(_unknown_format_message(path, rows.unknown_keys))
    first = result.removed[0]
    what = "the file is not UTF-8 text (save it as UTF-8) and " if rows.bad_bytes else ""
    raise DataError(
        f"{path}: {what}no row could be read as {result.file_format.upper()}; line {first['line']}: "
        f"{_clip(first['reasons'][0], 200)}. Expected JSONL (one JSON object per line), a JSON array "
        f"of objects, or CSV with a header row such as instruction,response; rows in one of: {EXPECTED_FORMATS}"
    )


def _unknown_format_message(path: Path, unknown_keys: Counter[tuple[str, ...]]) -> str:
    keys, _ = unknown_keys.most_common(1)[0]
    others = len(unknown_keys) - 1
    also = f" (and {others} other key set{'s' if others > 1 else ''})" if others else ""
    return (
        f"{path}: no row is in a known format; rows have keys {_keys_text(keys)}{also}. "
        f"Expected one of: {EXPECTED_FORMATS}. {_rename_hint(keys)}"
    )


def _rename_hint(keys: tuple[str, ...]) -> str:
    """A concrete fix for the key names datasets commonly use instead of ours."""
    if {"chosen", "rejected"} <= set(keys):
        return "These look like preference pairs (chosen/rejected); supervised fine-tuning needs one answer per row."
    prompt_like = ("question", "query", "problem", "user", "human", "input")
    answer_like = ("answer", "solution", "target", "reply", "assistant", "bot", "output")
    has_instruction = "instruction" in keys
    renames = []
    prompt_key = next((k for k in prompt_like if k in keys), None)
    if prompt_key and not has_instruction:
        renames.append(f"{prompt_key} -> prompt")
    answer_key = next((k for k in answer_like if k in keys), None)
    if answer_key:
        renames.append(f"{answer_key} -> {'response' if has_instruction else 'completion'}")
    if renames:
        return f"Rename the keys, e.g. {', '.join(renames)}."
    if len(keys) == 1:
        return f"If the rows are inside {_show(keys[0])}, save that list on its own as JSONL or a JSON array."
    return "Rename the keys to one of these formats."


# ---------------------------------------------------------------- JSONL


def _read_jsonl(text: str, bad_bytes: bool) -> _Rows:
    # The hot path (100k rows must read in about a second): one split, and per line the C
    # decoder through raw_decode, which skips json.loads' Python-level wrapper. Lines it
    # rejects go through the full decoder, which allows surrounding whitespace and gives
    # the error to report.
    rows = _Rows("jsonl", bad_bytes)
    raw_decode, decode, json_ws = _DECODER.raw_decode, _DECODER.decode, _JSON_WS.match
    for number, line in enumerate(text.split("\n"), start=1):
        if not line or line.isspace():
            continue
        if bad_bytes and _has_surrogate(line):
            rows.remove(number, _bad_byte_reason(line), line, syntax=True)
            continue
        if line[0] == "\ufeff":
            line = line[1:]  # the BOM of a file that was concatenated onto this one
        try:
            try:
                value, end = raw_decode(line)
            except (ValueError, RecursionError):
                value, end = decode(line), len(line)
            if end != len(line) and json_ws(line, end).end() != len(line):
                value = decode(line)  # raises "Extra data" with its column
        except json.JSONDecodeError as e:
            rows.remove(number, f"invalid_json: {_json_message(e)} at line {number} column {e.colno}", line, syntax=True)
            continue
        except (ValueError, RecursionError) as e:
            rows.remove(number, f"invalid_json: {_json_error(e)}", line, syntax=True)
            continue
        rows.add(number, value, line)
    return rows


def _json_message(e: json.JSONDecodeError) -> str:
    # Some of json's messages end in "at" ("Unterminated string starting at"); we add the place.
    return e.msg[:-3] if e.msg.endswith(" at") else e.msg


def _json_error(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, json.JSONDecodeError):
        return f"{_json_message(e)} at line {e.lineno} column {e.colno}"
    # e.g. an integer of more digits than Python converts; the part before ":" says which.
    return _clip(str(e).split(":", 1)[0], 120)


# ---------------------------------------------------------------- JSON array or stream


def _read_json_document(text: str, bad_bytes: bool, start: int) -> _Rows:
    rows = _Rows("json", bad_bytes)
    lines = _LineFinder(text)
    for begin, end, value, error in _json_items(text, start, lines):
        line = lines.line_at(begin)
        if error is None:
            rows.add(line, value, text[begin:end])
        else:
            rows.remove(line, f"invalid_json: {error}", text[begin:end].rstrip(" \t\r\n,"), syntax=True)
    return rows


class _LineFinder:
    """Line and column of offsets in `text`. Queries mostly move forward, so line numbers
    are counted from the previous query: linear over the file, never quadratic."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def line_at(self, pos: int) -> int:
        if pos >= self.pos:
            self.line += self.text.count("\n", self.pos, pos)
        else:
            self.line -= self.text.count("\n", pos, self.pos)
        self.pos = pos
        return self.line

    def column_at(self, pos: int) -> int:
        return pos - self.text.rfind("\n", 0, pos)  # 1-based


def _json_items(text: str, start: int, lines: _LineFinder) -> Iterator[tuple[int, int, Any, str | None]]:
    """(start, end, value, error) for each element of the array at `start`, or for each value
    of a stream of concatenated values. A span that cannot be parsed comes with `error`."""
    in_array = text[start] == "["
    pos = start + 1 if in_array else start
    size = len(text)
    last_good = -1  # start of the last value that parsed: its column is where values begin
    damaged = False  # after a first error, values are decoded from slices (see _decode_value)
    while True:
        content_end = pos  # the end of what was read: where a missing ']' belongs
        pos = _JSON_WS.match(text, pos).end()
        if pos >= size:
            if in_array:
                where = f"line {lines.line_at(content_end)} column {lines.column_at(content_end)}"
                yield content_end, content_end, None, f"the array is not closed: expected ']' at {where}"
            return
        if in_array and text[pos] == "]":
            tail = _JSON_WS.match(text, pos + 1).end()
            if tail < size:
                where = f"line {lines.line_at(tail)} column {lines.column_at(tail)}"
                yield tail, size, None, f"extra data after the closing ']' at {where}"
            return
        column = lines.column_at(last_good if last_good >= 0 else pos) if damaged else 0
        bound = _next_value_start(text, pos + 1, column) if damaged else -1
        value, end, error = _decode_value(text, pos, bound, lines)
        if error is not None:
            if not damaged:
                damaged = True
                bound = _next_value_start(text, pos + 1, lines.column_at(last_good if last_good >= 0 else pos))
            yield pos, bound, None, error
            if bound >= size:
                return  # this error already covers the end, an unclosed array included
            pos = bound
            continue
        last_good = pos
        yield pos, end, value, None
        pos = _JSON_WS.match(text, end).end()
        if not in_array or pos >= size or text[pos] == "]":
            pos = end
            continue
        if text[pos] == ",":
            pos += 1
            continue
        resume = _next_value_start(text, pos, lines.column_at(last_good))
        where = f"line {lines.line_at(pos)} column {lines.column_at(pos)}"
        yield pos, resume, None, f"Expecting ',' delimiter at {where}"
        if resume >= size:
            return
        pos = resume


def _decode_value(text: str, pos: int, bound: int, lines: _LineFinder) -> tuple[Any, int, str | None]:
    """(value, end, None) for the JSON value at `pos`, or (None, pos, error).

    json's errors count lines from the start of the string they are given, so each costs
    time in proportion to its offset: many broken elements in a big file would take
    quadratic time. With `bound` >= 0 only text[pos:bound] is decoded, which keeps that
    cost to the element; the caller does so once the file has shown an error.
    """
    try:
        if bound < 0:
            value, end = _DECODER.raw_decode(text, pos)
        else:
            value, end = _DECODER.raw_decode(text[pos:bound])
            end += pos
    except json.JSONDecodeError as e:
        if bound < 0:
            return None, pos, f"{_json_message(e)} at line {e.lineno} column {e.colno}"
        at = pos + e.pos
        return None, pos, f"{_json_message(e)} at line {lines.line_at(at)} column {lines.column_at(at)}"
    except (ValueError, RecursionError) as e:
        return None, pos, _json_error(e)
    return value, end, None


def _next_value_start(text: str, from_pos: int, column: int) -> int:
    """The first `{` at or after `from_pos` that starts a line (after spaces or a comma) at
    `column`: where the next element of a pretty-printed array begins. Nested objects are
    indented deeper, so they do not match. The end of the text when there is none."""
    pattern = _value_start_pattern(column)
    match = pattern.search(text, text.rfind("\n", 0, from_pos) + 1)
    if match is not None and match.end() - 1 < from_pos:
        match = pattern.search(text, match.end())
    return match.end() - 1 if match is not None else len(text)


@lru_cache(maxsize=32)
def _value_start_pattern(column: int) -> re.Pattern[str]:
    return re.compile(r"^[ \t,]{%d}\{" % (column - 1), re.MULTILINE)


# ---------------------------------------------------------------- CSV


def _csv_delimiter(first_line: str, suffix: str) -> str | None:
    """The delimiter when the first line is a CSV header: one that names at least one of
    our fields, or any header of two or more fields in a .csv/.tsv file."""
    best, best_score = None, (0, 0)
    for delimiter in (",", "\t", ";"):
        try:
            fields = [f.strip() for f in next(csv.reader([first_line], delimiter=delimiter), [])]
        except csv.Error:  # e.g. a first line longer than the csv field limit: not a header
            continue
        if len(fields) < 2:
            continue
        score = (sum(f in CSV_FIELDS for f in fields), len(fields))
        if score > best_score:
            best, best_score = delimiter, score
    if best_score[0] > 0 or (best is not None and suffix in (".csv", ".tsv")):
        return best
    return None


def _read_csv(path: Path, text: str, bad_bytes: bool, delimiter: str) -> _Rows:
    rows = _Rows("csv", bad_bytes)
    lines = text.split("\n")
    header: list[str] | None = None
    consumed = 0  # lines the csv reader has taken so far: a record starts on the next one
    with _csv_field_limit(len(text)):
        reader = csv.reader(_with_newlines(lines), delimiter=delimiter, strict=True)
        while True:
            try:
                record = next(reader)
                error = None
            except StopIteration:
                break
            except csv.Error as e:
                record, error = [], _csv_message(e)
            begin, consumed = consumed + 1, reader.line_num
            raw = lines[begin - 1] if consumed == begin else "\n".join(lines[begin - 1:consumed])
            if error is not None:
                if header is None:
                    raise DataError(f"{path}: line {begin}: the CSV header cannot be read: {error}")
                rows.remove(begin, f"invalid_csv: {error}", raw, syntax=True)
            elif all(not value.strip() for value in record):
                continue  # a blank line, or the ",,," rows spreadsheets leave at the end
            elif header is None:
                header = [name.strip() for name in record]
            elif len(record) != len(header):
                reason = f"invalid_csv: the record has {len(record)} fields, the header has {len(header)}"
                rows.remove(begin, reason, raw, syntax=True)
            else:
                rows.add(begin, dict(zip(header, record)), raw)
    return rows


def _csv_message(e: csv.Error) -> str:
    message = str(e)
    if message.startswith("new-line character seen in unquoted field"):
        return "a line break (\\r) inside an unquoted field; quote the field"
    return message


def _with_newlines(lines: list[str]) -> Iterator[str]:
    # Split on "\n" only (not str.splitlines, which also splits on \x0b, \u2028, ...), so
    # the csv reader's line count matches the file's lines.
    for line in lines[:-1]:
        yield line + "\n"
    if lines[-1]:
        yield lines[-1]


@contextmanager
def _csv_field_limit(size: int) -> Iterator[None]:
    # The default limit (128 KiB) would reject long answers; restore it for other readers.
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


# ---------------------------------------------------------------- text checks


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_byte_reason(raw: str) -> str:
    """Bytes that were not UTF-8 came through decoding as surrogates; say which byte."""
    try:
        raw.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeEncodeError:
        return "invalid_utf8: lone surrogate in the row"
    except UnicodeDecodeError as e:
        return f"invalid_utf8: byte {e.start + 1} is not UTF-8"
    return "invalid_utf8: the row is not UTF-8"


def _printable(raw: str) -> str:
    """`raw` as text that encodes to UTF-8: undecodable bytes shown as \\xNN."""
    if not _has_surrogate(raw):
        return raw
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "backslashreplace").decode("utf-8")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _keys_text(keys: tuple[str, ...]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(_visible(_printable(_clip(k, 40))) for k in keys[:12])
    return shown if len(keys) <= 12 else f"{shown} and {len(keys) - 12} more"


def _visible(key: str) -> str:
    # A NUL or a line break in a key name would print as nothing, or break the message.
    return key if key.isprintable() else repr(key)


def _show(value: Any) -> str:
    """A value for a message: strings quoted and clipped, other values by their type."""
    if isinstance(value, str):
        return _printable(repr(_clip(value, 40)))
    return type(value).__name__


# ---------------------------------------------------------------- rows


def normalise_row(obj: Any) -> tuple[dict[str, Any], str]:
    """One parsed row -> ({"messages": [...], ...passthrough}, format name)."""
    if not isinstance(obj, dict):
        raise RowError(f"not_object: expected a JSON object, got {type(obj).__name__}")
    fmt = _row_format(obj)
    if fmt is None:
        keys = tuple(sorted(obj))
        raise RowError(f"unknown_format: keys {_keys_text(keys)}; expected {EXPECTED_FORMATS}", keys=keys)
    row: dict[str, Any] = {"messages": _CONVERTERS[fmt](obj)}
    for key in PASSTHROUGH:
        value = obj.get(key)
        if isinstance(value, str):
            _reject_lone_surrogates(value, key)
            row[key] = value
    return row, fmt


def _row_format(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        if "response" in obj:
            return "instruction"
        if "output" in obj:
            return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    return None


def _reject_lone_surrogates(text: str, where: str) -> None:
    # json.loads turns "\ud800" into a lone surrogate, which no later stage can write out.
    if _has_surrogate(text):
        raise RowError(f"invalid_utf8: lone surrogate in {where}")


def _text_field(obj: dict[str, Any], key: str, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise RowError(f"missing_field: {key}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"wrong_type: {key} is {type(value).__name__}, expected a string")
    if required and (not value or value.isspace()):
        raise RowError(f"empty_field: {key}")
    if not value.isascii():
        _reject_lone_surrogates(value, key)
    return value


def _from_instruction(obj: dict[str, Any], answer_key: str = "response") -> list[dict[str, str]]:
    instruction = _text_field(obj, "instruction", required=True)
    answer = _text_field(obj, answer_key, required=True)
    extra = _text_field(obj, "input", required=False)
    system = _text_field(obj, "system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _from_alpaca(obj: dict[str, Any]) -> list[dict[str, str]]:
    return _from_instruction(obj, answer_key="output")


def _from_prompt_completion(obj: dict[str, Any]) -> list[dict[str, str]]:
    prompt = _text_field(obj, "prompt", required=True)
    completion = _text_field(obj, "completion", required=True)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _from_messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    turns = _turn_list(obj["messages"], "messages")
    messages = [_chat_turn(turn, f"messages[{i}]") for i, turn in enumerate(turns)]
    return _with_assistant_turn(messages)


def _from_sharegpt(obj: dict[str, Any]) -> list[dict[str, str]]:
    turns = _turn_list(obj["conversations"], "conversations")
    system = _text_field(obj, "system", required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if isinstance(turn, dict) and "from" in turn:
            messages.append(_sharegpt_turn(turn, where))
        else:
            messages.append(_chat_turn(turn, where))  # the role/content variant
    return _with_assistant_turn(messages)


def _turn_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RowError(f"wrong_type: {where} is {type(value).__name__}, expected a list")
    if not value:
        raise RowError(f"empty_field: {where}")
    return value


def _chat_turn(turn: Any, where: str) -> dict[str, str]:
    """An OpenAI-style {"role", "content"} turn; other keys are dropped."""
    if not isinstance(turn, dict):
        raise RowError(f"wrong_type: {where} is {type(turn).__name__}, expected an object")
    role = turn.get("role", _ABSENT)
    if role is _ABSENT:
        raise RowError(f"missing_field: {where}.role")
    if not isinstance(role, str):
        raise RowError(f"wrong_type: {where}.role is {type(role).__name__}, expected a string")
    if role not in ROLES:
        raise RowError(f"unknown_role: {where}.role = {_show(role)}; allowed: {', '.join(ROLES)}")
    content = _content_text(turn.get("content", _ABSENT), f"{where}.content")
    if role == "assistant" and not content.strip():
        raise RowError(f"empty_field: {where}.content (assistant)")
    return {"role": role, "content": content}


def _sharegpt_turn(turn: dict[str, Any], where: str) -> dict[str, str]:
    speaker = turn["from"]
    if not isinstance(speaker, str):
        raise RowError(f"wrong_type: {where}.from is {type(speaker).__name__}, expected a string")
    role = SHAREGPT_ROLES.get(speaker)
    if role is None:
        raise RowError(
            f"unknown_role: {where}.from = {_show(speaker)}; allowed: human, gpt, system (or user, assistant)"
        )
    value = turn.get("value", _ABSENT)
    if value is _ABSENT:
        raise RowError(f"missing_field: {where}.value")
    if not isinstance(value, str):
        raise RowError(f"wrong_type: {where}.value is {type(value).__name__}, expected a string")
    if role == "assistant" and not value.strip():
        raise RowError(f"empty_field: {where}.value (assistant)")
    _reject_lone_surrogates(value, f"{where}.value")
    return {"role": role, "content": value}


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts joined together."""
    if isinstance(content, str):
        _reject_lone_surrogates(content, where)
        return content
    if content is _ABSENT:
        raise RowError(f"missing_field: {where}")
    if not isinstance(content, list):
        raise RowError(f"wrong_type: {where} is {type(content).__name__}, expected a string or a list of text parts")
    texts = []
    for j, part in enumerate(content):
        part_where = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise RowError(f"wrong_type: {part_where} is {type(part).__name__}, expected a text part")
        kind = part.get("type")
        if kind != "text":
            raise RowError(f"wrong_type: {part_where} is a part of type {_show(kind)}, expected type 'text'")
        text = part.get("text")
        if not isinstance(text, str):
            raise RowError(f"wrong_type: {part_where}.text is {type(text).__name__}, expected a string")
        _reject_lone_surrogates(text, f"{part_where}.text")
        texts.append(text)
    # Concatenated as chat templates render a list of text parts: with nothing in between.
    return "".join(texts)


def _with_assistant_turn(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no_assistant_turn: nothing to train on")
    return messages


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "instruction": _from_instruction,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}
