"""Pack tokenized examples into rows of at most max_seq_len tokens.

Position ids restart at 0 for every example; transformers reads a restart as a sequence
boundary and builds a block-diagonal causal mask, so packed examples never attend to each
other (tests prove packed loss equals unpacked loss per example). Padding at the end of a
row is its own "example": never trained, never attended to by real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunesmith.models.encode import IGNORE, Encoded

# First-fit looks at this many open rows: near-zero waste at a bounded cost per example.
OPEN_ROWS = 64


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # FILE:LINE of each example in the row

    def add(self, example: Encoded) -> None:
        if example.origin:
            self.origins.append(example.origin)
        self.input_ids.extend(example.input_ids)
        self.trained.extend(example.trained)
        self.position_ids.extend(range(len(example.input_ids)))

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(examples: list[Encoded], max_seq_len: int) -> list[Row]:
    """First-fit packing in the given (already shuffled) order."""
    closed: list[Row] = []
    open_rows: list[Row] = []
    for example in examples:
        size = len(example.input_ids)
        if size > max_seq_len:
            raise ValueError(f"example of {size} tokens exceeds max_seq_len {max_seq_len}")
        target = next((r for r in open_rows if len(r) + size <= max_seq_len), None)
        if target is None:
            target = Row()
            open_rows.append(target)
            if len(open_rows) > OPEN_ROWS:
                closed.append(open_rows.pop(0))
        target.add(example)
    return closed + open_rows


def one_per_row(examples: list[Encoded]) -> list[Row]:
    rows = []
    for example in examples:
        row = Row()
        row.add(example)
        rows.append(row)
    return rows


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row in the batch (not to max_seq_len: less work on short batches)."""
    width = max(len(r) for r in rows)
    input_ids, labels, positions = [], [], []
    for row in rows:
        pad = width - len(row)
        input_ids.append(row.input_ids + [pad_id] * pad)
        labels.append([t if keep else IGNORE for t, keep in zip(row.input_ids, row.trained)] + [IGNORE] * pad)
        positions.append(row.position_ids + list(range(pad)))
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "n_real": torch.tensor(sum(len(r) for r in rows)),
    }
