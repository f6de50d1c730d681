"""`tunesmith review RUN --results` and `--judge`: the same statistics over the experts' votes
and over an LLM judge's, so the two can be read side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tunesmith.eval.outputs import read_output_rows
from tunesmith.eval.review.store import read_items, read_votes, review_dir
from tunesmith.eval.stats import summarise_votes, write_votes_csv
from tunesmith.models.card import write_model_card


def human_results(run_dir: Path, csv_path: Path | None = None) -> dict[str, Any]:
    """The experts' votes summarised; with csv_path, also one CSV row per vote."""
    items = read_items(run_dir)
    votes = read_votes(run_dir)
    if csv_path is not None:
        write_votes_csv(votes, csv_path)
    summary = summarise_votes(votes, {item["line"]: item["category"] for item in items})
    write_model_card(run_dir, review={key: summary.get(key) for key in ("win_rate", "ci", "votes", "counted", "raters")})
    return {"items": len(items), **summary}


def judge_results(run_dir: Path, *, url: str, model: str, api_key: str | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Judge every evaluated example in both orders (cached in RUN/review/judge.jsonl, so
    asking again costs nothing) and summarise the verdicts like votes."""
    from tunesmith.eval.judge import judge_items, unparsed_judgements

    rows = read_output_rows(run_dir)
    cache = review_dir(run_dir) / "judge.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    votes = judge_items(rows, url=url, model=model, api_key=api_key, cache=cache, on_progress=on_progress)
    summary = summarise_votes(votes, {row["line"]: row.get("category") for row in rows})
    return {"items": len(rows), "judge": model, "unparsed": unparsed_judgements(rows, model=model, cache=cache),
            **summary}
