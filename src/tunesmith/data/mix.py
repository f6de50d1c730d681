"""General instruction rows mixed into training, against catastrophic forgetting.

The guide's third remedy: "mixing your fine-tuning data with a small percentage of general
instruction data". `general_mix.jsonl` ships with tunesmith (written for it, copied from no
dataset): short explanations, rewrites and summaries, classification, simple reasoning,
lists, small code snippets, polite emails, definitions, arithmetic with working and format
following, in the instruction/response format. None of it asks a question of the general
eval set (eval/general_set.jsonl), so the forgetting check is not taught its answers.

`data.mix_general` is the share of the mixed training set these rows make up; the data
stage (prepare.py) adds them to the training rows only, never to validation.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from typing import Any

from tunesmith.data.clean import TEMPLATE_ERRORS, row_json, template_reason
from tunesmith.data.formats import read_examples, summarise_reasons
from tunesmith.data.tokens import Encoder
from tunesmith.errors import TunesmithError
from tunesmith.models.encode import Encoded

MIX_FILE = "general_mix.jsonl"
# What a mixed row says in RUN/data/train.jsonl ("file") and in messages about a training
# step (origin "general-mix:LINE"), where a user's row says its file.
MIX_SOURCE = "general-mix"


def mix_count(train_rows: int, share: float) -> int:
    """Rows to add to `train_rows` so that they are `share` of the mixed set:
    share * n / (1 - share), rounded half up. The share is taken as written (0.2 is 1/5,
    not the float just above it), so 10 rows at 0.2 give 2.5 -> 3, on every machine."""
    if train_rows < 0:
        raise ValueError(f"train_rows must be >= 0, got {train_rows}")
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    exact = Fraction(str(share))
    return math.floor(train_rows * exact / (1 - exact) + Fraction(1, 2))


def shipped_rows() -> int:
    return len(_shipped())


def general_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` rows of the shipped file, a seeded choice without replacement, in the
    file's order; each is {"line", "messages"} as the data stage reads it, "line" being
    its line in general_mix.jsonl. The same seed gives the same rows."""
    rows = _shipped()
    if not 0 <= count <= len(rows):
        raise ValueError(f"count must be between 0 and {len(rows)} (the rows shipped), got {count}")
    chosen = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [copy.deepcopy(rows[i]) for i in chosen]


@lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Any], ...]:
    """The shipped rows, read once per process exactly as a user's file is read."""
    with resources.as_file(resources.files("tunesmith.data") / MIX_FILE) as path:
        read = read_examples(path)
    if read.removed:  # a package file that no longer reads cleanly is a broken install
        raise TunesmithError(f"tunesmith/data/{MIX_FILE}: {len(read.removed)} rows cannot be read "
                             f"({summarise_reasons(read.removed)}); the installed package is damaged: "
                             f"reinstall tunesmith")
    return tuple(read.kept)


def encode_general(rows: list[dict[str, Any]], encode: Encoder,
                   max_seq_len: int | None) -> tuple[list[tuple[dict[str, Any], Encoded]], list[dict[str, Any]]]:
    """Encode chosen rows as the clean stage encodes a user's rows (the same encoder: chat
    template, EOS, train_on_inputs) and judge them the same way: a row the template refuses,
    one longer than max_seq_len or one with no trained token is left out, with its reason.
    Returns ([(row, encoding)], [removed row as removed.jsonl holds it])."""
    kept: list[tuple[dict[str, Any], Encoded]] = []
    removed: list[dict[str, Any]] = []
    for row, encoded in zip(rows, _encode_each(rows, encode)):
        if isinstance(encoded, str):
            reason = encoded
        elif max_seq_len is not None and len(encoded.input_ids) > max_seq_len:
            reason = f"too_long: {len(encoded.input_ids)} tokens > max_seq_len {max_seq_len}"
        elif encoded.n_trained == 0:
            reason = "no_trained_tokens"
        else:
            kept.append((row, replace(encoded, origin=f"{MIX_SOURCE}:{row['line']}")))
            continue
        removed.append({"file": MIX_SOURCE, "line": row["line"], "reasons": [reason], "raw": row_json(row)})
    return kept, removed


def _encode_each(rows: list[dict[str, Any]], encode: Encoder) -> list[Encoded | str]:
    """All rows in one call; when the template refuses one, each alone, so only the refused
    rows go (as the template's reason)."""
    conversations = [row["messages"] for row in rows]
    try:
        return list(encode(conversations))
    except TEMPLATE_ERRORS:
        pass
    out: list[Encoded | str] = []
    for messages in conversations:
        try:
            out.append(encode([messages])[0])
        except TEMPLATE_ERRORS as e:
            out.append(template_reason(e))
    return out
