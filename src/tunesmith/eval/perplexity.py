"""How surprised a model is by the reference answers: the mean negative log-likelihood of the
reference tokens (the answer and its end-of-turn token, exactly the tokens training scores)
given the prompt, teacher-forced. Unlike the generated answers it needs no decoding, and it
moves even when greedy answers do not change."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tunesmith.models.encode import encode_many

# Logits are batch x length x vocabulary floats: with a 150k vocabulary and 512 tokens a batch
# of 4 already holds ~1.2 GB, so this stays small whatever eval.batch_size says.
BATCH = 4


@torch.no_grad()
def reference_nll(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """(summed NLL in nats, number of reference tokens) per conversation, whose last turn is
    the reference answer."""
    encoded = encode_many(tokenizer, conversations)
    device = next(model.parameters()).device
    model.eval()
    out: list[tuple[float, int]] = []
    for start in range(0, len(encoded), BATCH):
        batch = encoded[start : start + BATCH]
        width = max(len(e.input_ids) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch], device=device)
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch], device=device)
        scored = torch.tensor([e.trained + [False] * (width - len(e.trained)) for e in batch], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        nll = nll * scored[:, 1:]
        out += [(float(row.sum()), int(n)) for row, n in zip(nll, scored[:, 1:].sum(dim=1))]
        if on_batch:
            on_batch(len(batch))
    return out


def perplexity(nll: list[tuple[float, int]]) -> float | None:
    """exp(total NLL / total tokens) over a set: long references weigh by their length, as in
    the eval loss; None when there is no reference token."""
    tokens = sum(n for _, n in nll)
    return round(math.exp(sum(s for s, _ in nll) / tokens), 4) if tokens else None
