"""What the model will be trained on: each example through the chat template, with the
trained tokens marked. Loss masking that is silently wrong and EOS that is never trained
(so the tuned model never stops) are the failures this makes visible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from tunesmith.data.clean import TEMPLATE_ERRORS, template_reason
from tunesmith.data.lengths import TokenEncoder
from tunesmith.models.encode import encode


@dataclass
class Span:
    text: str
    trained: bool
    eos: bool  # the end-of-sequence token itself


@dataclass
class Preview:
    line: int
    spans: list[Span]
    tokens: int
    trained: int
    eos_trained: bool  # every assistant turn ends in a trained EOS


@dataclass
class Skipped:
    """A row that is not shown, and why (the reason training would remove it with)."""

    line: int
    reason: str


def preview_rows(tokenizer: Any, rows: Iterable[dict[str, Any]], *, train_on_inputs: bool = False,
                 max_seq_len: int) -> Iterator[Preview | Skipped]:
    """Each row's preview, or why it has none: a row far too long for max_seq_len is not
    tokenised (a 50 MB row would take minutes; see lengths.py), a row the chat template
    refuses is not rendered."""
    bound = TokenEncoder(tokenizer)
    for row in rows:
        too_long = bound.too_long(row["messages"], max_seq_len)
        if too_long is not None:
            yield Skipped(row["line"], f"too_long: {too_long}")
            continue
        try:
            yield preview_row(tokenizer, row, train_on_inputs)
        except TEMPLATE_ERRORS as e:
            yield Skipped(row["line"], template_reason(e))


def preview_row(tokenizer: Any, row: dict[str, Any], train_on_inputs: bool = False) -> Preview:
    encoded = encode(tokenizer, row["messages"], train_on_inputs)
    eos_id = tokenizer.eos_token_id
    spans: list[Span] = []
    run: list[int] = []  # consecutive non-EOS tokens with the same trained flag
    run_trained = False
    for token, trained in zip(encoded.input_ids, encoded.trained):
        is_eos = token == eos_id
        if run and (is_eos or trained != run_trained):
            spans.append(Span(tokenizer.decode(run), run_trained, eos=False))
            run = []
        if is_eos:
            spans.append(Span(tokenizer.decode([token]), trained, eos=True))
            continue
        if not run:
            run_trained = trained
        run.append(token)
    if run:
        spans.append(Span(tokenizer.decode(run), run_trained, eos=False))
    replies = sum(1 for m in row["messages"] if m["role"] == "assistant")
    trained_eos = sum(1 for s in spans if s.eos and s.trained)
    return Preview(row["line"], spans, len(encoded.input_ids), encoded.n_trained, trained_eos >= replies)
