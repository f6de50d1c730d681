"""The data stage as `train` runs it: clean each file, stop on blocking errors, split, and
write everything into RUN/data so each row's fate can be looked up, a blocked run's too."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.clean import CleanResult, clean_file
from tunesmith.data.formats import count_reasons
from tunesmith.data.mix import MIX_SOURCE, encode_general, general_rows, mix_count, shipped_rows
from tunesmith.data.report import write_report
from tunesmith.data.split import remove_leaks, split_examples
from tunesmith.data.tokens import token_encoder
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.io import require_file, write_jsonl_atomic
from tunesmith.models.encode import Encoded


@dataclass
class Prepared:
    train: list[Encoded]
    val: list[Encoded]
    report: dict[str, Any]  # the data stage's report.json for the training file


class DataBlocked(TunesmithError):
    """The data cannot be trained on; the message says why and where the report is."""


def check_data_files(cfg: RunConfig) -> None:
    """What can be refused before any work: no training file, a data file that is missing or
    not a readable file, or a validation file that is the training file (under any name).
    Cheap; `train` calls it before the pre-flight and before loading a model."""
    if not cfg.data.train:
        raise UsageError("data.train is not set: give --data FILE or data.train in the config")
    train = require_file(cfg.data.train, "training file (data.train)")
    if not cfg.data.val:
        return
    val = require_file(cfg.data.val, "validation file (data.val)")
    if os.path.samefile(train, val):
        raise UsageError(
            f"data.val (--val) {cfg.data.val} is the same file as data.train (--data) {cfg.data.train}: every "
            f"validation row would also be a training row, so eval loss would measure memory, not learning; give "
            f"a validation file with other examples, or leave data.val out to hold out {cfg.data.val_fraction:g} "
            f"of the training rows (data.val_fraction)"
        )


def prepare_run_data(cfg: RunConfig, tokenizer: Any, run_dir: Path) -> Prepared:
    """Writes RUN/data/{train,val,removed}.jsonl and report.{json,html}; removed rows carry
    the file they came from. A blocked run still gets removed.jsonl and a report whose
    `blocking` says why. Returns the encodings the clean stage made while measuring the
    rows, so nothing is encoded twice. With data.mix_general, general rows follow the
    user's rows in train.jsonl (see _mix_general)."""
    check_data_files(cfg)
    data_dir = run_dir / "data"
    encoder = token_encoder(tokenizer, cfg.data.train_on_inputs)  # one for both files: its vocabulary is read once
    cleaned = _clean(cfg.data.train, cfg, encoder)
    removed = [{"file": cfg.data.train, **r} for r in cleaned.removed]
    if not cleaned.trainable:
        _block(cleaned, removed, data_dir, f"{cfg.data.train}: cannot train on this data: "
                                           f"{'; '.join(cleaned.report['blocking'])}")
    val_encodings = cleaned.encodings
    if cfg.data.val:
        val_cleaned = _clean(cfg.data.val, cfg, encoder)
        val_encodings = val_cleaned.encodings
        removed += [{"file": cfg.data.val, **r} for r in val_cleaned.removed]
        if not val_cleaned.trainable:
            reason = f"the validation file {cfg.data.val} cannot be used: {'; '.join(val_cleaned.report['blocking'])}"
            _block(cleaned, removed, data_dir, f"{cfg.data.val}: cannot use this validation file: "
                                               f"{'; '.join(val_cleaned.report['blocking'])}", reason)
        val = val_cleaned.kept[: cfg.data.max_val_examples]
        train, leaks = remove_leaks(cleaned.kept, val, cfg.clean.near_dup_threshold, cfg.clean.shingle_size)
    else:
        split = split_examples(
            cleaned.kept, val_fraction=cfg.data.val_fraction, seed=cfg.train.seed,
            max_val=cfg.data.max_val_examples, leak_threshold=cfg.clean.near_dup_threshold,
            shingle_size=cfg.clean.shingle_size,
        )
        train, val, leaks = split.train, split.val, split.removed
    removed += [{"file": cfg.data.train, **r} for r in leaks]
    if not train:
        reason = _no_training_rows(cfg, len(cleaned.kept), len(val), len(leaks))
        _block(cleaned, removed, data_dir, f"{cfg.data.train}: cannot train on this data: {reason}", reason)
    mixed: list[tuple[dict[str, Any], Encoded]] = []
    if cfg.data.mix_general > 0:
        mixed, left_out = _mix_general(cfg, encoder, len(train), val, cleaned.report)
        removed += left_out
    write_report(cleaned, data_dir)
    write_jsonl_atomic(data_dir / "train.jsonl", train + [row for row, _ in mixed])
    write_jsonl_atomic(data_dir / "val.jsonl", val)
    write_jsonl_atomic(data_dir / "removed.jsonl", _in_file_order(removed))
    return Prepared([_from(cleaned.encodings, cfg.data.train, r["line"]) for r in train] + [e for _, e in mixed],
                    [_from(val_encodings, cfg.data.val or cfg.data.train, r["line"]) for r in val], cleaned.report)


def _mix_general(cfg: RunConfig, encoder: Any, n_train: int, val: list[dict[str, Any]],
                 report: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], Encoded]], list[dict[str, Any]]]:
    """The general rows that make data.mix_general of the training set (capped at what
    tunesmith ships), chosen by train.seed, so the same run mixes the same rows. Each is
    encoded and judged as a user's row is; one near a validation row is left out too
    (training on it would flatter eval loss). In train.jsonl a mixed row says
    "file": "general-mix" and its line in the shipped file. Records report["mix_general"]
    and a note; returns ([(row, encoding)], [left-out rows for removed.jsonl])."""
    share = cfg.data.mix_general
    wanted, shipped = mix_count(n_train, share), shipped_rows()
    chosen = general_rows(min(wanted, shipped), cfg.train.seed)
    chosen, leaks = remove_leaks(chosen, val, cfg.clean.near_dup_threshold, cfg.clean.shingle_size)
    kept, refused = encode_general(chosen, encoder, cfg.train.max_seq_len)
    left_out = [{"file": MIX_SOURCE, **r} for r in leaks] + refused
    mixed = [({**row, "file": MIX_SOURCE}, encoded) for row, encoded in kept]
    reasons = count_reasons(r["reasons"] for r in left_out)
    report["mix_general"] = {"share": share, "rows": len(mixed), "shipped": shipped, "wanted": wanted,
                             "left_out": reasons, "tokens": sum(len(e.input_ids) for _, e in mixed)}
    report["notes"].append(_mix_note(share, n_train, len(mixed), wanted, shipped, reasons))
    return mixed, left_out


def _mix_note(share: float, n_train: int, rows: int, wanted: int, shipped: int, left_out: dict[str, int]) -> str:
    total = n_train + rows
    note = (f"data.mix_general {share:g}: {rows} general instruction rows shipped with tunesmith added to the "
            f"{n_train} training rows ({rows / total if total else 0:.0%} of {total}; validation has none)")
    if wanted > shipped:
        note += (f"; {wanted} were asked for, but tunesmith ships {shipped}, so all {shipped} were chosen: lower "
                 f"data.mix_general, or add general rows of your own to the training file")
    if left_out:
        counts = ", ".join(f"{code} {n}" for code, n in left_out.items())
        note += f"; left out (in removed.jsonl, file {MIX_SOURCE}): {counts}"
    return note


def _from(encodings: dict[int, Encoded], file: str, line: int) -> Encoded:
    return replace(encodings[line], origin=f"{file}:{line}")


def _no_training_rows(cfg: RunConfig, kept: int, val: int, leaks: int) -> str:
    """Why the split left no training row, with the counts: every kept row went to validation
    or was removed as a near-duplicate of a validation row."""
    threshold = cfg.clean.near_dup_threshold
    if cfg.data.val:
        return (f"no training row is left: all {kept} kept rows are near-duplicates (similarity >= {threshold:g}) "
                f"of the {val} rows used from the validation file {cfg.data.val} (leaks_into_val {leaks}); give a "
                f"validation file with other examples, or leave data.val out to hold out a share of the training rows")
    return (f"no training row is left: of {kept} kept rows, {val} were held out for validation and the other "
            f"{leaks} are near-duplicates of them (leaks_into_val {leaks}, similarity >= {threshold:g}); add varied "
            f"examples, or raise clean.near_dup_threshold")


def _block(cleaned: CleanResult, removed: list[dict[str, Any]], data_dir: Path, message: str,
           reason: str | None = None) -> None:
    """Write what a blocked run needs to be understood (removed.jsonl; report.json with
    trainable false and the reason), then refuse with a message that stands on its own."""
    if reason is not None:
        cleaned.report["blocking"].append(reason)
        cleaned.report["trainable"] = False
    write_report(cleaned, data_dir)
    write_jsonl_atomic(data_dir / "removed.jsonl", _in_file_order(removed))
    raise DataBlocked(f"{message}. Reasons per line: {data_dir / 'removed.jsonl'}; report: {data_dir / 'report.html'}")


def _in_file_order(removed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(removed, key=lambda r: (r["file"], r["line"]))


def clean_report(path: str, cfg: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """The data report (as report.json) of one file cleaned and measured exactly as `train`
    does it: the run's clean settings, tokenizer, chat template and max_seq_len. What
    `plan --dataset` counts tokens from, so plan and train agree. Writes nothing."""
    return _clean(path, cfg, token_encoder(tokenizer, cfg.data.train_on_inputs), keep_encodings=False).report


def _clean(path: str, cfg: RunConfig, encoder: Any, *, keep_encodings: bool = True) -> CleanResult:
    return clean_file(
        path, cfg.clean,
        encode=encoder,
        keep_encodings=keep_encodings,
        max_seq_len=cfg.train.max_seq_len,
        tokenizer_name=cfg.model.source,
        seed=cfg.train.seed,
    )
