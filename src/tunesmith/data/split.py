"""Seeded train/validation split: stratified by category, with no near-duplicate of a
validation row left in train (else eval loss measures memory, not learning)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunesmith.data.clean import conversation_text, row_json
from tunesmith.data.dedup import NearDupIndex
from tunesmith.data.formats import count_reasons, read_examples, summarise_reasons
from tunesmith.data.stats import group_key
from tunesmith.errors import DataError
from tunesmith.io import write_json_atomic, write_jsonl_atomic


# What split_file writes into its folder (rest.jsonl only with a subset).
SPLIT_FILES = ("train.jsonl", "val.jsonl", "removed.jsonl", "rest.jsonl", "split.json")


@dataclass
class SplitResult:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    removed: list[dict[str, Any]] = field(default_factory=list)  # train rows too close to a val row


def stratified_sample(rows: Sequence[dict[str, Any]], n: int, seed: int) -> tuple[list[int], list[int]]:
    """(chosen indices, the rest), both in input order. Each category gets its share of n by
    largest remainder, so a 5% category stays ~5% of the sample."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(group_key(row) if row.get("category") else "", []).append(i)
    total = len(rows)
    exact = {name: len(members) * n / total for name, members in groups.items()} if total else {}
    quota = {name: int(share) for name, share in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - quota[name]), name))
    for name in by_remainder[: n - sum(quota.values())]:
        quota[name] += 1
    rng = random.Random(seed)
    chosen: set[int] = set()
    for name in sorted(groups):
        members = list(groups[name])
        rng.shuffle(members)
        chosen.update(members[: quota[name]])
    return sorted(chosen), [i for i in range(total) if i not in chosen]


def holdout_size(n_rows: int, val_fraction: float, max_val: int | None) -> int:
    """Rows held out: at least one, and never all (0.95 of 10 rows rounds to 10, which
    would leave nothing to train on)."""
    if n_rows < 2:
        return 0
    n = min(max(1, round(n_rows * val_fraction)), n_rows - 1)
    return min(n, max_val) if max_val else n


def split_examples(
    rows: Sequence[dict[str, Any]],
    *,
    val_fraction: float,
    seed: int,
    max_val: int | None = None,
    leak_threshold: float = 0.7,
    shingle_size: int = 3,
) -> SplitResult:
    n_val = holdout_size(len(rows), val_fraction, max_val)
    val_idx, train_idx = stratified_sample(rows, n_val, seed)
    train, removed = remove_leaks([rows[i] for i in train_idx], [rows[i] for i in val_idx],
                                  leak_threshold, shingle_size)
    return SplitResult(train, [rows[i] for i in val_idx], removed)


def remove_leaks(
    train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]], threshold: float, shingle_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drop train rows that are near-duplicates of a validation row, with the reason."""
    near = {id(row): (match, similarity) for row, match, similarity in near_duplicates(train, val, threshold, shingle_size)}
    kept, removed = [], []
    for row in train:
        if id(row) in near:
            match, similarity = near[id(row)]
            reason = f"leaks_into_val: near-duplicate of validation line {match['line']} (similarity {similarity:.2f})"
            removed.append({"line": row["line"], "reasons": [reason], "raw": row_json(row)})
        else:
            kept.append(row)
    return kept, removed


def near_duplicates(rows: Sequence[dict[str, Any]], others: Sequence[dict[str, Any]], threshold: float,
                    shingle_size: int) -> list[tuple[dict[str, Any], dict[str, Any], float]]:
    """(row, the most similar of `others`, similarity) for each row that is a near-duplicate
    of one of `others` (word-shingle Jaccard >= threshold, on the user and assistant turns)."""
    index = NearDupIndex(threshold=threshold, shingle_size=shingle_size)
    index.add_many(range(len(others)), [conversation_text(row["messages"]) for row in others])
    found = []
    for row in rows:
        hits = index.query(conversation_text(row["messages"]))
        if hits:
            j, similarity = hits[0]
            found.append((row, others[j], similarity))
    return found


def subset(rows: Sequence[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """The guide's "iterate on 10% of your data first": a stratified, seeded share."""
    return subset_and_rest(rows, fraction, seed)[0]


def subset_and_rest(rows: Sequence[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    chosen, rest = stratified_sample(rows, max(1, round(len(rows) * fraction)), seed)
    return [rows[i] for i in chosen], [rows[i] for i in rest]


def split_file(
    path: str | Path,
    out_dir: Path,
    *,
    val_fraction: float,
    seed: int,
    max_val: int | None = None,
    subset_fraction: float | None = None,
    leak_threshold: float = 0.7,
) -> dict[str, Any]:
    """`tunesmith data split`: writes train.jsonl, val.jsonl, removed.jsonl and split.json
    (and rest.jsonl, the train rows left out of a --subset). A file that leaves no training
    row is refused with the counts, and nothing is written."""
    read = read_examples(path)
    if not read.kept:
        raise DataError(f"{path}: no row can be split: all {len(read.removed)} rows were removed: "
                        f"{summarise_reasons(read.removed)}")
    result = split_examples(read.kept, val_fraction=val_fraction, seed=seed, max_val=max_val,
                            leak_threshold=leak_threshold)
    if not result.train:
        raise DataError(
            f"{path}: no training row is left: of {len(read.kept)} rows, {len(result.val)} were held out for "
            f"validation and the other {len(result.removed)} are near-duplicates of them (leaks_into_val "
            f"{len(result.removed)}, similarity >= {leak_threshold:g}); add varied examples, or raise "
            f"--near-dup-threshold"
        )
    train, rest = result.train, []
    if subset_fraction:  # the rest is written out too: nothing is lost
        train, rest = subset_and_rest(result.train, subset_fraction, seed)
    removed = sorted(read.removed + result.removed, key=lambda r: r["line"])
    summary = {
        "file": str(path),
        "seed": seed,
        "val_fraction": val_fraction,
        "subset": subset_fraction,
        "train": len(train),
        "val": len(result.val),
        "not_in_subset": len(rest),
        "removed": len(removed),
        "reasons": count_reasons(r["reasons"] for r in removed),
        "train_by_group": dict(Counter(group_key(r) for r in train).most_common()),
        "val_by_group": dict(Counter(group_key(r) for r in result.val).most_common()),
    }
    write_jsonl_atomic(out_dir / "train.jsonl", train)
    write_jsonl_atomic(out_dir / "val.jsonl", result.val)
    write_jsonl_atomic(out_dir / "removed.jsonl", removed)
    if subset_fraction:
        write_jsonl_atomic(out_dir / "rest.jsonl", rest)
    write_json_atomic(out_dir / "split.json", summary)
    return summary
