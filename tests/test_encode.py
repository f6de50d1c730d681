from tunesmith.models.encode import CHATML, encode, ensure_chat_template, prompt_ids, render


def trained_text(tokenizer, enc):
    return tokenizer.decode([t for t, keep in zip(enc.input_ids, enc.trained) if keep])


def test_only_the_response_and_its_eos_are_trained(tiny_tokenizer):
    messages = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}]
    enc = encode(tiny_tokenizer, messages)
    assert enc.input_ids == tiny_tokenizer(render(tiny_tokenizer, messages), add_special_tokens=False)["input_ids"]
    assert trained_text(tiny_tokenizer, enc) == "hi there<|im_end|>"
    # the EOS is the last trained token, and the template's newline after it is not trained
    last = max(i for i, keep in enumerate(enc.trained) if keep)
    assert enc.input_ids[last] == tiny_tokenizer.eos_token_id
    assert enc.trained[last + 1 :] == [False] * (len(enc.trained) - last - 1)
    # the trained tokens are exactly those that follow the generation prompt
    prompt = prompt_ids(tiny_tokenizer, messages[:1])
    assert enc.input_ids[: len(prompt)] == prompt
    assert not any(enc.trained[: len(prompt)])
    assert all(enc.trained[len(prompt) : last + 1])


def test_every_assistant_turn_is_trained_and_nothing_else(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "and the fox?"},
        {"role": "assistant", "content": "It jumps."},
    ]
    enc = encode(tiny_tokenizer, messages)
    assert trained_text(tiny_tokenizer, enc) == "Four.<|im_end|>It jumps.<|im_end|>"
    assert enc.n_trained == sum(enc.trained)


def test_train_on_inputs_trains_everything_but_the_first_token(tiny_tokenizer):
    messages = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    enc = encode(tiny_tokenizer, messages, train_on_inputs=True)
    assert enc.trained == [False] + [True] * (len(enc.input_ids) - 1)


def test_template_without_end_of_turn_gets_eos_trained(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    enc = encode(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    trained = [t for t, keep in zip(enc.input_ids, enc.trained) if keep]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained) == "yo\n<|im_end|>"


def test_missing_chat_template_falls_back_to_chatml(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    assert not tokenizer.chat_template
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == CHATML
