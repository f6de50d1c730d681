"""The pre-flight `tunesmith train` runs before loading anything: will this config fit the
device this process sees, and if not, what would."""

from __future__ import annotations

from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.prices import Price
from tunesmith.models.arch import UnsupportedModel
from tunesmith.plan.inputs import on_device, run_from_config
from tunesmith.plan.planner import HEADROOM, ONE_DEVICE, advice, local_option, options


def preflight(cfg: Any, device: Any) -> dict[str, Any]:
    """Will this config's training fit the device this process sees? Asked before anything
    is loaded, with every position trained (the worst case: the data is not counted yet).
    {"fits": bool | None (None: could not plan), "peak_gb", "device", "reason", "run": Run | None}.
    (A setup this device cannot run at all, QLoRA without CUDA, is refused before this.)
    A model the planner cannot read (an architecture it does not count, a hub id not cached
    yet) skips the check with a note; a broken config.json stops here, as it would stop the
    loader."""
    try:
        run = run_from_config(cfg, device=device.type)  # memory needs no token count
    except UnsupportedModel as e:
        return {"fits": None, "peak_gb": None, "device": device.to_dict(), "run": None,
                "reason": f"pre-flight skipped: {e}"}
    here = local_option(run, device)
    return {"fits": here["fits"], "peak_gb": here["peak_gb"], "device": device.to_dict(), "run": run,
            "memory_gb": here["memory_gb"], "reason": None}


def refusal(check: dict[str, Any], cfg: Any, gpus: list[Gpu], prices: list[Price]) -> str:
    """Why a run is refused, and what would fit instead: GPUs from the catalog and the guide's
    remedies on this device."""
    d = check["device"]
    top = sorted(((v, k) for k, v in check["memory_gb"].items()), reverse=True)[:3]
    lines = [f"pre-flight: this run needs ~{check['peak_gb']:.1f} GB at its peak ("
             + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for v, k in top)
             + f") but {d['name']} has {d['available_gb']:.1f} GB free."]
    run = on_device(check["run"], cfg, "cuda")
    ranked = [o for o in options(run, gpus, prices, None) if o.headroom_ok][:3]
    if ranked:
        lines.append("GPUs that would fit: " + "; ".join(
            f"{o.count} x {o.gpu} ({o.peak_gb:.1f} of {o.memory_gb:g} GB"
            + (f", ~${o.best_cost:,.2f}" if o.best_cost is not None else "") + ")" for o in ranked) + "."
            + (f" ({ONE_DEVICE}.)" if any(o.count > 1 for o in ranked) else ""))
    else:
        fix = _first_fix(advice(run, gpus, prices), lambda step: step["fits"] is not None)
        if fix:
            where = fix[1]["fits"] if " x " in fix[1]["fits"] else f"1 x {fix[1]['fits']}"
            lines.append(f"As configured it fits no GPU in the catalog; with {fix[0]} it fits {where} "
                         f"({fix[1]['peak_gb']:.1f} GB).")
    fix = _first_fix(advice(check["run"], gpus, prices), lambda step: step["peak_gb"] <= d["available_gb"] * (1 - HEADROOM))
    if fix:
        lines.append(f"Here, {fix[0]} brings it to {fix[1]['peak_gb']:.1f} GB.")
    lines.append("See `tunesmith plan` for the whole table; to try anyway, run train with --no-preflight.")
    return " ".join(lines)


def _first_fix(steps: list[dict[str, Any]], good: Any) -> tuple[str, dict[str, Any]] | None:
    """The config changes (as --set flags, cumulative) up to the first advice step that is good,
    and that step; None when no step is, or the first good one needs more GPUs."""
    fields: list[str] = []
    for step in steps:
        if not step["set"]:
            return None
        fields += step["set"]
        if good(step):
            return " ".join("--set " + f for f in fields), step
    return None
