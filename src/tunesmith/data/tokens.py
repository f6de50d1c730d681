"""Token counts in the target model's tokenizer, exactly as training encodes a row."""

from __future__ import annotations

from typing import Any, Callable

from tunesmith.train.encode import encode_many, ensure_chat_template

Conversation = list[dict[str, str]]
# conversations -> (tokens, trained tokens) of each; called on chunks, so memory stays flat
TokenCounter = Callable[[list[Conversation]], list[tuple[int, int]]]


def load_target_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a hub id, folder, .gguf file or alias, with a chat template."""
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.source import resolve_source

    tokenizer = load_tokenizer(resolve_source(model, trust_remote_code=trust_remote_code),
                               trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    return tokenizer


def token_counter(tokenizer: Any, train_on_inputs: bool = False) -> TokenCounter:
    """Counts through `encode_many`, as training encodes, so `too_long` here means the same
    as at training time (template and EOS included)."""

    def count(conversations: list[Conversation]) -> list[tuple[int, int]]:
        return [(len(e.input_ids), e.n_trained) for e in encode_many(tokenizer, conversations, train_on_inputs)]

    return count
