"""What ends a generated answer, shared by eval (generating) and serve (the exported
generation_config.json): one definition, so an exported model stops where eval's did."""

from __future__ import annotations

from typing import Any


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The end-of-turn token training taught (the tokenizer's EOS: every trained reply ends
    with it) plus the EOS ids the model's own generation config names."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)
