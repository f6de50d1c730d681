"""The clean stage: every check on every row, with a reason for every row it touches.

Order matters and is fixed: read (format, UTF-8) -> per-row checks (encoding, quality, PII)
-> rows far too long, by characters (see lengths.py) -> duplicates (on the text as it will
be trained on: after fixes and redaction) -> token lengths in the target tokenizer (only for
survivors: the slow part) -> balance cap -> stats.
Each finding has a code. A code either removes the row (it goes to removed.jsonl with all
its reasons) or only warns (the row is kept and the code counted); `clean.drop` and
`clean.keep` move codes between the two. Nothing is dropped silently: every non-blank
input line ends up once in `kept` or once in `removed`.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2

from tunesmith.config import NER_TYPES, PII_TYPES, REMOVE_BY_DEFAULT, CleanConfig
from tunesmith.data import stats
from tunesmith.data.dedup import Duplicate, find_duplicates
from tunesmith.data.encoding import repair_text, scan_text
from tunesmith.data.formats import ReadResult, count_reasons, read_examples, summarise_reasons
from tunesmith.data.lengths import CharEstimate, LengthBound, TokenEncoder
from tunesmith.data.pii import find_pii, redact
from tunesmith.data.pii_ner import enable_ner
from tunesmith.data.quality import quality_issues
from tunesmith.data.tokens import Encoder
from tunesmith.models.encode import Encoded, TemplateError

# What a chat template raises for a row it does not take: jinja's errors (raise_exception in
# the template, an undefined field) and ours (a template that does not render prefix by prefix).
TEMPLATE_ERRORS = (jinja2.TemplateError, TemplateError)

# Codes on readable rows, and whether each removes the row by default, are in config
# (REMOVE_BY_DEFAULT, WARN_BY_DEFAULT), which refuses unknown ones in clean.drop/keep.
# `pii` follows clean.pii instead: drop removes, report warns, redact fixes.

TOKEN_CHUNK = 512  # rows encoded per tokenizer call: batched for speed, bounded for memory


@dataclass
class CleanResult:
    kept: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    report: dict[str, Any]
    # line -> encoding of each kept row, when asked for (`keep_encodings`): training reuses
    # them instead of encoding every row a second time
    encodings: dict[int, Encoded] = field(default_factory=dict)

    @property
    def trainable(self) -> bool:
        return not self.report["blocking"]


@dataclass
class _Row:
    """A readable row on its way through the checks."""

    line: int
    messages: list[dict[str, str]]
    raw: str
    category: str | None = None
    removes: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    redacted: Counter = field(default_factory=Counter)
    tokens: tuple[int, int] | None = None  # (all tokens, trained tokens) in the target tokenizer
    encoded: Encoded | None = None  # only with keep_encodings

    def out(self) -> dict[str, Any]:
        row: dict[str, Any] = {"line": self.line, "messages": self.messages}
        if self.category is not None:
            row["category"] = self.category
        if self.fixes:
            row["fixes"] = self.fixes
        if self.warns:
            row["warnings"] = self.warns
        if self.redacted:
            row["redacted"] = dict(sorted(self.redacted.items()))
        return row


def conversation_text(messages: list[dict[str, str]]) -> str:
    """The text duplicates are judged on: the user and assistant turns, with their roles.
    System prompts are left out: rows that share a long system prompt and differ in a short
    question would otherwise look near-identical."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


class Policy:
    """Which codes remove a row and which only warn, after clean.drop / clean.keep."""

    def __init__(self, opts: CleanConfig) -> None:
        # The codes and types were checked when the config was validated.
        self.pii_types = list(opts.pii_types or (PII_TYPES + NER_TYPES if opts.pii_ner else PII_TYPES))
        self.removing = (REMOVE_BY_DEFAULT | set(opts.drop)) - set(opts.keep)

    def file(self, row: _Row, code: str, detail: str) -> None:
        finding = f"{code}: {detail}" if detail else code
        (row.removes if code in self.removing else row.warns).append(finding)


def clean_file(
    path: str | Path,
    opts: CleanConfig | None = None,
    *,
    encode: Encoder | None = None,
    keep_encodings: bool = False,
    max_seq_len: int | None = None,
    tokenizer_name: str | None = None,
    seed: int = 0,
    on_stage: Callable[[str], None] | None = None,
) -> CleanResult:
    """Read FILE and run every check; the result says what to keep, what to remove and why.
    With `encode`, rows are measured in the target tokenizer; `keep_encodings` keeps the
    encodings of the kept rows (for training; a check keeps only the counts)."""
    start = time.perf_counter()
    opts = opts or CleanConfig()
    policy = Policy(opts)
    stage = on_stage or (lambda name: None)
    stage("read")
    read = read_examples(path)
    rows = [_Row(r["line"], r["messages"], raw, r.get("category")) for r, raw in zip(read.kept, read.kept_raw)]
    if opts.pii_ner:
        enable_ner([t for t in policy.pii_types if t in NER_TYPES])
    stage("encoding, quality, PII" + (" (with names: ~100 rows/s)" if opts.pii_ner else ""))
    pii_found: Counter = Counter()
    for row in rows:
        check_encoding(row, opts.fix_encoding, policy)
        check_quality(row, policy)
        pii_found += check_pii(row, opts.pii, policy.pii_types)
    live = [r for r in rows if not r.removes]
    bound = length_bound(encode)
    if max_seq_len is not None and bound is not None and "too_long" in policy.removing:
        # Before duplicates and tokens, whose cost grows with the row: a 50 MB row is
        # removed here in a sum over its characters.
        check_chars(live, bound, max_seq_len, policy)
        live = [r for r in live if not r.removes]
    duplicates: dict[str, int] = {}
    if opts.dedup:
        stage("duplicates")
        duplicates = mark_duplicates(live, opts, policy)
        live = [r for r in live if not r.removes]
    if encode is not None:
        stage("tokens")
        check_tokens(live, encode, max_seq_len, policy, keep_encodings)
        live = [r for r in live if not r.removes]
    if opts.balance_cap:
        cap_categories(live, opts.balance_cap, seed, policy)
        live = [r for r in live if not r.removes]
    kept = [r.out() for r in rows if not r.removes]
    removed = sorted(
        read.removed + [{"line": r.line, "reasons": r.removes, "raw": r.raw} for r in rows if r.removes],
        key=lambda r: r["line"],
    )
    report = build_report(
        path, read, rows, kept, removed, opts, pii_found, duplicates, max_seq_len, tokenizer_name
    )
    report["seconds"] = round(time.perf_counter() - start, 2)
    encodings = {r.line: r.encoded for r in rows if r.encoded is not None and not r.removes}
    return CleanResult(kept, removed, report, encodings)


def row_json(row: dict[str, Any]) -> str:
    """A kept row as the JSON text a removed row carries when its source line is not at hand."""
    return json.dumps({k: v for k, v in row.items() if k != "line"}, ensure_ascii=False)


# ---------------------------------------------------------------- per-row checks

def check_encoding(row: _Row, fix: bool, policy: Policy) -> None:
    for i, message in enumerate(row.messages):
        content = message["content"]
        if fix:
            repaired, fixes = repair_text(content)
            if repaired != content:
                message["content"] = content = repaired
                row.fixes += [f"{code}: messages[{i}]" for code in fixes]
        for issue in scan_text(content):  # what is left after a repair, or everything
            policy.file(row, issue.code, f"messages[{i}]: {issue.detail}")


def check_quality(row: _Row, policy: Policy) -> None:
    for issue in quality_issues(row.messages):
        policy.file(row, issue.code, issue.detail)


def check_pii(row: _Row, mode: str, types: list[str]) -> Counter:
    found: Counter = Counter()
    for i, message in enumerate(row.messages):
        matches = find_pii(message["content"], types)
        if not matches:
            continue
        in_message = Counter(m.type for m in matches)
        found += in_message
        where = f"{', '.join(sorted(in_message))} in messages[{i}]"
        if mode == "redact":
            message["content"] = redact(message["content"], matches)
            row.redacted += in_message
        elif mode == "drop":
            row.removes.append(f"pii: {where}")
        else:
            row.warns.append(f"pii: {where}")
    return found


def mark_duplicates(rows: list[_Row], opts: CleanConfig, policy: Policy) -> dict[str, int]:
    """Mark every row but the first of each cluster; returns counts by kind."""
    texts = [conversation_text(r.messages) for r in rows]
    found = find_duplicates(texts, threshold=opts.near_dup_threshold, shingle_size=opts.shingle_size)
    if opts.semantic_dedup:
        from tunesmith.data.dedup import find_semantic_duplicates

        remaining = [i for i in range(len(rows)) if i not in found]
        semantic = find_semantic_duplicates([texts[i] for i in remaining], threshold=opts.semantic_threshold)
        found.update({remaining[i]: Duplicate(remaining[dup.of], dup.kind, dup.similarity)
                      for i, dup in semantic.items()})
    counts: Counter = Counter()
    for index, dup in sorted(found.items()):
        counts[dup.kind] += 1
        original = rows[dup.of].line
        if dup.kind == "exact":
            policy.file(rows[index], "duplicate", f"same as line {original}")
        else:
            code = "near_duplicate" if dup.kind == "near" else "semantic_duplicate"
            policy.file(rows[index], code, f"line {original} (similarity {dup.similarity:.2f})")
    return {"exact": counts["exact"], "near": counts["near"], "semantic": counts["semantic"]}


def length_bound(encode: Encoder | None) -> LengthBound | None:
    """How rows are judged by characters: by the tokenizer's longest token when there is one
    (a custom encoder has none: its rows are only counted), else by an estimate."""
    if encode is None:
        return CharEstimate()
    return encode if isinstance(encode, TokenEncoder) else None


def check_chars(rows: list[_Row], bound: LengthBound, max_seq_len: int, policy: Policy) -> None:
    for row in rows:
        detail = bound.too_long(row.messages, max_seq_len)
        if detail is not None:
            policy.file(row, "too_long", detail)


def check_tokens(rows: list[_Row], encode: Encoder, max_seq_len: int | None, policy: Policy, keep: bool) -> None:
    """Token counts of every row, exactly as training encodes it (template included)."""
    for start in range(0, len(rows), TOKEN_CHUNK):
        chunk = rows[start : start + TOKEN_CHUNK]
        for row, encoded in zip(chunk, _encode_chunk(chunk, encode)):
            if encoded is None:
                continue  # the template refused it: removed with that reason
            row.encoded = encoded if keep else None
            _judge_length(row, (len(encoded.input_ids), encoded.n_trained), max_seq_len, policy)


def _encode_chunk(chunk: list[_Row], encode: Encoder) -> list[Encoded | None]:
    """The chunk in one call; when the chat template refuses a row (a system turn a model
    does not take, turns that do not alternate), each row alone, so only the refused rows
    go, with the template's own words. They cannot be kept: training could not encode them."""
    try:
        return list(encode([r.messages for r in chunk]))
    except TEMPLATE_ERRORS:
        pass
    encoded: list[Encoded | None] = []
    for row in chunk:
        try:
            encoded.append(encode([row.messages])[0])
        except TEMPLATE_ERRORS as e:
            row.removes.append(template_reason(e))
            encoded.append(None)
    return encoded


def template_reason(e: Exception) -> str:
    message = " ".join(str(e).split()) or type(e).__name__
    return f"template_error: the model's chat template refuses this row: {message[:200]}"


def _judge_length(row: _Row, tokens: tuple[int, int], max_seq_len: int | None, policy: Policy) -> None:
    row.tokens = total, trained = tokens
    if max_seq_len is not None and total > max_seq_len:
        policy.file(row, "too_long", f"{total} tokens > max_seq_len {max_seq_len}")
    elif trained == 0:
        policy.file(row, "no_trained_tokens", "")


def cap_categories(rows: list[_Row], cap: int, seed: int, policy: Policy) -> None:
    """Keep a seeded random `cap` rows of each category; a file is often sorted, so the
    first N would be a biased choice."""
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(stats.group_key({"category": row.category, "messages": row.messages}), []).append(row)
    for name, members in sorted(groups.items()):
        if len(members) <= cap:
            continue
        chosen = set(id(r) for r in random.Random(seed).sample(members, cap))
        for row in members:
            if id(row) not in chosen:
                policy.file(row, "over_balance_cap", f"{name!r} has {len(members)} rows > cap {cap}")


# ---------------------------------------------------------------- report

def build_report(
    path: str | Path,
    read: ReadResult,
    rows: list[_Row],
    kept: list[dict[str, Any]],
    removed: list[dict[str, Any]],
    opts: CleanConfig,
    pii_found: Counter,
    duplicates: dict[str, int],
    max_seq_len: int | None,
    tokenizer_name: str | None,
) -> dict[str, Any]:
    input_rows = len(read.kept) + len(read.removed)
    kept_rows = [r for r in rows if not r.removes]
    report: dict[str, Any] = {
        "file": str(path),
        "file_format": read.file_format,
        "formats": read.formats,
        "input_rows": input_rows,
        "kept": len(kept),
        "removed": len(removed),
        "reasons": count_reasons(r["reasons"] for r in removed),
        "warnings": count_reasons(r.warns for r in kept_rows),
        "fixes": count_reasons(r.fixes for r in kept_rows),
        "pii_mode": opts.pii,
        "pii": {t: pii_found[t] for t in PII_TYPES + NER_TYPES if pii_found[t]},
        "duplicates": duplicates,
        "balance": stats.balance(kept),
        "chars": stats.percentiles([sum(len(m["content"]) for m in r["messages"]) for r in kept]),
        "tokens": _token_stats(rows, max_seq_len, tokenizer_name),
        "volume": stats.volume_guidance(len(kept), opts.task_type),
        "options": opts.model_dump(mode="json"),
    }
    report["notes"] = notes(report)
    report["blocking"] = blocking(report, read, opts, removed)
    report["trainable"] = not report["blocking"]
    return report


def _token_stats(rows: list[_Row], max_seq_len: int | None, tokenizer_name: str | None) -> dict[str, Any] | None:
    counted = [r.tokens for r in rows if r.tokens is not None and not r.removes]
    if not any(r.tokens is not None for r in rows):
        return None
    totals = [total for total, _ in counted]
    return {
        "tokenizer": tokenizer_name,
        "max_seq_len": max_seq_len,
        **stats.percentiles(totals),
        "per_epoch": sum(totals),
        "trained_per_epoch": sum(trained for _, trained in counted),
    }


def notes(report: dict[str, Any]) -> list[str]:
    """Dataset-level warnings a user should read before training."""
    out = []
    balance = report["balance"]
    if balance["dominant"]:
        out.append(
            f"{balance['top_share']:.0%} of rows are {balance['field']} {balance['top']!r}: the model will lean "
            f"towards it; fine for one task, otherwise add other kinds or set clean.balance_cap"
        )
    if report["volume"] and report["volume"]["verdict"] != "within":
        out.append(report["volume"]["advice"])
    if report["pii"] and report["pii_mode"] == "report":
        out.append(f"PII left in the data ({', '.join(report['pii'])}): use --pii redact or --pii drop before training")
    for code in ("refusal", "truncated"):
        if report["warnings"].get(code):
            n = report["warnings"][code]
            out.append(f"{n} row{'s' * (n != 1)} flagged {code} kept; --drop {code} removes them")
    return out


def blocking(report: dict[str, Any], read: ReadResult, opts: CleanConfig, removed: list[dict[str, Any]]) -> list[str]:
    """Why the data cannot be trained on; empty when it can. Each reason carries its counts
    and an example line per code: `train` shows it with nothing printed above it. Where the
    reasons per line are is for the caller to add (check writes nothing, clean and train do)."""
    out = []
    unreadable = len(read.removed)  # the reader removes only rows it cannot read as examples
    share = unreadable / max(1, report["input_rows"])
    if report["kept"] == 0:
        out.append(f"no row is left to train on: all {report['input_rows']} rows were removed: "
                   f"{summarise_reasons(removed)}")
    elif share > opts.max_invalid_fraction:
        out.append(
            f"{unreadable} of {report['input_rows']} rows ({share:.0%}) cannot be read as examples, above "
            f"clean.max_invalid_fraction {opts.max_invalid_fraction}: {summarise_reasons(read.removed)}; "
            f"fix the file or raise the limit"
        )
    return out
