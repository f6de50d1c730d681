"""What `tunesmith eval` scores: the run's held-out rows, or any curated file in a format the
data stage reads. Each case is the turns before the last answer, and that answer as the
reference; its identity everywhere after (outputs.jsonl, the review page, votes) is its line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.formats import read_examples, summarise_reasons
from tunesmith.data.split import near_duplicates
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.io import read_jsonl_objects

# The guide: "a curated evaluation set of 100-200 examples that represent real production inputs".
GUIDE_RANGE = (100, 200)


@dataclass
class EvalCase:
    line: int
    file: str
    messages: list[dict[str, str]]  # the turns before the reference answer
    reference: str
    category: str | None = None


@dataclass
class EvalSet:
    cases: list[EvalCase]
    source: str | None  # the --data file; None: the run's held-out rows
    notes: list[str] = field(default_factory=list)
    seen_in_training: list[int] = field(default_factory=list)  # lines of cases the run trained on (near-duplicates)


def eval_set(run_dir: Path, cfg: RunConfig, data: str | Path | None) -> EvalSet:
    """The cases to score, capped at eval.max_examples, with notes for the user: rows of the
    file that could not be read (each with its reason), a size outside the guide's range, and
    cases the run trained on."""
    if data is None:
        cases, notes = held_out_cases(run_dir, cfg), []
    else:
        cases, notes = file_cases(Path(data))
    if cfg.eval.max_examples and len(cases) > cfg.eval.max_examples:
        notes.append(f"scoring the first {cfg.eval.max_examples} of {len(cases)} examples (eval.max_examples)")
        cases = cases[: cfg.eval.max_examples]
    size_note = guide_size_note(len(cases), data is not None)
    if size_note:
        notes.append(size_note)
    seen = seen_in_training(run_dir, cfg, cases) if data is not None else []
    if seen:
        notes.append(seen_note(seen, len(cases), cfg.clean.near_dup_threshold))
    return EvalSet(cases, None if data is None else str(data), notes, [line for line, _, _ in seen])


def seen_in_training(run_dir: Path, cfg: RunConfig, cases: list[EvalCase]) -> list[tuple[int, int, float]]:
    """(eval line, training line, similarity) for each case that is a near-duplicate of a row
    the run trained on (RUN/data/train.jsonl): its score measures memory, not learning. The
    held-out rows need no check: the split already removed such rows from training."""
    path = run_dir / "data" / "train.jsonl"
    if not path.is_file():
        return []
    trained = [row for _, row in read_jsonl_objects(path, "training rows", "run `tunesmith train` again with --restart")]
    rows = [{"line": c.line, "messages": c.messages + [{"role": "assistant", "content": c.reference}]} for c in cases]
    near = near_duplicates(rows, trained, cfg.clean.near_dup_threshold, cfg.clean.shingle_size)
    return [(row["line"], match["line"], similarity) for row, match, similarity in near]


def seen_note(seen: list[tuple[int, int, float]], n: int, threshold: float) -> str:
    shown = ", ".join(f"{line} (train line {train_line}, {similarity:.2f})" for line, train_line, similarity in seen[:5])
    more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
    return (f"{len(seen)} of {n} examples are near-duplicates (similarity >= {threshold:g}) of rows the run trained "
            f"on: lines {shown}{more}; their scores measure memory, not learning: leave them out of the eval file")


def held_out_cases(run_dir: Path, cfg: RunConfig) -> list[EvalCase]:
    path = run_dir / "data" / "val.jsonl"
    if not path.is_file():
        raise TunesmithError(f"{path} not found: run `tunesmith train` into {run_dir} first")
    file = cfg.data.val or cfg.data.train or "train"
    cases = []
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        case = _held_out_case(text, file)
        if case is None:
            raise TunesmithError(f"{path}:{number}: not a validation row as `tunesmith train` writes it "
                                 f"(was the file edited?); run train again with --restart to rewrite it")
        cases.append(case)
    if not cases:
        raise TunesmithError(f"{path} has no validation rows to evaluate")
    return cases


def _held_out_case(text: str, file: str) -> EvalCase | None:
    try:
        row = json.loads(text)
        return _case(row, file)
    except (ValueError, KeyError, TypeError):
        return None


def file_cases(path: Path) -> tuple[list[EvalCase], list[str]]:
    """Cases from any file the data stage reads (JSONL, JSON, CSV; instruction/response,
    alpaca, prompt/completion, messages, ShareGPT). Rows it cannot read are named, not
    dropped silently; a file with no readable row is refused."""
    read = read_examples(path)
    cases, unanswered = [], []
    for row in read.kept:
        case = _case(row, str(path))
        if case is None:
            unanswered.append(row["line"])
        else:
            cases.append(case)
    notes = []
    if read.removed:
        notes.append(f"{path}: {len(read.removed)} row(s) not evaluated: {summarise_reasons(read.removed)}")
    if unanswered:
        notes.append(f"{path}: {len(unanswered)} row(s) not evaluated: no reference answer after the last "
                     f"user turn (lines {', '.join(map(str, unanswered[:5]))}{' ...' if len(unanswered) > 5 else ''})")
    if not cases:
        raise UsageError(f"{path}: no row to evaluate ({'; '.join(notes) or 'the file is empty'}); each row needs a "
                         f"prompt and the expected answer")
    return cases, notes


def _case(row: dict[str, Any], file: str) -> EvalCase | None:
    """The last assistant turn is the reference; the turns before it are the prompt."""
    messages = row["messages"]
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not answers or not any(m["role"] == "user" for m in messages[: answers[-1]]):
        return None
    last = answers[-1]
    category = row.get("category")
    return EvalCase(int(row["line"]), file, messages[:last], str(messages[last]["content"]),
                    category if isinstance(category, str) and category.strip() else None)


def guide_size_note(n: int, curated: bool) -> str | None:
    low, high = GUIDE_RANGE
    if low <= n <= high:
        return None
    if n < low:
        what = "curated examples" if curated else "held-out rows"
        return (f"{n} {what}: the guide asks for {low}-{high} real production examples; with fewer, one answer "
                f"moves a score by {100 / max(n, 1):.1f} points, so small differences mean little")
    return (f"{n} examples: more than the guide's {low}-{high}; every example costs a generation per model, and "
            f"expert review of {n} pairs takes long (eval.max_examples caps it)")
