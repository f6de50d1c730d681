"""Model facts from a config, not a table: the architecture and an exact parameter count.

Works from the `config.json` fields alone (no weights, no download), for the decoder
families the planner supports. Counts are exact: tests build each family on the meta device
with transformers and compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.errors import UsageError

# Which projections carry a bias, per family, where the config does not say.
QKV_BIAS_FAMILIES = {"qwen2"}
SUPPORTED = ("llama", "mistral", "qwen2", "mixtral", "gemma2")


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    experts: int = 1  # MoE: experts per layer (1: dense)
    active_experts: int = 1  # experts each token goes through
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2
    attention_softcap: float | None = None  # Gemma 2: tanh-capped scores need eager attention
    logit_softcap: float | None = None  # Gemma 2: tanh-capped final logits

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelFacts":
        model_type = config.get("model_type")
        if model_type not in SUPPORTED:
            raise UsageError(
                f"model architecture {model_type!r} is not supported by the planner; supported: {', '.join(SUPPORTED)}"
            )
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            model_type=model_type,
            layers=config["num_hidden_layers"],
            hidden=hidden,
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", model_type == "gemma2")),
            experts=config.get("num_local_experts", 1),
            active_experts=config.get("num_experts_per_tok", 1),
            qkv_bias=attention_bias or model_type in QKV_BIAS_FAMILIES,
            o_bias=attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            norms_per_layer=4 if model_type == "gemma2" else 2,
            # transformers' Gemma 2 defaults when the config leaves them out
            attention_softcap=config.get("attn_logit_softcapping", 50.0 if model_type == "gemma2" else None),
            logit_softcap=config.get("final_logit_softcapping", 30.0 if model_type == "gemma2" else None),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attention_params(f: ModelFacts) -> int:
    q_out, kv_out = f.heads * f.head_dim, f.kv_heads * f.head_dim
    weights = f.hidden * q_out + 2 * f.hidden * kv_out + q_out * f.hidden
    biases = (q_out + 2 * kv_out) * f.qkv_bias + f.hidden * f.o_bias
    return weights + biases


def expert_params(f: ModelFacts) -> int:
    """One SwiGLU MLP: gate and up (hidden -> intermediate), down (intermediate -> hidden)."""
    biases = (2 * f.intermediate + f.hidden) * f.mlp_bias
    return 3 * f.hidden * f.intermediate + biases


def count_params(f: ModelFacts) -> dict[str, int]:
    """Exact parameter counts: total, and active per token (differs for MoE)."""
    router = f.hidden * f.experts if f.experts > 1 else 0
    layer_fixed = attention_params(f) + router + f.norms_per_layer * f.hidden
    embedding = f.vocab * f.hidden
    lm_head = 0 if f.tied_embeddings else f.vocab * f.hidden
    outside = embedding + lm_head + f.hidden  # + the final norm
    total = outside + f.layers * (layer_fixed + f.experts * expert_params(f))
    active = outside + f.layers * (layer_fixed + f.active_experts * expert_params(f))
    return {
        "total": total,
        "active": active,
        "embedding": embedding,
        "lm_head": lm_head,
        "per_layer": layer_fixed + f.experts * expert_params(f),
        "linear_per_layer": attention_params(f) + f.experts * expert_params(f),
    }
