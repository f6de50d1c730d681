"""The one function that builds a plan from a run config: `tunesmith plan CONFIG` prints it
and `tunesmith train` writes it to RUN/plan.json, so the two agree for the same config and
the same cleaned data.

A plan has two sets of figures. `setup`, `memory_gb`, `flops_per_token` and `options` are
for the GPU rows (device cuda, the dtype the config resolves to there); `this_machine` has
its own `setup` (on a CPU: fp32 where the config says auto), memory and time.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.prices import Price
from tunesmith.models.arch import ModelFacts
from tunesmith.plan.device import Device, cpu_matmul_flops
from tunesmith.plan.inputs import Calibration, Run, TokenCount, configured_strategy, on_device, run_from_config
from tunesmith.plan.planner import local_option, make_plan, train_command
from tunesmith.plan.throughput import cpu_efficiency, default_mfu
from tunesmith.config import resolve_epochs


def build_plan(cfg: Any, count: TokenCount, device: Device, *, gpus: list[Gpu], prices: list[Price],
               facts: tuple[ModelFacts, str] | None = None, gpu_count: int | None = None,
               strategy: str | None = None, only_gpu: str | None = None, calibration: Calibration | None = None,
               config_path: str | None = None, overrides: Sequence[str] = (),
               matmul_flops: Callable[[str], float] = cpu_matmul_flops) -> dict[str, Any]:
    """The plan for `cfg` trained on `count` tokens per epoch: every GPU row, and `device`
    (this machine). `strategy`: how several GPUs share the run (default: the config's
    distributed.strategy; auto: DDP where a replica fits, else FSDP). The recommendation's
    train_command names `config_path` (else a placeholder) and `overrides`, the config fields
    the plan's flags changed. `matmul_flops(dtype)` rates a CPU when no calibration applies to
    it (injected in tests; measured once per process otherwise)."""
    strategy = strategy or configured_strategy(cfg)
    run = run_from_config(cfg, count, device="cuda", gpus=gpu_count or 1, strategy=strategy, facts=facts)
    # A GPU run's utilisation stands in for the MFU default on every GPU row, when it trained
    # the same way (LoRA's utilisation says little about full fine-tuning's).
    mfu = calibration.mfu if calibration and calibration.mfu and calibration.method == run.setup.method else None
    plan = make_plan(run, gpus, prices, mfu=mfu, count=gpu_count, strategy=strategy, only_gpu=only_gpu)
    if plan["recommendation"]:
        plan["recommendation"]["train_command"] = train_command(plan["recommendation"], config_path, overrides)
    here = on_device(run, cfg, device.type)
    rate, time_from = local_rate(here, device, calibration, matmul_flops)
    plan["this_machine"] = local_option(here, device, flops_per_s=rate, time_from=time_from)
    plan["figures_for"] = {
        "setup, memory_gb, flops_per_token, options": f"one {run.setup.device} GPU per row ({run.setup.dtype})",
        "this_machine": f"{device.name} ({here.setup.device}, {here.setup.dtype})",
    }
    if calibration:
        plan["calibration"] = calibration_effect(calibration, run, device, mfu_applied=mfu is not None)
    if cfg.train.epochs == "auto" and cfg.train.max_steps is None and count.per_epoch:
        plan["notes"].append(resolve_epochs("auto", count.per_epoch)[1]
                             + "; early stopping may end it sooner, so time and cost are the most it takes")
    return plan


def local_rate(run: Run, device: Device, calibration: Calibration | None,
               matmul_flops: Callable[[str], float]) -> tuple[float | None, str | None]:
    """Executed FLOP/s expected on this machine and where the figure comes from: a run
    calibrated on the same kind of device; on a CPU otherwise, its measured matmul rate in the
    run's dtype times that dtype's efficiency in catalog/mfu.json. None: a GPU uses its
    catalog MFU default."""
    if run.total_tokens is None:
        return None, None
    if calibration and calibration.same_device(device):
        return calibration.flops_per_s, calibration.summary
    if device.type != "cpu":
        return None, None
    dtype = run.setup.dtype
    matmul = matmul_flops(dtype)
    efficiency = cpu_efficiency(dtype)
    return matmul * efficiency.value, (f"estimated from a measured {dtype} matmul rate of {matmul / 1e9:,.0f} "
                                       f"GFLOP/s x {efficiency.value:g} ({efficiency.measured})")


def calibration_effect(calibration: Calibration, run: Run, device: Device, *, mfu_applied: bool) -> dict[str, Any]:
    """What --calibrate changed, in words and as data: which GPU rows and whether this
    machine's time."""
    default = default_mfu(run.setup.method, "*")
    if mfu_applied:
        gpu_rows = (f"its {calibration.mfu.value:.1%} MFU replaces the {default.value:.0%} default on every GPU row "
                    f"(measured on {calibration.device.get('catalog_gpu')}; the other GPUs assume the same utilisation)")
    elif calibration.mfu is not None:
        gpu_rows = (f"it trained {calibration.method}, this plan is {run.setup.method}: the GPU rows keep the "
                    f"{default.value:.0%} MFU default")
    else:
        where = "a CPU" if calibration.device.get("type") == "cpu" else "a GPU not in the catalog"
        gpu_rows = f"it ran on {where}, which says nothing about GPUs: the GPU rows keep the {default.value:.0%} MFU default"
    here_name = calibration.device.get("name") or calibration.device.get("type")
    this_machine = ("sets this machine's time" if calibration.same_device(device)
                    else f"this machine's time is not from it (the run trained on {here_name}, this is {device.name})")
    return {"summary": calibration.summary, "run": calibration.run_dir, "device": calibration.device,
            "method": calibration.method, "tokens_per_s": calibration.tokens_per_s,
            "tokens_per_s_from": calibration.speed_from,
            "flops_per_s": calibration.flops_per_s, "gpu_rows": mfu_applied, "this_machine": calibration.same_device(device),
            "effect": f"{gpu_rows}; {this_machine}"}
