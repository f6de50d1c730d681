"""The data stage as `train` runs it: clean each file, stop on blocking errors, split, and
write everything into RUN/data so each row's fate can be looked up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.clean import CleanResult, clean_file
from tunesmith.data.report import write_report
from tunesmith.data.split import remove_leaks, split_examples
from tunesmith.data.tokens import token_encoder
from tunesmith.errors import TunesmithError
from tunesmith.io import write_jsonl_atomic
from tunesmith.train.encode import Encoded


@dataclass
class Prepared:
    train: list[Encoded]
    val: list[Encoded]
    report: dict[str, Any]  # the data stage's report.json for the training file


class DataBlocked(TunesmithError):
    """The data cannot be trained on; the message says why and where the report is."""


def prepare_run_data(cfg: RunConfig, tokenizer: Any, run_dir: Path) -> Prepared:
    """Writes RUN/data/{train,val,removed}.jsonl and report.{json,html}; removed rows carry
    the file they came from. Returns the encodings the clean stage made while measuring
    the rows, so nothing is encoded twice."""
    if not cfg.data.train:
        raise TunesmithError("data.train is not set: give --data FILE or data.train in the config", exit_code=2)
    data_dir = run_dir / "data"
    cleaned = _clean(cfg.data.train, cfg, tokenizer)
    write_report(cleaned, data_dir)  # first: a blocked run still shows why
    if not cleaned.trainable:
        raise DataBlocked(
            f"{cfg.data.train}: cannot train on this data: {'; '.join(cleaned.report['blocking'])}. "
            f"Report: {data_dir / 'report.html'}"
        )
    removed = [{"file": cfg.data.train, **r} for r in cleaned.removed]
    val_encodings = cleaned.encodings
    if cfg.data.val:
        val_cleaned = _clean(cfg.data.val, cfg, tokenizer)
        val_encodings = val_cleaned.encodings
        removed += [{"file": cfg.data.val, **r} for r in val_cleaned.removed]
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
        raise DataBlocked(f"{cfg.data.train}: no training rows left after the split; see {data_dir / 'removed.jsonl'}")
    write_jsonl_atomic(data_dir / "train.jsonl", train)
    write_jsonl_atomic(data_dir / "val.jsonl", val)
    write_jsonl_atomic(data_dir / "removed.jsonl", sorted(removed, key=lambda r: (r["file"], r["line"])))
    return Prepared([cleaned.encodings[r["line"]] for r in train], [val_encodings[r["line"]] for r in val],
                    cleaned.report)


def _clean(path: str, cfg: RunConfig, tokenizer: Any) -> CleanResult:
    return clean_file(
        path, cfg.clean,
        encode=token_encoder(tokenizer, cfg.data.train_on_inputs),
        keep_encodings=True,
        max_seq_len=cfg.train.max_seq_len,
        tokenizer_name=cfg.model.source,
        seed=cfg.train.seed,
    )
