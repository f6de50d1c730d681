"""`tunesmith export --gguf` on the tiny model: the file loads back in transformers from the
.gguf alone, its tokenizer encodes as the run's does, its chat template is the trained one,
and its weights are the merged model's (exactly, in f16; within Q8_0's rounding, in q8_0)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_train_cli import train_four_steps, tunesmith
from tiny import order_rows


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return train_four_steps(tiny_model_dir, tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "merged"
    result = tunesmith("export", run, "--out", out, "--gguf", "f16")
    return out, result


def load_alone(path, tmp_path):
    """From the file alone: beside the merged folder's own config, transformers would read that."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    alone = tmp_path / "alone"
    alone.mkdir(exist_ok=True)
    shutil.copy(path, alone / path.name)
    model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=path.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(alone, gguf_file=path.name)


def merged_weights(out):
    weights = {}
    for shard in out.glob("*.safetensors"):
        weights.update(load_file(shard))
    return weights


def assert_same_tokenizer(loaded, out):
    from transformers import AutoTokenizer

    from tunesmith.models.encode import prompt_ids

    trained = AutoTokenizer.from_pretrained(out)
    assert loaded.chat_template == trained.chat_template
    assert loaded.convert_ids_to_tokens(loaded.eos_token_id) == "<|im_end|>"  # the trained end-of-turn token
    for row in order_rows(6):
        messages = [{"role": "user", "content": row["instruction"] + "\n\n" + row["input"]}]
        assert prompt_ids(loaded, messages) == prompt_ids(trained, messages)
        assert loaded.encode(row["response"]) == trained.encode(row["response"])


def test_f16_file_record_and_exact_weights(exported, run, tmp_path):
    out, result = exported
    path = out / "run-f16.gguf"
    record = json.loads((out / "export.json").read_text())["gguf"]
    assert {k: record[k] for k in ("file", "type", "checked")} == {"file": "run-f16.gguf", "type": "f16", "checked": 4}
    assert record["bytes"] == path.stat().st_size
    from tunesmith.io import file_sha256
    assert record["sha256"] == file_sha256(path)
    assert 0 <= record["identical"] <= 4
    assert (f"gguf (f16, {record['bytes'] / 1e3:.1f} kB) -> {path}" in result.stdout
            and f"greedy answers {record['identical']} of 4 identical to base + adapter" in result.stdout)
    assert not (out / ".gguf-check").exists()
    model, tokenizer = load_alone(path, tmp_path)
    assert_same_tokenizer(tokenizer, out)
    state = model.state_dict()
    merged = merged_weights(out)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in merged
    for name, weight in merged.items():  # q/k rows permuted for llama.cpp and back: bit-equal
        expected = weight.half().float() if weight.dim() == 2 else weight  # norms stay float32
        assert torch.equal(state[name], expected), name


def test_q8_0_within_the_rounding_of_its_blocks(exported, tmp_path):
    import gguf as gg

    from tunesmith.serve import gguf

    out, _ = exported
    from transformers import AutoTokenizer

    path = tmp_path / "run-q8_0.gguf"
    gguf.write_gguf(out, path, "q8_0", gguf.plan_gguf(out, AutoTokenizer.from_pretrained(out)), "run")
    reader = gg.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied: no output.weight
    assert int(reader.fields["general.file_type"].contents()) == 7
    assert path.stat().st_size < (out / "run-f16.gguf").stat().st_size * 0.6
    model, tokenizer = load_alone(path, tmp_path)
    assert_same_tokenizer(tokenizer, out)
    state = model.state_dict()
    for name, weight in merged_weights(out).items():
        if weight.dim() == 1:
            assert torch.equal(state[name], weight), name
            continue
        # Q8_0: per 32 values one f16 scale d = max|x|/127 and int8 q = round(x/d): error at most
        # d/2, plus 127 times d's own f16 rounding (2^-11 relative).
        blocks = weight.reshape(-1, 32)
        bound = blocks.abs().amax(dim=1, keepdim=True) / 127 * (0.5 + 127 / 2048)
        error = (state[name].reshape(-1, 32) - blocks).abs()
        assert (error <= bound).all(), name
        assert not torch.equal(state[name], weight)


def test_unsupported_architecture_is_refused_before_anything_is_written(run, tmp_path, monkeypatch):
    from tunesmith.errors import UsageError
    from tunesmith.serve import export

    monkeypatch.setattr(export, "_base_config", lambda loaded: {"architectures": ["GPT2LMHeadModel"]})
    merged = []
    monkeypatch.setattr(export, "_export_merged", lambda *a: merged.append(1))
    with pytest.raises(UsageError, match="GPT2LMHeadModel; tunesmith writes GGUF for LlamaForCausalLM, "
                                         "MistralForCausalLM, Qwen2ForCausalLM only") as caught:
        export.export_run(run, tmp_path / "out", gguf_type="f16")
    assert caught.value.exit_code == 2
    assert merged == [] and list(tmp_path.iterdir()) == []


def test_rotary_scaling_is_refused():
    """Llama 3.1's llama3 rope scaling would load back without its scaling: refused, not written wrong."""
    from tunesmith.errors import UsageError
    from tunesmith.serve.gguf import check_architecture

    config = {"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}
    with pytest.raises(UsageError, match="llama3 rotary scaling"):
        check_architecture(config, "the base model")
    assert check_architecture({"architectures": ["Qwen2ForCausalLM"]}, "x") == "qwen2"


def test_interleave_rotary_rows_pairs_each_heads_halves():
    from tunesmith.serve.gguf import interleave_rotary_rows

    rows = torch.arange(8).reshape(8, 1)  # 2 heads of 4 rows: halves (0,1|2,3) -> pairs (0,2,1,3)
    assert interleave_rotary_rows(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_a_tokenizer_that_encodes_differently_fails_and_leaves_nothing(run, tmp_path, monkeypatch):
    """Guards against publishing a GGUF whose tokenizer splits text otherwise than training did."""
    from tunesmith.errors import TunesmithError
    from tunesmith.serve import export, gguf

    merges = gguf._merges
    monkeypatch.setattr(gguf, "_merges", lambda tok: merges(tok)[:-20])
    with pytest.raises(TunesmithError, match="encodes check prompt 1 to other ids"):
        export.export_run(run, tmp_path / "out", gguf_type="q8_0", check=1)
    assert list(tmp_path.iterdir()) == []


def test_qwen2_with_biases_and_its_own_output_layer(tmp_path):
    """No training: a tiny Qwen2 (q/k/v biases, no row permutation, untied lm_head -> output.weight)
    with Qwen2's pre-tokenizer, written and loaded back bit-equal in f16."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny import build_tokenizer
    from tunesmith.serve import gguf

    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gguf.QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=352, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                         max_position_embeddings=256, rope_theta=1e6))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    folder = tmp_path / "merged"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = tmp_path / "q.gguf"
    plan = gguf.plan_gguf(folder, tokenizer)
    assert (plan.arch, plan.pre) == ("qwen2", "qwen2")
    gguf.write_gguf(folder, path, "f16", plan, "q")
    loaded, loaded_tokenizer = load_alone(path, tmp_path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and not loaded.config.tie_word_embeddings
    assert loaded.config.rope_parameters["rope_theta"] == 1e6 and loaded.config.max_position_embeddings == 256
    assert len(loaded_tokenizer) == 352  # 320 tokens, then [PAD320].. up to the embedding's rows
    text = 'Hi, Maria Lopez from Porto: 1234 {"name": "x"}\n\n  done'
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    state = loaded.state_dict()
    for name, weight in model.state_dict().items():
        expected = weight.half().float() if weight.dim() == 2 else weight
        assert torch.equal(state[name], expected), name
