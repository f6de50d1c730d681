"""Reading back what `tunesmith eval` wrote: RUN/eval/outputs.jsonl and scores.json. The
report page and the LLM judge read them; a file that is missing, edited or cut short is
one message naming FILE:LINE and the fix (run eval again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.io import read_jsonl_objects

SCORES_FIELDS = ("n", "source", "models", "base", "tuned", "caveat")
OUTPUT_FIELDS = ("line", "file", "prompt", "reference", "base", "tuned", "scores")


def read_scores(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "eval" / "scores.json"
    try:
        scores = json.loads(_text(path, run_dir))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); run `tunesmith eval {run_dir}` again") from None
    _require(scores, SCORES_FIELDS, str(path), run_dir)
    return scores


def read_output_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "eval" / "outputs.jsonl"
    _exists(path, run_dir)
    rows = read_jsonl_objects(path, "eval outputs", f"run `tunesmith eval {run_dir}` again to rewrite it")
    for number, row in rows:
        _require(row, OUTPUT_FIELDS, f"{path}:{number}", run_dir)
    return [row for _, row in rows]


def _require(value: Any, fields: tuple[str, ...], where: str, run_dir: Path) -> None:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: not a JSON object; run `tunesmith eval {run_dir}` again to rewrite it")
    missing = [field for field in fields if field not in value]
    if missing:
        raise UsageError(f"{where}: no `{missing[0]}` field; run `tunesmith eval {run_dir}` again to rewrite it")


def _text(path: Path, run_dir: Path) -> str:
    _exists(path, run_dir)
    return path.read_text(encoding="utf-8")


def _exists(path: Path, run_dir: Path) -> None:
    if not path.is_file():
        raise UsageError(f"{path} not found: run `tunesmith eval {run_dir}` first")
