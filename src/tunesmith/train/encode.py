"""Render chat examples through the model's chat template and mark the trained tokens.

The template is rendered turn by turn and each segment is tokenized on its own, so the
prompt tokens are exactly those the model sees at inference (after the generation prompt)
and a label boundary never falls inside a token. Trained: each assistant turn's content and
the end-of-turn token that follows it (EOS), so the tuned model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Used only when a tokenizer has no chat template of its own (base models).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    trained: list[bool]  # per token: is this token a training target?

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


class TemplateError(ValueError):
    pass


def ensure_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant_reply) pieces."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TemplateError("the chat template does not render conversations prefix by prefix")
        pieces.append((prompt[len(done):], False))
        reply = full[len(prompt):]
        pieces.append(_until_eos(reply, tokenizer.eos_token))
        done = prompt + pieces[-1][0]
        if len(done) < len(full):  # template text after EOS (e.g. a newline): not trained
            pieces.append((full[len(done):], False))
            done = full
    tail = render(tokenizer, messages)[len(done):]
    if tail:
        pieces.append((tail, False))
    return [(text, trained) for text, trained in pieces if text]


def _until_eos(reply: str, eos: str | None) -> tuple[str, bool]:
    if eos and eos in reply:
        return reply[: reply.index(eos) + len(eos)], True
    return reply, True


def encode(tokenizer: Any, messages: list[dict[str, str]], train_on_inputs: bool = False) -> Encoded:
    ids: list[int] = []
    trained: list[bool] = []
    eos_id = tokenizer.eos_token_id
    for text, is_reply in segments(tokenizer, messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_reply and (not piece or piece[-1] != eos_id):
            piece = piece + [eos_id]  # template without an end-of-turn token: train EOS anyway
        ids.extend(piece)
        trained.extend([is_reply or train_on_inputs] * len(piece))
    if trained:
        trained[0] = False  # nothing predicts the first token; in a pack it would see the previous example
    return Encoded(ids, trained)


def prompt_ids(tokenizer: Any, history: list[dict[str, str]]) -> list[int]:
    """Tokens the model sees before it answers: the history plus the generation prompt."""
    text = render(tokenizer, history, generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
