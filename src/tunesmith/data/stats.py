"""Dataset-level figures: length percentiles, category balance, the guide's volume guidance.

Pure functions on plain lists; the clean stage puts their results into report.json.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

# The guide's rows-needed ranges per kind of tuning (upper None: "or more").
VOLUME_GUIDANCE: dict[str, tuple[str, int, int | None]] = {
    "task": ("task-specific fine-tuning", 500, 2_000),
    "conversational": ("conversational / instruction following", 2_000, 10_000),
    "domain": ("domain adaptation", 10_000, 50_000),
    "pretraining": ("continued pretraining", 100_000, None),
}

# One category above this share of the rows gets a note: the model will lean towards it.
DOMINANT_SHARE = 0.5
OPENING_WORDS = 3
TOP_GROUPS = 20


def percentiles(values: Sequence[int]) -> dict[str, float]:
    """p10/p50/p90/max/mean by nearest rank; empty input gives zeros."""
    if not values:
        return {"p10": 0, "p50": 0, "p90": 0, "max": 0, "mean": 0.0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> int:
        return ordered[min(n - 1, max(0, round(q * (n - 1))))]

    return {"p10": rank(0.1), "p50": rank(0.5), "p90": rank(0.9), "max": ordered[-1],
            "mean": round(sum(ordered) / n, 1)}


def volume_guidance(rows: int, task_type: str | None) -> dict[str, Any] | None:
    """Where `rows` falls in the guide's range for the declared task type."""
    if task_type is None:
        return None
    label, low, high = VOLUME_GUIDANCE[task_type]
    span = f"{low:,}–{high:,}" if high else f"{low:,}+"
    if rows < low:
        verdict = "below"
        advice = (f"{rows:,} rows is below the guide's {span} for {label}: expect a weaker result; "
                  "add examples, or start with the smallest LoRA rank and watch eval loss for overfitting")
    elif high is not None and rows > high:
        verdict = "above"
        advice = (f"{rows:,} rows is above the guide's {span} for {label}: fine, but try "
                  "`tunesmith data split --subset 0.1` first to iterate cheaply")
    else:
        verdict = "within"
        advice = f"{rows:,} rows is within the guide's {span} for {label}"
    return {"task_type": task_type, "rows": rows, "range": [low, high], "verdict": verdict, "advice": advice}


def opening(messages: list[dict[str, str]]) -> str:
    """The first words of the first user turn, lowercased: a cheap stand-in for the task
    when rows carry no category."""
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    words = re.findall(r"\w+", user.lower())[:OPENING_WORDS]
    return " ".join(words) or "(empty)"


def group_key(row: dict[str, Any]) -> str:
    category = row.get("category")
    return category if isinstance(category, str) and category else opening(row["messages"])


def balance(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Distribution over the category field when rows have one, else over openings."""
    by_category = any(isinstance(r.get("category"), str) and r.get("category") for r in rows)
    counts = Counter(group_key(r) if by_category else opening(r["messages"]) for r in rows)
    total = sum(counts.values())
    top = counts.most_common(TOP_GROUPS)
    top_share = top[0][1] / total if top else 0.0
    return {
        "field": "category" if by_category else "opening",
        "groups": len(counts),
        "counts": dict(top),
        "top": top[0][0] if top else None,
        "top_share": round(top_share, 3),
        "dominant": len(counts) > 1 and top_share > DOMINANT_SHARE,
    }
