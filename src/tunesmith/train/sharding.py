"""FSDP2 (torch's `fully_shard`): each process holds 1/N of every weight, gradient and optimizer
state, and gathers one decoder layer at a time for its forward and backward.

Sharded with torch's own API rather than accelerate's FSDP plugin: the plugin only shards
between GPUs, while `fully_shard` runs the same way between CPU processes (gloo), so the
equivalence with one process is tested in `make test` on the code path GPUs run.

Checkpoints stay in the one-process format: the trained weights and the optimizer state are
gathered whole (every process takes part, the main one writes), so a checkpoint or an adapter
reads back the same whatever trained it. For LoRA that is megabytes; for a full fine-tune it
is the whole model in the main process's host memory (see the README).
"""

from __future__ import annotations

from typing import Any

import torch

SHARDED = ("fsdp", "fsdp_offload")


def shard_model(loss_module: Any, strategy: str, device: torch.device, full_fine_tune: bool) -> None:
    """Shard each decoder layer, then the rest (embeddings, final norm, head) at the root: the
    loss module whose forward training calls (train/loss.TokenLoss). In place: the model's
    parameter names stay the same. On a GPU a full fine-tune computes in bf16 with fp32
    master shards and fp32 gradient reduction; fsdp_offload keeps the shards in host memory."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mixed = MixedPrecisionPolicy()
    if device.type == "cuda" and full_fine_tune:
        mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if strategy == "fsdp_offload" else OffloadPolicy()
    for layer in loss_module.decoder.layers:
        fully_shard(layer, mp_policy=mixed, offload_policy=offload)
    fully_shard(loss_module, mp_policy=mixed, offload_policy=offload)


def is_sharded(tensor: Any) -> bool:
    return hasattr(tensor, "full_tensor")


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a shard (a collective: every process must ask, in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def full_trained_weights(model: Any) -> dict[str, torch.Tensor]:
    """The trained parameters by their names in `model` (tied weights appear once), whole, on
    the CPU (under FSDP a collective: every process asks, every process gets them)."""
    return {name: whole(p.detach()).contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with every sharded tensor gathered whole (same indices)."""
    state_dict = optimizer.state_dict()
    state = {index: {key: whole(value).cpu() if isinstance(value, torch.Tensor) else value
                     for key, value in per_param.items()}
             for index, per_param in state_dict["state"].items()}
    return {"state": state, "param_groups": state_dict["param_groups"]}


def shard_like(full: torch.Tensor, param: Any) -> torch.Tensor:
    """`full` cut the way `param` is sharded (every process holds the full tensor); `full`
    itself for a parameter that is not a shard."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                             src_data_rank=None)



def sharded_optimizer_state(optimizer: torch.optim.Optimizer, full: dict[str, Any]) -> dict[str, Any]:
    """A gathered optimizer state dict cut back into this process's shards, to load."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, per_param in full["state"].items():
        param = params[int(index)]
        state[index] = {key: shard_like(value, param) if isinstance(value, torch.Tensor) and value.dim() > 0
                        else value for key, value in per_param.items()}
    return {"state": state, "param_groups": full["param_groups"]}
