"""Model facts from a config, not a table: the architecture and an exact parameter count.

Works from the `config.json` fields alone (no weights, no download), for the decoder
families the planner supports. Counts are exact: tests build each family on the meta device
with transformers and compare.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.errors import UsageError

# The training loss projects trained positions onto the vocab in chunks whose fp32 logits take
# at most this (train/loss.py); the planner sizes the loss's peak by it (plan/memory.py).
# 64 MiB is 341 rows of SmolLM2's 49,152-word vocab, 130 of Llama 3's 128,256: rows enough to
# keep the head's matmul efficient (bench/README.md, chunked_loss.py) while the loss's peak
# stays a few chunks, whatever the batch.
LOSS_CHUNK_BYTES = 64 * 2**20

# Which projections carry a bias, per family, where the config does not say.
QKV_BIAS_FAMILIES = {"qwen2"}
# Families that RMS-normalise each query and key head (a weight of head_dim each) before RoPE.
QK_NORM_FAMILIES = {"qwen3", "qwen3_moe", "gemma3_text"}
# Gemma's layers norm before and after both attention and the MLP, and tie the head by default.
GEMMA_FAMILIES = {"gemma2", "gemma3_text"}
# Families whose q/k/v (qkv_proj) and gate/up (gate_up_proj) are one linear layer each: the
# same parameters, but LoRA targets those names.
FUSED_FAMILIES = {"phi3"}
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "gemma2", "gemma3_text", "phi3")
# Sizes every supported family's config.json has, and those some have (else derived).
REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
OPTIONAL = ("num_key_value_heads", "head_dim", "num_local_experts", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "decoder_sparse_step")


class UnsupportedModel(UsageError):
    """A model the planner cannot read: an architecture it does not count, or a hub id whose
    config is not on this machine. Training may still work (it loads the model itself), so
    the pre-flight skips with a note instead of stopping; a config that is broken is a plain
    UsageError everywhere."""


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
    qk_norm: bool = False  # Qwen3, Gemma 3: an RMSNorm over each query and key head
    fused_projections: bool = False  # Phi-3/Phi-4: qkv_proj and gate_up_proj
    sliding_window: int | None = None  # Gemma 2/3: the span of their local-attention layers
    sliding_layers: int = 0  # how many layers attend within sliding_window; the rest are global
    attention_softcap: float | None = None  # Gemma 2: tanh-capped scores need eager attention
    logit_softcap: float | None = None  # Gemma 2: tanh-capped final logits

    @classmethod
    def from_config(cls, config: Any, where: str = "config") -> "ModelFacts":
        """The facts of a transformers config (a dict); `where` names its file in errors.
        UnsupportedModel for a family the planner cannot count; UsageError for a config that
        is not one (not an object, a field missing or not a positive whole number)."""
        if not isinstance(config, dict):
            raise UsageError(f"{where}: expected a JSON object of model settings, found {_json_kind(config)}; "
                             "is it a model's config.json?")
        model_type = config.get("model_type")
        if model_type not in SUPPORTED:
            shown = "missing" if model_type is None else repr(model_type)
            if "auto_map" in config:  # the architecture lives in the repo's own Python files
                raise UnsupportedModel(f"{where}: model architecture (model_type) {shown} comes with its own Python "
                                       "code (auto_map), which tunesmith does not run (trust_remote_code is off) "
                                       f"and the planner cannot count; supported: {', '.join(SUPPORTED)}")
            raise UnsupportedModel(f"{where}: model architecture (model_type) {shown} is not supported by the "
                                   f"planner; supported: {', '.join(SUPPORTED)}")
        missing = [name for name in REQUIRED if config.get(name) is None]
        if missing:
            raise UsageError(f"{where}: a {model_type} config needs {', '.join(missing)}, which it lacks; "
                             "is the file complete? copy the model's original config.json")
        size = {name: _count(config, name, where) for name in REQUIRED + OPTIONAL if config.get(name) is not None}
        heads, hidden = size["num_attention_heads"], size["hidden_size"]
        # Mixtral names its experts num_local_experts, Qwen3-MoE num_experts (and gives them
        # their own width, moe_intermediate_size).
        experts = size.get("num_local_experts", size.get("num_experts", 1))
        intermediate = size["intermediate_size"]
        if model_type == "qwen3_moe" and experts > 1:
            _every_layer_sparse(config, size, where)
            intermediate = size.get("moe_intermediate_size", intermediate)
        active = size.get("num_experts_per_tok", 1)
        if experts > 1 and active > experts:
            raise UsageError(f"{where}: num_experts_per_tok = {active} is above num_local_experts = {experts}")
        attention_bias = bool(config.get("attention_bias", False))
        window, sliding = _sliding_layers(config, model_type, size["num_hidden_layers"], where)
        return cls(
            model_type=model_type,
            layers=size["num_hidden_layers"],
            hidden=hidden,
            intermediate=intermediate,
            heads=heads,
            kv_heads=size.get("num_key_value_heads", heads),
            head_dim=size.get("head_dim", hidden // heads),
            vocab=size["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", model_type in GEMMA_FAMILIES)),
            experts=experts,
            active_experts=min(active, experts),
            qkv_bias=attention_bias or model_type in QKV_BIAS_FAMILIES,
            o_bias=attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            norms_per_layer=4 if model_type in GEMMA_FAMILIES else 2,
            qk_norm=model_type in QK_NORM_FAMILIES,
            fused_projections=model_type in FUSED_FAMILIES,
            sliding_window=window,
            sliding_layers=sliding,
            # transformers' Gemma 2 defaults when the config leaves them out
            attention_softcap=_softcap(config, "attn_logit_softcapping", 50.0 if model_type == "gemma2" else None, where),
            logit_softcap=_softcap(config, "final_logit_softcapping", 30.0 if model_type == "gemma2" else None, where),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(config: dict[str, Any], name: str, where: str) -> int:
    """A size field as a positive whole number (JSON may write 4096.0; bool is not a size)."""
    value = config[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where}: {name} = {json.dumps(value)} is not a positive whole number; "
                         "copy the model's original config.json")
    return value


def _every_layer_sparse(config: dict[str, Any], size: dict[str, int], where: str) -> None:
    """Qwen3-MoE can keep some layers dense (mlp_only_layers, decoder_sparse_step > 1); the
    published models do not, and ModelFacts has one MLP shape for every layer."""
    dense = config.get("mlp_only_layers") or []
    step = size.get("decoder_sparse_step", 1)
    if dense or step != 1:
        raise UnsupportedModel(f"{where}: a qwen3_moe config with dense layers (mlp_only_layers = "
                               f"{json.dumps(dense)}, decoder_sparse_step = {step}) is not supported by the "
                               "planner; it counts models whose every layer is a mixture of experts")


def _sliding_layers(config: dict[str, Any], model_type: str, layers: int, where: str) -> tuple[int | None, int]:
    """Gemma's window and how many layers use it: layer_types when the config lists them, else
    transformers' pattern (Gemma 2: every other layer; Gemma 3: all but every
    sliding_window_pattern-th). Other families: none (their configs' sliding_window is unused
    or covers every layer, which the planner does not model)."""
    if model_type not in GEMMA_FAMILIES or config.get("sliding_window") is None:
        return None, 0
    window = _count(config, "sliding_window", where)
    types = config.get("layer_types")
    if isinstance(types, list):
        return window, sum(t == "sliding_attention" for t in types)
    pattern = 2 if model_type == "gemma2" else (
        _count(config, "sliding_window_pattern", where) if config.get("sliding_window_pattern") is not None else 6)
    return window, sum(1 for i in range(layers) if (i + 1) % pattern)


def _softcap(config: dict[str, Any], name: str, default: float | None, where: str) -> float | None:
    value = config.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{where}: {name} = {json.dumps(value)} is not a positive number (or null)")
    return float(value)


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "a number")


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
    qk_norms = 2 * f.head_dim if f.qk_norm else 0
    layer_fixed = attention_params(f) + router + f.norms_per_layer * f.hidden + qk_norms
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
