"""Token counts in the target model's tokenizer, exactly as training encodes a row (the
tokenizer itself comes from `models.tokenizer.load_target_tokenizer`)."""

from __future__ import annotations

from typing import Any, Callable

from tunesmith.data.lengths import TokenEncoder
from tunesmith.models.encode import Encoded

Conversation = list[dict[str, str]]
# conversations -> their encodings; the clean stage calls it on chunks of rows
Encoder = Callable[[list[Conversation]], list[Encoded]]


def token_encoder(tokenizer: Any, train_on_inputs: bool = False) -> TokenEncoder:
    """Encodes through `encode_many`, as training does, so `too_long` here means the same
    as at training time (template and EOS included), and training can reuse the result.
    It also finds rows far too long by their characters, without tokenising them."""
    return TokenEncoder(tokenizer, train_on_inputs)
