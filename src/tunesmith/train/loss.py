"""Loss only where it is needed: the LM head runs on trained positions alone, a chunk at a time.

With response-only labels most positions are prompt; projecting them onto a 49k-word vocab
and taking a softmax is wasted work (on SmolLM2-135M the head is a fifth of the forward
FLOPs). The trained positions then go through the head in chunks of rows whose fp32 logits
take at most CHUNK_BYTES: each chunk's loss and its gradients (for the hidden states, and
for the head's weight when it trains) are computed in the forward pass and kept, so the
N x V fp32 logits of the whole micro-batch never exist at once. Before this they did, three
times over in backward (log-softmax's output, the gradient arriving and the gradient
leaving): 2.4 GB of a 11.5 GB step on SmolLM2-135M at 2 x 2048 tokens, and the fp32 upcast
dominates Llama-3.1-8B's peak (ANCHORS). What stays is an N x hidden gradient (and a
V x hidden one for full fine-tuning), the way Liger's fused linear cross-entropy does it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.models.arch import LOSS_CHUNK_BYTES
from tunesmith.models.encode import IGNORE

CHUNK_BYTES = LOSS_CHUNK_BYTES  # fp32 logits of one chunk (a module global: tests and bench/chunked_loss.py vary it)


def chunk_rows(vocab: int) -> int:
    """Trained positions per chunk: as many as fit CHUNK_BYTES of fp32 logits."""
    return max(1, CHUNK_BYTES // (4 * vocab))


class ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T (+ bias)`, soft-capped if asked, computed
    per chunk of rows with its gradients; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, softcap: float | None, rows: int, grads: bool) -> torch.Tensor:
        # The head's own dtype, or autocast's (bf16): one cast of the weight for all chunks.
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if grads and hidden.requires_grad else None
        # Accumulated over chunks in fp32 (the master weights' dtype) even when the matmul is bf16.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if grads and weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if grads and b is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows].to(dtype)
            t = targets[start:start + rows]
            logits = F.linear(h, w, b).float()
            capped = None
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            # loss = logsumexp - the target's logit; its gradient wrt the logits is
            # softmax - onehot, built in the logits' own buffer.
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not grads:
                continue
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if capped is not None:
                grad.mul_(1.0 - capped.square_())  # d(c * tanh(x / c))/dx
            del logits, capped
            g = grad.to(dtype)  # what the head's backward would see: its output's dtype
            del grad
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = g @ w
            if grad_weight is not None:
                if g.dtype == torch.float32:
                    grad_weight.addmm_(g.t(), h)
                else:
                    grad_weight += g.t() @ h
            if grad_bias is not None:
                grad_bias += g.sum(0)
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        grad_hidden, grad_weight, grad_bias = (next(saved) if has else None for has in ctx.has)
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.dtypes[0])
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_output).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_head_loss(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: float | None,
                      rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of the head's logits for `hidden` (N x hidden) against `targets` (N).
    Under no_grad (the eval pass) no gradients are computed."""
    rows = rows or chunk_rows(head.out_features)
    return ChunkedHeadLoss.apply(hidden, head.weight, head.bias, targets, softcap or None, rows, torch.is_grad_enabled())


def whole_head_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The same through autograd, with every row's fp32 logits at once: for heads that are not
    a plain linear layer (an adapted or sharded head)."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def plain_head(head: nn.Module, width: int) -> bool:
    """A whole nn.Linear the chunked loss can read the weight of: not a LoRA-wrapped head, nor
    one whose weight a sharding engine replaced by a placeholder outside its own forward."""
    return type(head) is nn.Linear and head.weight.dim() == 2 and head.weight.shape[1] == width


class TokenLoss(nn.Module):
    """Wraps a causal LM so that forward returns (summed loss, trained-token count).

    A module of its own so accelerate/DDP wraps this forward and gradient sync still fires.
    `chunked=False` keeps the plain autograd loss (for comparison, and the planner's tests).
    """

    def __init__(self, model: Any, chunked: bool = True) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        # Gemma 2 style tanh soft-capping of the final logits.
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self.chunked = chunked

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        trained = hidden[:, :-1][keep]
        del hidden  # the loss needs the trained rows only; nothing else keeps the rest
        if self.chunked and plain_head(self.head, trained.shape[-1]):
            loss = chunked_head_loss(trained, self.head, targets[keep], self.softcap)
        else:
            loss = whole_head_loss(trained, self.head, targets[keep], self.softcap)
        return loss, keep.sum()
