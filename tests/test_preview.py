"""Preview marks exactly the tokens training learns from, and shows whether EOS is one."""

from tunesmith.data.preview import preview_row
from tunesmith.models.encode import encode


def chat(*turns):
    roles = ["user", "assistant"] * len(turns)
    return {"line": 7, "messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


def test_spans_cover_the_encoding_and_mark_the_replies_and_eos(tiny_tokenizer):
    row = chat("What is two plus two?", "Four.", "And three plus three?", "Six.")
    preview = preview_row(tiny_tokenizer, row)
    encoded = encode(tiny_tokenizer, row["messages"])
    assert preview.tokens == len(encoded.input_ids) and preview.trained == encoded.n_trained
    assert "".join(s.text for s in preview.spans) == tiny_tokenizer.decode(encoded.input_ids)
    trained_text = [s.text for s in preview.spans if s.trained]
    assert trained_text == ["Four.", "<|im_end|>", "Six.", "<|im_end|>"]
    assert preview.eos_trained
    user_eos = [s for s in preview.spans if s.eos and not s.trained]
    assert len(user_eos) == 2  # the end of each user turn is shown, masked


def test_train_on_inputs_marks_the_prompt_too(tiny_tokenizer):
    preview = preview_row(tiny_tokenizer, chat("Hi there", "Hello."), train_on_inputs=True)
    assert not preview.spans[0].trained  # the first token: nothing predicts it
    assert all(s.trained for s in preview.spans[1:])


def test_rows_that_cannot_be_shown_say_why_instead_of_failing():
    """Regression: a row the chat template refuses raised out of `data preview`; a 50 MB row
    would be tokenised in full to be shown."""
    from tiny import build_tokenizer

    from tunesmith.data.preview import Skipped, preview_rows
    from tunesmith.models.encode import CHATML

    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + CHATML)
    with_system = {"line": 2, "messages": [{"role": "system", "content": "Be brief."}, *chat("Hi", "Hello.")["messages"]]}
    huge = chat("Summarise.", "order shipped " * 100_000) | {"line": 3}
    shown = list(preview_rows(tokenizer, [chat("Hi", "Hello."), with_system, huge], max_seq_len=512))
    assert shown[0].eos_trained
    assert shown[1] == Skipped(2, "template_error: the model's chat template refuses this row: System role not supported")
    assert isinstance(shown[2], Skipped) and shown[2].reason.startswith("too_long: 1,400,0")
    assert shown[2].reason.endswith("judged by characters, not tokenised")
