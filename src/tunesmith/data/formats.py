"""Read a JSONL file of examples and normalise every row to the chat format.

Every non-blank line ends up either kept, as `{"line", "messages", ...}`, or removed, as
`{"line", "reasons", "raw"}`: nothing is dropped silently. Formats accepted here:
`{"instruction", "response"}` (optional `input`, `system`) and `{"messages": [...]}`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError

ROLES = ("system", "user", "assistant")
# Fields carried from the input row to the normalised one when present.
PASSTHROUGH = ("category",)


@dataclass
class ReadResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.removed:
            for reason in row["reasons"]:
                code = reason.split(":", 1)[0]
                counts[code] = counts.get(code, 0) + 1
        return dict(sorted(counts.items()))


class RowError(ValueError):
    """A row that cannot be trained on; the message starts with a reason code."""


def read_examples(path: str | Path) -> ReadResult:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: data file not found")
    result = ReadResult()
    with path.open("rb") as f:
        for number, raw_bytes in enumerate(f, start=1):
            if not raw_bytes.strip():
                continue
            try:
                text = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raw = raw_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
                result.removed.append(_removed(number, f"invalid_utf8: byte {e.start + 1} is not UTF-8", raw))
                continue
            text = text.rstrip("\r\n").lstrip("\ufeff")
            try:
                row, fmt = normalise_row(_parse_json(text))
            except RowError as e:
                result.removed.append(_removed(number, str(e), text))
                continue
            result.kept.append({"line": number, **row})
            result.formats[fmt] = result.formats.get(fmt, 0) + 1
    if not result.kept and not result.removed:
        raise UsageError(f"{path}: the file has no examples")
    return result


def _removed(line: int, reason: str, raw: str) -> dict[str, Any]:
    return {"line": line, "reasons": [reason], "raw": raw}


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid_json: {e.msg} at column {e.colno}") from None


def normalise_row(obj: Any) -> tuple[dict[str, Any], str]:
    """One parsed row -> ({"messages": [...], ...passthrough}, format name)."""
    if not isinstance(obj, dict):
        raise RowError(f"not_object: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages, fmt = _from_messages(obj["messages"]), "messages"
    elif "instruction" in obj and "response" in obj:
        messages, fmt = _from_instruction(obj), "instruction"
    else:
        keys = ", ".join(sorted(obj)) or "none"
        raise RowError(
            f"unknown_format: keys {keys}; expected instruction+response or messages"
        )
    row: dict[str, Any] = {"messages": messages}
    row.update({k: obj[k] for k in PASSTHROUGH if isinstance(obj.get(k), str)})
    return row, fmt


def _text_field(obj: dict[str, Any], key: str, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise RowError(f"missing_field: {key}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"wrong_type: {key} is {type(value).__name__}, expected a string")
    if required and not value.strip():
        raise RowError(f"empty_field: {key}")
    return value


def _from_instruction(obj: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _text_field(obj, "instruction", required=True)
    response = _text_field(obj, "response", required=True)
    extra = _text_field(obj, "input", required=False)
    system = _text_field(obj, "system", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


def _from_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError("wrong_type: messages must be a non-empty list")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError(f"wrong_type: messages[{i}] is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"unknown_role: messages[{i}].role = {role!r}; allowed: {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise RowError(f"wrong_type: messages[{i}].content must be a string")
        if role == "assistant" and not content.strip():
            raise RowError(f"empty_field: messages[{i}].content (assistant)")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no_assistant_turn: nothing to train on")
    return messages


def split_rows(rows: list[dict[str, Any]], val_fraction: float, seed: int, max_val: int) -> tuple[list, list]:
    """Seeded hold-out: the same seed and rows give the same split on every machine."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(max_val, max(1, round(len(rows) * val_fraction))) if len(rows) > 1 else 0
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val
