"""Parameter counts from config fields equal the real model's, family by family: each tiny
config is built with transformers on the meta device (no memory) and counted."""

import pytest
import torch
import transformers

from tunesmith.models.arch import ModelFacts, UnsupportedModel, count_params

SMALL = dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=2)
FAMILIES = {
    "llama": dict(SMALL, model_type="llama"),
    "llama_biases_tied": dict(SMALL, model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "mistral": dict(SMALL, model_type="mistral", tie_word_embeddings=False),
    "qwen2": dict(SMALL, model_type="qwen2", tie_word_embeddings=False),
    "qwen2_tied": dict(SMALL, model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(SMALL, model_type="qwen3", head_dim=16, tie_word_embeddings=False),
    "qwen3_tied": dict(SMALL, model_type="qwen3", head_dim=16, tie_word_embeddings=True),
    "qwen3_moe": dict(SMALL, model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=48, decoder_sparse_step=1, mlp_only_layers=[]),
    "phi3": dict(SMALL, model_type="phi3", tie_word_embeddings=False, pad_token_id=0),  # fused qkv/gate_up
    "mixtral": dict(SMALL, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "gemma2": dict(SMALL, model_type="gemma2", head_dim=16, num_attention_heads=4),
    "gemma3_text": dict(SMALL, model_type="gemma3_text", head_dim=16, num_attention_heads=4, sliding_window=8),
}


def real_count(config: dict) -> int:
    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    # tied weights are one tensor: parameters() yields it once
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_count_matches_the_model_built_from_the_config(name):
    config = FAMILIES[name]
    assert count_params(ModelFacts.from_config(config))["total"] == real_count(config)


def test_moe_active_params_use_the_experts_per_token():
    facts = ModelFacts.from_config(FAMILIES["mixtral"])
    counts = count_params(facts)
    assert (facts.experts, facts.active_experts) == (4, 2)
    per_expert = 3 * 64 * 176
    assert counts["total"] - counts["active"] == 3 * 2 * per_expert


def test_unknown_architecture_is_one_clear_error_naming_where():
    with pytest.raises(UnsupportedModel, match=r"^x/config.json: model architecture \(model_type\) 'gpt_neox' is not "
                                               "supported by the planner; supported: llama"):
        ModelFacts.from_config({"model_type": "gpt_neox"}, "x/config.json")


def test_a_dense_model_counts_one_expert_whatever_num_experts_per_tok_says():
    config = dict(FAMILIES["llama"], num_experts_per_tok=2)
    assert count_params(ModelFacts.from_config(config))["total"] == real_count(FAMILIES["llama"])


def test_qwen3_counts_a_query_and_a_key_norm_of_head_dim_per_layer():
    qwen3 = count_params(ModelFacts.from_config(FAMILIES["qwen3"]))["total"]
    without = count_params(ModelFacts.from_config(dict(FAMILIES["qwen3"], model_type="llama")))["total"]
    assert qwen3 - without == 3 * 2 * 16


def test_qwen3_moe_experts_take_their_own_width_and_active_params_the_experts_per_token():
    facts = ModelFacts.from_config(FAMILIES["qwen3_moe"])
    counts = count_params(facts)
    assert (facts.experts, facts.active_experts, facts.intermediate) == (4, 2, 48)
    assert counts["total"] - counts["active"] == 3 * 2 * (3 * 64 * 48)


@pytest.mark.parametrize("dense", [dict(mlp_only_layers=[1]), dict(decoder_sparse_step=2)])
def test_qwen3_moe_with_dense_layers_is_unsupported_not_miscounted(dense):
    with pytest.raises(UnsupportedModel, match=r"^c.json: a qwen3_moe config with dense layers .* not supported"):
        ModelFacts.from_config(dict(FAMILIES["qwen3_moe"], **dense), "c.json")
