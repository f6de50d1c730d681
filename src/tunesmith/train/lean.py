"""The lean memory path: what a LoRA/QLoRA step keeps on the GPU, and no more.

Three things peft and transformers do by default cost memory and buy nothing on a bf16 base:

- **Adapters in the base's dtype.** peft keeps LoRA weights in fp32 (good: they are the
  master copy the optimizer updates) and casts each adapted layer's input to fp32 before the
  adapter, so autograd keeps an fp32 copy of the input of every adapted layer (q, k and v each
  their own): measured on CPU, the largest LoRA activation term. Here the adapters multiply in
  the input's dtype instead (the weight is cast, r x features, not the activation); the fp32
  weights and their gradients stay fp32, the way autocast runs fp32 weights.
- **QLoRA without fp32 activations.** peft's `prepare_model_for_kbit_training` casts every
  parameter that is not 4-bit (embeddings, head, norms) to fp32, so the embeddings come out in
  fp32 and the whole residual stream, every norm and every saved activation follow: twice
  LoRA's bytes. Its reason was fp16 (no range); bf16 has fp32's range, transformers' RMSNorm
  already normalises in fp32 inside, and bitsandbytes multiplies in bf16 either way. Here only
  fp16 parameters are upcast: QLoRA on a bf16 base trains the activations LoRA does.
- **Checkpointed layer inputs in host memory** (`train.offload_activations`, a switch: it
  costs a device-to-host copy per layer in the forward and one back in the backward). With
  gradient checkpointing the inputs of the layers are what is left (layers x tokens x
  hidden); torch's checkpoint saves them through `save_for_backward` outside its own hooks, so
  a saved-tensor hook around each checkpointed call moves exactly those to pinned host memory.

And on a CPU, the process's resident set close to what torch allocated (`return_freed_memory`):
glibc's malloc serves large blocks with mmap and returns them on free, but after each such
free it raises its mmap threshold to the freed size (up to 32 MiB), so the activations of the
next steps come from the heap, whose freed blocks it seldom gives back: the kernel, which
kills by resident set, saw SmolLM2-135M's training process hold 1.5-1.8x what torch had
allocated (bench/README.md, cpu_resident_peak.py). Fixing the threshold turns the dynamic
rule off: blocks above it are always mmapped and returned when freed.
"""

from __future__ import annotations

import ctypes
import sys
from functools import wraps
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


class BaseDtypeLinear(nn.Linear):
    """A LoRA A or B matrix: the weight trains in fp32, the product runs in the input's dtype.

    The cast weight (r x features) is what autograd keeps for the input's gradient; the
    weight's gradient comes back through the cast in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def adapters_in_base_dtype(model: Any) -> int:
    """Run every LoRA adapter of `model` in the dtype of its layer's input (bf16 on a bf16
    base) instead of upcasting the input to the adapter's fp32. Returns how many adapted layers
    changed. State dict, saving and merging are untouched (the classes only change forward)."""
    changed = 0
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict):
            continue
        # peft's LoRA layers cast the input to the adapter's dtype unless this says no.
        module.cast_input_dtype_enabled = False
        for matrices in (lora_a, lora_b):
            for layer in matrices.values():
                if type(layer) is nn.Linear:
                    layer.__class__ = BaseDtypeLinear
        changed += 1
    return changed


def kbit_casts(model: Any) -> dict[str, torch.dtype]:
    """What QLoRA's preparation casts, by parameter name: fp16 parameters that are not 4-bit
    go to fp32 (fp16 overflows where fp32 does not); bf16 and fp32 ones stay as they are.
    A pure decision, so a bf16 model shows it without bitsandbytes: nothing is cast."""
    return {name: torch.float32 for name, p in model.named_parameters()
            if p.dtype == torch.float16 and type(p).__name__ != "Params4bit"}


def prepare_kbit(model: Any) -> Any:
    """tunesmith's QLoRA preparation instead of peft's `prepare_model_for_kbit_training`:
    freeze the base, apply `kbit_casts`. Gradient checkpointing is the loop's own
    (non-reentrant, so the embeddings' output needs no `requires_grad` hook)."""
    casts = kbit_casts(model)
    for name, p in model.named_parameters():
        p.requires_grad_(False)
        if name in casts:
            p.data = p.data.to(casts[name])
    return model


def offload_checkpointed_inputs(model: Any, device: torch.device) -> int:
    """Keep the inputs the checkpointed layers save in host memory (pinned on CUDA) until their
    backward. Call after checkpointing is on; returns how many layers offload. On a CPU the
    tensors already are in host memory and stay where they are (nothing is copied)."""
    pin = device.type == "cuda"
    wrapped = 0
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or not getattr(module, "gradient_checkpointing", False) or getattr(func, "offloads", False):
            continue
        module._gradient_checkpointing_func = _offloading(func, pin)
        wrapped += 1
    return wrapped


def _offloading(checkpoint: Callable[..., Any], pin: bool) -> Callable[..., Any]:
    # Only the checkpoint's inputs pass through this hook: inside the checkpointed region its
    # own hooks take over, and the recompute runs in the backward, outside this context.
    @wraps(checkpoint)
    def offloaded(*args: Any, **kwargs: Any) -> Any:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: to_host(t, pin), from_host):
            return checkpoint(*args, **kwargs)

    offloaded.offloads = True  # type: ignore[attr-defined]
    return offloaded


def to_host(tensor: torch.Tensor, pin: bool) -> tuple[torch.device, torch.Tensor]:
    """A saved tensor's copy in host memory, and the device it goes back to."""
    if tensor.device.type == "cpu":
        return tensor.device, tensor
    host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin)
    host.copy_(tensor, non_blocking=pin)  # ordered on the compute stream: the source stays valid
    return tensor.device, host


def from_host(packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
    device, tensor = packed
    return tensor.to(device, non_blocking=True)


# ---------------------------------------------------------------- the CPU process's resident set

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks of 256 KiB and more (a 64-token row of a 1k-wide model) come from mmap; smaller
# ones from the heap, which gives back its free top beyond 1 MiB.
MMAP_THRESHOLD = 256 * 2**10
TRIM_THRESHOLD = 2**20


def return_freed_memory(device: torch.device) -> bool:
    """On a CPU under Linux glibc, make malloc give freed large blocks back to the kernel;
    True if it did. Elsewhere (GPUs, whose tensors are not malloc's; musl, macOS) nothing."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
