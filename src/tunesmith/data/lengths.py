"""Rows too long for max_seq_len, found by counting characters instead of tokens.

Tokenising is the slow part of the data stage, and it grows with the row: one 50 MB
response is ~10M tokens, which took SmolLM2's tokenizer 45-80 s and 5 GB to count only
to reject the row. A token covers at most as many characters as the longest token of the
vocabulary, so a row with more than max_seq_len x that many characters cannot fit, and is
removed as too_long without tokenising it. Every other row is still counted exactly.

Without a tokenizer (`tunesmith data check` without --model) the same test runs with a
generous characters-per-token figure: an estimate, said to be one in the reason.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any, Protocol

from tunesmith.models.encode import Encoded, encode_many, render

Conversation = list[dict[str, str]]

# Characters per token assumed when no tokenizer is at hand: above the longest token of
# every tokenizer measured here (SmolLM2, the demo model: 81 characters, a newline and 80
# spaces; the tests' tiny BPE: 13, "<|endoftext|>"; MiniLM's WordPiece: 18), so a row
# removed by it would not fit in any of them; 128 rather than 81 is a margin for
# vocabularies with longer tokens than these. Ordinary text runs at about 4 characters per
# token, so a row this check lets through may still be too long: --model counts exactly.
CHARS_PER_TOKEN_ESTIMATE = 128

# Pre-tokenizers that keep every character of the text (ByteLevel even turns one into up to
# four byte symbols); Whitespace, BertPreTokenizer and a Split that removes its matches
# drop characters, so a row could need fewer tokens than its characters suggest.
_KEEPS_CHARACTERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation", "Sequence"}


class LengthBound(Protocol):
    def too_long(self, messages: Conversation, max_seq_len: int) -> str | None:
        """The detail of a too_long reason when the row cannot fit, found without
        tokenising it; None when it may fit (then it is counted exactly)."""


def content_chars(messages: Conversation) -> int:
    return sum(len(m["content"]) for m in messages)


class CharEstimate:
    """The length test without a tokenizer: characters against a generous estimate."""

    def __init__(self, chars_per_token: int = CHARS_PER_TOKEN_ESTIMATE) -> None:
        self.chars_per_token = chars_per_token

    def too_long(self, messages: Conversation, max_seq_len: int) -> str | None:
        chars = content_chars(messages)
        limit = max_seq_len * self.chars_per_token
        if chars <= limit:
            return None
        return (f"{chars:,} characters > {limit:,} (max_seq_len {max_seq_len} x {self.chars_per_token} characters "
                f"per token): an estimate by characters, generous to the row; --model counts tokens exactly")


class TokenEncoder:
    """Encodes conversations exactly as training does (`encode_many`), and knows from the
    vocabulary when a row is too long to be worth encoding."""

    def __init__(self, tokenizer: Any, train_on_inputs: bool = False) -> None:
        self.tokenizer = tokenizer
        self.train_on_inputs = train_on_inputs

    def __call__(self, conversations: list[Conversation]) -> list[Encoded]:
        return encode_many(self.tokenizer, conversations, train_on_inputs=self.train_on_inputs)

    @cached_property
    def longest_token(self) -> int:
        """Characters in the longest token (added tokens included), read once. For a
        byte-level vocabulary this counts bytes, which is never fewer than characters."""
        return max(len(token) for token in self.tokenizer.get_vocab())

    @cached_property
    def _backend(self) -> Any:
        """The Rust tokenizer when characters bound its tokens (see _keeps_characters);
        None otherwise, and every row is tokenised."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not _keeps_characters(backend.pre_tokenizer):
            return None
        return backend

    def too_long(self, messages: Conversation, max_seq_len: int) -> str | None:
        if self._backend is None:
            return None
        limit = max_seq_len * self.longest_token
        if content_chars(messages) <= limit:
            return None  # the common case: one sum, no rendering
        chars = self._chars_as_tokenised(messages)
        if chars is None or chars <= limit:
            return None
        return (f"{chars:,} characters > {limit:,} (max_seq_len {max_seq_len} x {self.longest_token}, the characters "
                f"in this tokenizer's longest token): cannot fit; judged by characters, not tokenised")

    def _chars_as_tokenised(self, messages: Conversation) -> int | None:
        """Characters of the text the tokenizer sees: the row through the chat template (which
        may trim or drop parts) and the tokenizer's normaliser (NFC and the like may merge
        characters). None when the template refuses the row: encoding it says why."""
        try:
            text = render(self.tokenizer, messages)
        except Exception:  # noqa: BLE001 - any template failure: the exact path reports it as the row's reason
            return None
        normalizer = self._backend.normalizer
        return len(normalizer.normalize_str(text) if normalizer is not None else text)


def _keeps_characters(pre_tokenizer: Any) -> bool:
    if pre_tokenizer is None:
        return True
    try:
        state = json.loads(pre_tokenizer.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    return _state_keeps_characters(state)


def _state_keeps_characters(state: dict[str, Any]) -> bool:
    kind = state.get("type")
    if kind not in _KEEPS_CHARACTERS or state.get("behavior") == "Removed":
        return False
    return all(_state_keeps_characters(inner) for inner in state.get("pretokenizers", []))
