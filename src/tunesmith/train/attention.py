"""Attention for packed rows that costs what the examples cost, not what the row costs.

transformers reads restarting position ids as packed examples and builds a block-diagonal
mask, but SDPA then still computes the whole row x row score matrix: on CPU, with ~110-token
examples in 512-token rows, attention took 17% of a LoRA step (bench profile). This runs
causal SDPA on each example's span separately instead, which is exact (no example sees
another) and needs no mask at all. Used for training and eval loss; generation keeps the
model's own attention and KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "tunesmith_packed_sdpa"


def segment_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the length of each example: a new example starts where positions restart at 0."""
    lengths = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0 and i > 0]
        edges = [0, *starts, len(row)]
        lengths.append([b - a for a, b in zip(edges, edges[1:])])
    return lengths


def packed_sdpa_forward(
    module: Any,
    query: torch.Tensor,  # (batch, heads, seq, dim)
    key: torch.Tensor,  # (batch, kv_heads, seq, dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if position_ids is None or query.shape[2] != key.shape[2]:
        raise RuntimeError(f"{NAME} is for training on packed rows: it needs position_ids and no KV cache")
    gqa = query.shape[1] != key.shape[1]
    if gqa and query.is_cuda and query.dtype == torch.float32:
        # fp32 (QLoRA after peft's upcast): flash attention has no fp32 kernel and the
        # memory-efficient one takes no grouped heads, so torch would fall back to the math
        # kernel and its row x row matrices. Repeating the key/value heads keeps it linear.
        key, value = repeat_kv_heads(key, value, query.shape[1])
        gqa = False
    dtype = query.dtype
    if not query.is_cuda and dtype == torch.bfloat16:
        # torch's CPU flash kernel runs bf16 at half its fp32 speed (forward + backward of a
        # 110-token example: 2.5 ms bf16, 1.2 ms through fp32 with the casts): upcast.
        query, key, value = query.float(), key.float(), value.float()
    # unbind/split rather than indexing: their backward is one stack/cat, where every slice's
    # backward would allocate and fill a full-size zero gradient (measured: slower than the mask).
    rows = []
    for q, k, v, lengths in zip(query.unbind(0), key.unbind(0), value.unbind(0),
                                segment_lengths(position_ids.expand(query.shape[0], -1))):
        parts = [
            F.scaled_dot_product_attention(
                qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0),
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa,
            )
            for qs, ks, vs in zip(q.split(lengths, dim=1), k.split(lengths, dim=1), v.split(lengths, dim=1))
        ]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0).to(dtype)
    return out.transpose(1, 2).contiguous(), None  # (batch, seq, heads, dim), as transformers expects


def repeat_kv_heads(key: torch.Tensor, value: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key/value heads repeated to one per query head, in the grouping `enable_gqa` uses
    (query head i reads key head i // group)."""
    groups = heads // key.shape[1]
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def use_packed_attention(model: Any) -> bool:
    """Switch a transformers model to per-example attention; False when it cannot take it."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return model.config._attn_implementation == NAME
