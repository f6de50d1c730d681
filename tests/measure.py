"""Measure what the memory model predicts, on whatever device is at hand.

`saved_bytes` counts what autograd keeps for backward (the activations), by storage, so
views and tensors saved twice are counted once. `allocated_peak` is the highest live
allocation during a call: on CUDA from the caching allocator's counters, on CPU from the
profiler's allocation events (the CPU allocator keeps no peak of its own). The tests and
`bench/gpu_memory_check.py` compare these with `plan.memory` on real models.

A harness beside the tests (like tiny.py), not part of the package: it drives the training
loop, which the planner itself never imports. Tests import it as `measure` (conftest puts
this folder on sys.path); the bench scripts put it there themselves.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def saved_bytes(fn: Callable[[], Any], exclude: list[torch.Tensor] = ()) -> tuple[Any, int]:
    """Run `fn` (a forward pass) and return (its result, bytes saved for backward).

    Parameters are excluded by passing them in `exclude`: they are resident anyway.
    With gradient checkpointing the checkpointed regions save through their own hooks, so
    use `allocated_peak` to measure those.
    """
    skip = {_storage_key(t) for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())


def allocated_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """Run `fn` and return (its result, peak bytes allocated above what was live before)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    return _cpu_allocated_peak(fn)


def _cpu_allocated_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    live = peak = 0
    for event in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        live += event["args"]["Bytes"]
        peak = max(peak, live)
    return result, peak


def trainable_parts(config: Any, cfg: Any, device: torch.device, dtype: torch.dtype,
                    before_prepare: Callable[[Any], Any] | None = None) -> Any:
    """A random-weight model built from a transformers `config` directly on `device` (an 8B
    model initialised on a CPU takes a while), made trainable by the loop's own
    `prepare_model` for `cfg`, with its loss module, optimizer and accelerator: the
    `fit.Parts` a training step runs on. `before_prepare` gets the built model and returns the
    one to prepare (the GPU benches quantise QLoRA's linear layers there)."""
    import transformers

    from tunesmith.train.fit import Parts, make_accelerator, make_optimizer
    from tunesmith.train.loss import TokenLoss
    from tunesmith.train.setup import prepare_model

    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    if before_prepare is not None:
        model = before_prepare(model)
    model = prepare_model(model, cfg, device)
    model.train()
    accelerator = make_accelerator(cfg, device)
    optimizer = make_optimizer(cfg, model, device)
    loss_fn, optimizer = accelerator.prepare(TokenLoss(model), optimizer)
    return Parts(model, loss_fn, optimizer, None, accelerator)


def resident_bytes(parts: Any) -> int:
    """Parameters, buffers and optimizer state the parts hold."""
    held = sum(p.numel() * p.element_size() for p in parts.loss_fn.parameters())
    held += sum(b.numel() * b.element_size() for b in parts.loss_fn.buffers())
    return held + sum(v.numel() * v.element_size() for state in parts.optimizer.state.values()
                      for v in state.values() if torch.is_tensor(v))


def measure_training_step(model_config: dict[str, Any], cfg: Any, device: torch.device, *, seed: int = 0,
                          before_prepare: Callable[[Any], Any] | None = None) -> dict[str, int]:
    """Build a random-weight model from `model_config`, make it trainable exactly as
    `tunesmith train` does for `cfg`, and measure one steady-state step (the second: the
    optimizer state exists from the first) of micro_batch x max_seq_len tokens, every
    position trained.

    Returns bytes: `resident` (parameters, buffers and optimizer state before the step),
    `step_peak` (the highest allocation above that during forward, backward and the
    optimizer step) and, without gradient checkpointing, `saved` (what autograd kept at the
    end of the forward pass, the logits' log-softmax included). On CUDA also the device-wide
    `max_allocated` and `max_reserved` during the step (the caching allocator's slack).

    The model is built on `device` directly. `before_prepare`, if given, gets the built model
    and returns the one to prepare (the GPU bench quantises QLoRA's linear layers there).
    """
    import transformers

    from tunesmith.train.fit import run_step
    from tunesmith.train.pack import Row

    torch.manual_seed(seed)
    dtype = torch.float32 if cfg.method.name == "full" or cfg.model.dtype == "float32" else torch.bfloat16
    config = transformers.AutoConfig.for_model(**model_config)
    parts = trainable_parts(config, cfg, device, dtype, before_prepare)
    loss_fn, accelerator = parts.loss_fn, parts.accelerator

    t = cfg.train
    generator = torch.Generator().manual_seed(seed)

    def rows() -> list[Row]:
        ids = torch.randint(0, config.vocab_size, (t.micro_batch, t.max_seq_len), generator=generator)
        return [Row(input_ids=r, trained=[True] * len(r), position_ids=list(range(len(r)))) for r in ids.tolist()]

    def step() -> None:
        step_rows = [row for _ in range(t.grad_accum) for row in rows()]
        run_step(parts, step_rows, t.micro_batch, 0, t.max_grad_norm, device)

    step()  # the first step allocates the optimizer state
    resident = resident_bytes(parts)
    _, step_peak = allocated_peak(step, device)
    result = {"resident": resident, "step_peak": step_peak}
    if device.type == "cuda":
        result["max_allocated"] = torch.cuda.max_memory_allocated(device)
        result["max_reserved"] = torch.cuda.max_memory_reserved(device)
    if not t.gradient_checkpointing:
        from tunesmith.train.pack import collate

        batch = collate(rows(), 0)
        args = [batch[k].to(device) for k in ("input_ids", "position_ids", "labels")]
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if accelerator.mixed_precision == "bf16" else nullcontext()

        def forward() -> Any:
            with ctx:
                return loss_fn(*args)

        _, result["saved"] = saved_bytes(forward, exclude=list(loss_fn.parameters()))
    return result
