"""Write a clean result to a folder: clean.jsonl, removed.jsonl, report.json, report.html."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from tunesmith.data.clean import CleanResult
from tunesmith.data.formats import reason_code
from tunesmith.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

# The HTML lists removed rows for review; beyond this many it points at removed.jsonl, so a
# 100k-row file does not make a page the browser cannot open.
HTML_ROW_LIMIT = 500
RAW_EXCERPT = 600
# What write_clean writes into its folder.
CLEAN_FILES = ("clean.jsonl", "removed.jsonl", "report.json", "report.html")


def write_clean(result: CleanResult, out_dir: Path) -> None:
    """Each file is written atomically; report.json last, so its presence means complete."""
    write_jsonl_atomic(out_dir / "clean.jsonl", result.kept)
    write_jsonl_atomic(out_dir / "removed.jsonl", result.removed)
    write_report(result, out_dir)


def write_report(result: CleanResult, out_dir: Path) -> None:
    write_text_atomic(out_dir / "report.html", render_html(result.report, result.removed))
    write_json_atomic(out_dir / "report.json", result.report)


def render_html(report: dict[str, Any], removed: list[dict[str, Any]]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["basename"] = lambda p: Path(p).name
    template = env.from_string((resources.files("tunesmith.data") / "report.html.j2").read_text(encoding="utf-8"))
    shown = [
        {
            "line": row["line"],
            "reasons": row["reasons"],
            "codes": " ".join(reason_code(reason) for reason in row["reasons"]),
            "raw": _excerpt(row["raw"]),
        }
        for row in removed[:HTML_ROW_LIMIT]
    ]
    return template.render(r=report, removed=shown)


def _excerpt(raw: str) -> str:
    return raw if len(raw) <= RAW_EXCERPT else raw[:RAW_EXCERPT] + f" … ({len(raw) - RAW_EXCERPT:,} more characters)"
