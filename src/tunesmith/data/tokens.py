"""Token counts in the target model's tokenizer, exactly as training encodes a row."""

from __future__ import annotations

from typing import Any, Callable

from tunesmith.data.lengths import TokenEncoder
from tunesmith.models.encode import Encoded, ensure_chat_template

Conversation = list[dict[str, str]]
# conversations -> their encodings; the clean stage calls it on chunks of rows
Encoder = Callable[[list[Conversation]], list[Encoded]]


def load_target_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a hub id, folder, .gguf file or alias, with a chat template.
    A source that cannot be loaded is one UsageError naming the file and the fix."""
    from tunesmith.models.source import resolve_source

    # Resolve before importing the loader: the loader pulls in torch (~2 s), and a source
    # that cannot be used should be reported without that wait.
    path = resolve_source(model, trust_remote_code=trust_remote_code)
    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    return tokenizer


def token_encoder(tokenizer: Any, train_on_inputs: bool = False) -> TokenEncoder:
    """Encodes through `encode_many`, as training does, so `too_long` here means the same
    as at training time (template and EOS included), and training can reuse the result.
    It also finds rows far too long by their characters, without tokenising them."""
    return TokenEncoder(tokenizer, train_on_inputs)
