"""Statistics over blind review votes: who won, how sure we are, and whether raters agree.

Pure functions over votes in their dict form (one dict per vote, as read back from
RUN/review/votes.db or produced by the LLM judge):

    {"rater": "alice", "item": 12, "choice": "A"|"B"|"tie"|"both_bad", "tuned_side": "A"|"B",
     "score": 1-5 | None, "comment": "", "at": "2025-01-01T12:00:00Z"}

`item` is the outputs.jsonl row's line. The A/B sides are shuffled per rater, so every
statistic here first turns a vote into an outcome relative to the models: tuned, base,
tie or both_bad. Nothing here reads or writes the vote database.
"""

from __future__ import annotations

import csv
import inspect
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.io import atomic_writer

CHOICES = ("A", "B", "tie", "both_bad")
SIDES = ("A", "B")
# Outcomes relative to the models, in a fixed order: their index is the nominal code the
# agreement measures see (the codes carry no order; only equal / not equal matters).
OUTCOMES = ("tuned", "base", "tie", "both_bad")
CSV_COLUMNS = ("rater", "item", "choice", "tuned_side", "score", "comment", "at")
CONFIDENCE = 0.95


# ---------------------------------------------------------------- one vote

def outcome(vote: dict) -> str:
    """"tuned", "base", "tie" or "both_bad" for one vote, whatever side the tuned model sat on.
    A vote with a choice or tuned_side outside the contract is one TunesmithError naming it."""
    choice, side = vote.get("choice"), vote.get("tuned_side")
    if choice not in CHOICES:
        raise TunesmithError(f"vote by {vote.get('rater')!r} on item {vote.get('item')}: choice {choice!r} is "
                             f"not one of {', '.join(CHOICES)}; the vote database holds a vote this version "
                             f"does not understand")
    if side not in SIDES:
        raise TunesmithError(f"vote by {vote.get('rater')!r} on item {vote.get('item')}: tuned_side {side!r} is "
                             f"not A or B; the vote database holds a vote this version does not understand")
    if choice in ("tie", "both_bad"):
        return choice
    return "tuned" if choice == side else "base"


# ---------------------------------------------------------------- the summary

def summarise_votes(votes: list[dict], categories: dict[int, str | None], *, seed: int = 0,
                    resamples: int = 10_000) -> dict[str, Any]:
    """Counts, the tuned model's win rate with a 95% bootstrap interval, per-rater counts,
    the mean 1-5 score, inter-rater agreement and the same counts per category.

    `categories` maps an item (outputs.jsonl line) to its category; items absent from it or
    mapped to None are counted overall but in no category. `seed` and `resamples` drive the
    bootstrap, so the same votes and seed always give the same interval.

    What a None means in the result:
      win_rate  no counted vote (none at all, or every vote was both_bad)
      ci        fewer than two items with a counted vote: resampling one item always draws
                that item again, so the bootstrap has no spread to report
      mean_score  no vote carried a score
      agreement   fewer than two raters; agreement["value"] None: no item was rated by two
                raters, or every such rating was the same outcome (chance agreement is then
                total and kappa / alpha are 0/0, undefined)
    """
    votes = list(votes)
    outcomes = [outcome(v) for v in votes]
    summary: dict[str, Any] = _tally(votes, outcomes, seed=seed, resamples=resamples)
    summary["raters"] = {name: {"votes": n} for name, n in sorted(Counter(v["rater"] for v in votes).items())}
    scores = [v["score"] for v in votes if v.get("score") is not None]
    summary["mean_score"] = float(np.mean(scores)) if scores else None
    summary["agreement"] = agreement(votes)
    summary["categories"] = _by_category(votes, outcomes, categories, seed=seed, resamples=resamples)
    return summary


def _tally(votes: list[dict], outcomes: list[str], *, seed: int, resamples: int) -> dict[str, Any]:
    """votes, counted, tuned_wins, base_wins, ties, both_bad, win_rate and ci for these votes."""
    counts = Counter(outcomes)
    counted = len(outcomes) - counts["both_bad"]
    return {
        "votes": len(outcomes),
        "counted": counted,
        "tuned_wins": counts["tuned"],
        "base_wins": counts["base"],
        "ties": counts["tie"],
        "both_bad": counts["both_bad"],
        "win_rate": (counts["tuned"] + counts["tie"] / 2) / counted if counted else None,
        "ci": win_rate_ci([v["item"] for v in votes], outcomes, seed=seed, resamples=resamples),
    }


def _by_category(votes: list[dict], outcomes: list[str], categories: dict[int, str | None], *,
                 seed: int, resamples: int) -> dict[str, dict[str, Any]]:
    grouped: dict[str, tuple[list[dict], list[str]]] = defaultdict(lambda: ([], []))
    for vote, result in zip(votes, outcomes):
        category = categories.get(vote["item"])
        if category is not None:
            grouped[category][0].append(vote)
            grouped[category][1].append(result)
    return {name: _tally(*grouped[name], seed=seed, resamples=resamples) for name in sorted(grouped)}


# ---------------------------------------------------------------- the interval

def win_rate_ci(items: list[int], outcomes: list[str], *, seed: int = 0,
                resamples: int = 10_000) -> list[float] | None:
    """95% percentile-bootstrap interval of the win rate, resampling ITEMS, not votes.

    Votes on one item are not independent (the same two answers, seen by several raters),
    so an item is the unit drawn with replacement and brings all its counted votes along.
    Each item contributes (tuned wins + ties/2, counted votes); the statistic is the ratio
    of their sums, which is exactly the win rate on the resampled votes.

    None with fewer than two items holding a counted vote. When every item has the same
    rate (e.g. the tuned model won every vote) all resamples agree and the interval is that
    single value: the percentile bootstrap cannot reach past the outcomes it has seen.
    """
    points: dict[int, float] = defaultdict(float)
    weights: dict[int, int] = defaultdict(int)
    for item, result in zip(items, outcomes):
        if result != "both_bad":
            points[item] += {"tuned": 1.0, "tie": 0.5}.get(result, 0.0)
            weights[item] += 1
    if len(weights) < 2:
        return None
    wins = np.array([points[i] for i in weights])
    counted = np.array([weights[i] for i in weights], dtype=float)
    rates = wins / counted
    if np.all(rates == rates[0]):
        # Every resample gives the same value; scipy would warn about a degenerate distribution.
        return [float(rates[0]), float(rates[0])]
    from scipy.stats import bootstrap

    result = bootstrap((wins, counted), _ratio_of_sums, paired=True, vectorized=True,
                       n_resamples=resamples, confidence_level=CONFIDENCE, method="percentile",
                       batch=1000,  # bounds memory: 1000 resamples x items at a time
                       **{_rng_keyword(): np.random.default_rng(seed)})
    interval = result.confidence_interval
    return [float(interval.low), float(interval.high)]


def _ratio_of_sums(wins: np.ndarray, counted: np.ndarray, axis: int = -1) -> np.ndarray:
    return wins.sum(axis=axis) / counted.sum(axis=axis)


def _rng_keyword() -> str:
    # scipy 1.15 renamed `random_state` to `rng`; the old name warns on new versions.
    from scipy.stats import bootstrap

    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


# ---------------------------------------------------------------- agreement

def agreement(votes: list[dict]) -> dict[str, Any] | None:
    """How far raters agree on the outcome (tuned / base / tie / both_bad) of the items they
    share, beyond chance. None with fewer than two raters.

    Two raters: Cohen's kappa over the items both rated. Three or more: Krippendorff's alpha
    at the nominal level, where a rater who skipped an item is a missing value. Outcomes,
    not A/B choices, are compared: each rater saw the sides in their own random order, so
    "A" from one rater and "A" from another may be different models.

    `items`: how many items at least two raters rated (only those carry information).
    `value` None: no such item, or all their ratings were one outcome (kappa and alpha are
    then 0/0). A rater who voted twice on one item counts with their last vote in the list.
    """
    ratings = _ratings_by_rater(votes)
    if len(ratings) < 2:
        return None
    raters = sorted(ratings)
    shared = _items_rated_by_two(ratings)
    if len(raters) == 2:
        method, value = "cohen_kappa", _cohen_kappa(ratings[raters[0]], ratings[raters[1]], shared)
    else:
        method, value = "krippendorff_alpha", _krippendorff_alpha(ratings, raters, shared)
    return {"method": method, "value": value, "raters": len(raters), "items": len(shared)}


def _ratings_by_rater(votes: list[dict]) -> dict[str, dict[int, str]]:
    ratings: dict[str, dict[int, str]] = defaultdict(dict)
    for vote in votes:
        ratings[vote["rater"]][vote["item"]] = outcome(vote)
    return ratings


def _items_rated_by_two(ratings: dict[str, dict[int, str]]) -> list[int]:
    seen = Counter(item for by_item in ratings.values() for item in by_item)
    return sorted(item for item, n in seen.items() if n >= 2)


def _cohen_kappa(first: dict[int, str], second: dict[int, str], shared: list[int]) -> float | None:
    y1 = [first[i] for i in shared]
    y2 = [second[i] for i in shared]
    if not shared or len(set(y1) | set(y2)) == 1:
        return None  # expected agreement is 1: kappa = 0/0
    from sklearn.metrics import cohen_kappa_score

    # All four labels, so the confusion matrix has the same shape whatever was used.
    return float(cohen_kappa_score(y1, y2, labels=list(OUTCOMES)))


def _krippendorff_alpha(ratings: dict[str, dict[int, str]], raters: list[str], shared: list[int]) -> float | None:
    values = {ratings[r][i] for r in raters for i in shared if i in ratings[r]}
    if len(values) < 2:
        return None  # no variation at all: expected disagreement is 0, alpha = 0/0
    import krippendorff

    # Raters x items, nan where a rater did not rate the item. Items rated by one rater
    # carry no pairable value; leaving them out changes nothing and keeps the matrix small.
    code = {name: float(i) for i, name in enumerate(OUTCOMES)}
    matrix = np.array([[code[ratings[r][i]] if i in ratings[r] else np.nan for i in shared] for r in raters])
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                                     value_domain=[code[name] for name in OUTCOMES]))


# ---------------------------------------------------------------- CSV

def write_votes_csv(votes: list[dict], path: Path) -> None:
    """One row per vote, in the order given, columns rater,item,choice,tuned_side,score,
    comment,at (score empty when none). Written atomically; the csv module quotes a comment
    holding commas, quotes or newlines, so csv.DictReader reads back the same text."""
    with atomic_writer(Path(path)) as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for vote in votes:
            score = vote.get("score")
            writer.writerow([vote["rater"], vote["item"], vote["choice"], vote["tuned_side"],
                             "" if score is None else score, vote.get("comment") or "", vote["at"]])
