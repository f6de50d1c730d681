"""The tokenizer of any model source, with a chat template: what `data check`, `data preview`
and `plan --dataset` count and render with. Kept apart from `models.load`, which imports
torch: a source that cannot be used is reported before that ~2 s wait."""

from __future__ import annotations

from typing import Any

from tunesmith.models.encode import ensure_chat_template


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
