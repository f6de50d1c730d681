"""LoRA dropout that is cheap on CPU.

PEFT applies `nn.Dropout` to the input of every adapted layer. On CPU, torch's Bernoulli
sampler draws one random number per element and runs at ~60M elements/s here: on
SmolLM2-135M it took ~20% of a LoRA step, more than the matmul it feeds. This draws 64
random bits per call and uses 16 of them per element (the keep test is exact to 1/65536),
about 8x faster for the same mask statistics. GPUs keep torch's own dropout.

For backward it keeps the keep-mask as bool (1 byte per element), not the fp32 mask the
plain `x * mask` would save (4 bytes): with LoRA on all seven projections of SmolLM2-135M
that is 1.8 GB less at 2 x 2048 tokens, for the same gradients bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class KeepScale(torch.autograd.Function):
    """x * keep * scale that saves the bool `keep` for backward rather than the float mask."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(keep)
        ctx.scale = scale
        return masked(x, keep, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return masked(grad, keep, ctx.scale), None, None


def masked(t: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """t * keep * scale."""
    if t.dtype != torch.float32:
        # Scaling the mask first would round 1 / (1 - p) to bf16 (1.0547 for p = 0.05): a
        # biased mean. Masking is exact, and the scalar product is computed in fp32.
        return (t * keep.to(t.dtype)).mul_(scale)
    # Measured fastest of mul(bool)+mul_, where()+mul_ and this: a bool mask fed to mul
    # is converted to float on the fly anyway.
    return t * (keep.to(t.dtype) * scale)


class BitDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        # int16 values are uniform over [-32768, 32767]: drop the lowest p share of them.
        self.threshold = -32768 + round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return KeepScale.apply(x, keep, 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_bit_dropout(model: Any) -> int:
    """Swap every LoRA `nn.Dropout` for a BitDropout with the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if isinstance(layer, nn.Dropout) and layer.p > 0:
                dropouts[name] = BitDropout(layer.p)
                swapped += 1
    return swapped
