"""Batched greedy generation: prompts sorted by length so a batch wastes little padding."""

from __future__ import annotations

from typing import Any, Callable

import torch

from tunesmith.models.generation import stop_ids


# Room for an answer a little longer than the longest reference, no more: a base model often
# rambles, and every extra token is paid for on every model.
EXTRA_TOKENS = 16


def answer_budget(tokenizer: Any, references: list[str], cap: int) -> int:
    """New tokens to generate: the longest reference plus EXTRA_TOKENS, at most `cap`."""
    longest = max((len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references), default=0)
    return min(cap, longest + EXTRA_TOKENS)


@torch.no_grad()
def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions for token-id prompts, in the order given."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        # Left padding: every prompt ends at the same column, so generation starts together.
        ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=stop_ids(model, tokenizer),
        )
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(idx))
    return out
