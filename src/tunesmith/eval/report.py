"""RUN/eval/report.html: the scores first, then every example with each model's answer.

One self-contained page (inline CSS, one small inline script, nothing fetched), readable
without JavaScript. Everything a model wrote goes through Jinja's autoescape and reaches
the script only as data attributes, so an answer holding `<script>` or `</textarea>` is
shown as text and never runs.
"""

from __future__ import annotations

import base64
import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from tunesmith.eval.outputs import read_output_rows, read_scores
from tunesmith.io import write_text_atomic

# Rows of the scores table in this order; a metric not named here follows, by name.
METRIC_ORDER = ("exact_match", "json_valid", "json_field_accuracy", "token_f1", "rouge_l",
                "ref_nll_per_token", "perplexity")
# Word-overlap metrics: the scores' caveat is printed beside them.
LEXICAL_METRICS = ("token_f1", "rouge_l")
LOWER_IS_BETTER = frozenset({"ref_nll_per_token", "perplexity"})
# "Tuned worse than base" for one example is decided by the first of these it has: field
# accuracy says more than word overlap for a JSON reference, and exact match is the floor.
PRIMARY_METRICS = ("json_field_accuracy", "token_f1", "exact_match")


def write_eval_report(run_dir: Path) -> Path:
    """Read RUN/eval/scores.json and outputs.jsonl; write RUN/eval/report.html atomically."""
    eval_dir = run_dir / "eval"
    scores = read_scores(run_dir)
    rows = read_output_rows(run_dir)
    path = eval_dir / "report.html"
    write_text_atomic(path, render_eval_report(scores, rows))
    return path


def render_eval_report(scores: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The page as a string, from scores.json's object and outputs.jsonl's rows."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["csp_sha256"] = _csp_sha256
    template = env.from_string((resources.files("tunesmith.eval") / "report.html.j2").read_text(encoding="utf-8"))
    models = list(scores["models"])
    examples = [example_view(row, models) for row in rows]
    categories = scores.get("categories") or {}
    return template.render(
        s=scores,
        models=models,
        compare=scores["source"].get("compare"),
        metrics=metric_rows(scores, models),
        category_rows=[category_view(name, cat, models) for name, cat in categories.items()],
        general=general_view(scores.get("general")),
        examples=examples,
        worse_count=sum(e["worse"] for e in examples),
        filter_categories=_filter_categories(rows),
        uncategorised=sum(row.get("category") is None for row in rows),
    )


# ---------------------------------------------------------------- view models

def metric_rows(scores: dict[str, Any], models: list[str]) -> list[dict[str, Any]]:
    """One row per metric: formatted values per model and the change tuned − base. The
    first lexical row carries `caveat_rows` (its rowspan); the rows it covers carry 0."""
    names = _ordered_metrics(name for model in models for name in scores.get(model) or {})
    rows = [_metric_row(name, {m: (scores.get(m) or {}).get(name) for m in models}) for name in names]
    lexical = [row for row in rows if row["name"] in LEXICAL_METRICS]
    for row in rows:
        row["caveat_rows"] = None  # an empty note cell
    for i, row in enumerate(lexical):
        row["caveat_rows"] = len(lexical) if i == 0 else 0
    return rows


def category_view(name: str, category: dict[str, Any], models: list[str]) -> dict[str, Any]:
    names = _ordered_metrics(metric for model in models for metric in category.get(model) or {})
    return {
        "name": name,
        "n": category["n"],
        "metrics": [_metric_row(metric, {m: (category.get(m) or {}).get(metric) for m in models}) for metric in names],
    }


def general_view(general: dict[str, Any] | None) -> dict[str, Any] | None:
    """Shares passed on the general set as percentages, overall and by kind."""
    if general is None:
        return None
    kinds = [{"name": "all", "n": general["n"], "base": general["base"], "tuned": general["tuned"]}]
    kinds += [{"name": name, **kind} for name, kind in (general.get("by_kind") or {}).items()]
    return {
        "flagged": bool(general["flagged"]),
        "advice": general.get("advice"),  # the eval stage's words, so page and terminal agree
        "noise": general.get("noise"),
        "drop": _points(general["drop"]),
        "threshold": _points(general["threshold"]),
        "kinds": [
            {"name": k["name"], "n": k["n"], "base": _percent(k["base"]), "tuned": _percent(k["tuned"]),
             **_change(k["tuned"], k["base"], lower_is_better=False, as_points=True)}
            for k in kinds
        ],
    }


def example_view(row: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """One example: its prompt, reference, each model's answer with its scores, and whether
    the tuned answer scored strictly lower than the base's on the primary metric."""
    per_model = row["scores"]
    primary = primary_metric(per_model.get("base") or {}, per_model.get("tuned") or {})
    answers = []
    for model in models:
        model_scores = per_model.get(model) or {}
        answers.append({
            "model": model,
            "text": row.get(model),
            "scores": [{"name": name, "value": _number(model_scores[name]), "primary": name == primary}
                       for name in _ordered_metrics(model_scores)],
        })
    base, tuned = (per_model["base"][primary], per_model["tuned"][primary]) if primary else (None, None)
    return {
        "line": row["line"],
        "where": f"{row['file']}:{row['line']}",
        "category": row.get("category"),
        "prompt": row["prompt"],
        "reference": row["reference"],
        "answers": answers,
        # strictly lower: a tie on the primary metric is not worse
        "worse": primary is not None and tuned < base,
        "primary": primary,
        "primary_values": (_number(base), _number(tuned)),
    }


def primary_metric(base: dict[str, float], tuned: dict[str, float]) -> str | None:
    """The first of PRIMARY_METRICS both models were scored on; None when there is none."""
    return next((name for name in PRIMARY_METRICS if name in base and name in tuned), None)


# ---------------------------------------------------------------- helpers

def _metric_row(name: str, values: dict[str, float | None]) -> dict[str, Any]:
    lower = name in LOWER_IS_BETTER
    return {
        "name": name,
        "lower_is_better": lower,
        "values": {model: _number(value) for model, value in values.items()},
        **_change(values.get("tuned"), values.get("base"), lower_is_better=lower),
    }


def _change(tuned: float | None, base: float | None, *, lower_is_better: bool, as_points: bool = False) -> dict[str, str]:
    """tuned − base, signed, with a class saying whether the change is better or worse."""
    if tuned is None or base is None or not math.isfinite(tuned - base):
        return {"change": "–", "change_class": ""}
    delta = tuned - base
    text = f"{100 * delta:+.1f} pts" if as_points else f"{delta:+.4f}"
    if round(delta, 6) == 0:
        return {"change": text, "change_class": ""}
    better = (delta < 0) if lower_is_better else (delta > 0)
    return {"change": text, "change_class": "better" if better else "worse"}


def _ordered_metrics(names: Any) -> list[str]:
    order = {name: i for i, name in enumerate(METRIC_ORDER)}
    return sorted(set(names), key=lambda name: (order.get(name, len(order)), name))


def _filter_categories(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("category") is not None:
            counts[row["category"]] = counts.get(row["category"], 0) + 1
    return sorted(counts.items())


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    # Four decimals keep a column aligned; a perplexity in the thousands needs none of them.
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _points(share: float) -> str:
    return f"{100 * share:.1f} percentage points"


def _csp_sha256(script: str) -> str:
    """The CSP source for exactly this inline script: any other script on the page is refused."""
    return "sha256-" + base64.b64encode(hashlib.sha256(str(script).encode("utf-8")).digest()).decode("ascii")
