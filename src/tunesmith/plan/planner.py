"""The plan: for a model and a training setup, the memory it needs, and for every GPU in the
catalog how many it takes, how long, what it costs on demand and on spot; the cheapest that
fits with headroom; and, when nothing fits, which of the guide's changes would make it fit.

Pure functions on plain data; `tunesmith plan` prints the result and `tunesmith train`
asks it before loading anything (the pre-flight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.gpu import gpu as catalog_gpu
from tunesmith.catalog.prices import Price, cheapest, mid
from tunesmith.errors import UsageError
from tunesmith.plan.arch import count_params
from tunesmith.plan.inputs import Run, default_strategy
from tunesmith.plan.memory import GB, Memory, Setup, estimate, trainable_params
from tunesmith.plan.throughput import Mfu, assumptions, default_mfu, flops_per_token, hours

COUNTS = (1, 2, 4, 8)  # GPUs per node the planner tries
HEADROOM = 0.10  # keep 10% of the GPU free: fragmentation spikes and longer-than-planned rows


@dataclass(frozen=True)
class Option:
    gpu: str
    count: int
    strategy: str
    memory_gb: float  # per GPU
    peak_gb: float
    fits: bool  # peak under the GPU's memory
    headroom_ok: bool  # and HEADROOM of it left
    hours: float | None
    cost_on_demand: float | None
    cost_on_demand_range: tuple[float, float] | None
    cost_spot: float | None
    cost_spot_range: tuple[float, float] | None
    spot_hours: float | None
    provider_on_demand: str | None
    provider_spot: str | None
    price_as_of: str | None

    @property
    def best_cost(self) -> float | None:
        costs = [c for c in (self.cost_spot, self.cost_on_demand) if c is not None]
        return min(costs) if costs else None


def fits(memory: Memory, gpu: Gpu, headroom: float = 0.0) -> bool:
    return memory.peak <= gpu.memory_gb * GB * (1 - headroom)


def option_for(run: Run, gpu: Gpu, count: int, strategy: str | None, prices: list[Price], mfu: Mfu | None) -> Option:
    mfu = mfu or default_mfu(run.setup.method, gpu.name)
    setup = replace(run.setup, gpus=count, strategy=strategy or default_strategy(run.setup.method, count))
    memory = estimate(run.facts, setup)
    total = run.total_tokens
    train_hours = hours(total, run.facts, setup, gpu, count, mfu) if total else None
    offers = cheapest(prices, gpu.name)
    od, spot = offers["on_demand"], offers["spot"]
    od_hours = spot_hours = None
    if train_hours is not None:
        od_hours = train_hours + checkpoint_hours(run, setup)
        spot_hours = spot_wall_hours(run, setup, train_hours)
    cost_od, cost_od_range = _cost(od.on_demand if od else None, count, od_hours)
    cost_spot, cost_spot_range = _cost(spot.spot if spot else None, count, spot_hours)
    return Option(
        gpu=gpu.name, count=count, strategy=setup.strategy, memory_gb=gpu.memory_gb,
        peak_gb=round(memory.peak / GB, 2), fits=fits(memory, gpu), headroom_ok=fits(memory, gpu, HEADROOM),
        hours=None if od_hours is None else round(od_hours, 3),
        cost_on_demand=cost_od, cost_on_demand_range=cost_od_range,
        cost_spot=cost_spot, cost_spot_range=cost_spot_range,
        spot_hours=None if spot_hours is None else round(spot_hours, 3),
        provider_on_demand=od.provider if od else None, provider_spot=spot.provider if spot else None,
        price_as_of=(od or spot).as_of if (od or spot) else None,
    )


def _cost(price_range: tuple[float, float] | None, count: int, wall: float | None) -> tuple[float | None, tuple[float, float] | None]:
    """$ at the midpoint of a price range, and the range, for `count` GPUs over `wall` hours."""
    if price_range is None or wall is None:
        return None, None
    low, high = price_range
    return round(mid(price_range) * count * wall, 2), (round(low * count * wall, 2), round(high * count * wall, 2))


def steps(run: Run, setup: Setup) -> float:
    """Optimizer steps for all epochs, assuming packed rows (full to max_seq_len)."""
    per_step = setup.micro_batch * run.grad_accum * setup.seq_len * setup.gpus
    return (run.total_tokens or 0) / per_step


def checkpoint_hours(run: Run, setup: Setup) -> float:
    """Time spent writing checkpoints: adapters (fp32) or the full fp32 weights."""
    params = count_params(run.facts)["total"] if setup.method == "full" else trainable_params(run.facts, setup)
    seconds_each = 4 * params / GB / assumptions()["checkpoint_write_gb_per_s"]["value"]
    return steps(run, setup) / run.save_every * seconds_each / 3600


def spot_wall_hours(run: Run, setup: Setup, train_hours: float) -> float:
    """Expected wall-clock on spot: training, checkpoint writes, and for each expected
    preemption the work since the last checkpoint (half an interval on average) plus a restart."""
    spot = assumptions()["spot"]
    total_steps = max(steps(run, setup), 1)
    interval_hours = train_hours * min(run.save_every / total_steps, 1.0)
    base = train_hours + checkpoint_hours(run, setup)
    preemptions = spot["preemptions_per_hour"] * base
    return base + preemptions * (interval_hours / 2 + spot["restart_minutes"] / 60)


def options(run: Run, gpus: list[Gpu], prices: list[Price], mfu: Mfu | None, *, count: int | None = None,
            strategy: str | None = None) -> list[Option]:
    """Per GPU type, the fewest GPUs (of 1, 2, 4, 8) that fit with headroom, or the given
    count; ranked by cost, then by time; options that do not fit come last."""
    found = []
    for gpu in gpus:
        tried = [option_for(run, gpu, n, strategy, prices, mfu) for n in ((count,) if count else COUNTS)]
        good = [o for o in tried if o.headroom_ok]
        # None fits: show the count that comes closest (more GPUs only help when sharding).
        found.append(good[0] if good else min(tried, key=lambda o: (o.peak_gb, o.count)))

    def rank(o: Option) -> tuple:
        cost = o.best_cost
        return (not o.headroom_ok, not o.fits, cost is None, cost or 0.0, o.hours or 0.0, o.count * o.memory_gb)

    return sorted(found, key=rank)


def recommend(ranked: list[Option]) -> dict[str, Any] | None:
    """The cheapest option that fits with headroom; without prices, the smallest that fits."""
    good = [o for o in ranked if o.headroom_ok]
    if not good:
        return None
    priced = [o for o in good if o.best_cost is not None]
    if priced:
        best = priced[0]
        pricing = "spot" if best.cost_spot is not None and best.cost_spot <= (best.cost_on_demand or float("inf")) else "on_demand"
        why = f"cheapest GPU that fits with {HEADROOM:.0%} headroom, on {pricing.replace('_', '-')}"
        if pricing == "spot":
            why += ", with checkpoint writes and the expected preemption rework included"
        return {"gpu": best.gpu, "count": best.count, "pricing": pricing, "cost": best.best_cost,
                "hours": best.spot_hours if pricing == "spot" else best.hours, "peak_gb": best.peak_gb, "why": why}
    best = min(good, key=lambda o: (o.count * o.memory_gb, o.hours or 0.0))
    return {"gpu": best.gpu, "count": best.count, "pricing": None, "cost": None, "hours": best.hours,
            "peak_gb": best.peak_gb, "why": "smallest GPU memory that fits with headroom; no price known for it "
                                           "(add yours with --prices FILE.csv)"}


def advice(run: Run, gpus: list[Gpu]) -> list[dict[str, Any]]:
    """The guide's remedies for an OOM, in its order and each on top of the ones before:
    what the peak becomes and the smallest GPU (or 8 of the largest) it would then fit.
    Each has the `plan` flags and the config fields (`--set`) that make the change."""
    s = run.setup
    gpu_only = s.device == "cuda"  # 4-bit weights, 8-bit optimizers and GPU counts need CUDA
    ladder: list[tuple[str, list[str], Setup]] = []
    if not s.gradient_checkpointing:
        s = replace(s, gradient_checkpointing=True)
        ladder.append(("--gradient-checkpointing (recompute activations: ~30% slower)",
                       ["train.gradient_checkpointing=true"], s))
    if s.micro_batch > 1:
        accum = s.micro_batch * run.grad_accum
        s = replace(s, micro_batch=1)
        ladder.append((f"--batch 1 --grad-accum {accum} (same effective batch)",
                       ["train.micro_batch=1", f"train.grad_accum={accum}"], s))
    if s.method == "lora" and gpu_only:
        s = replace(s, method="qlora")
        ladder.append(("--method qlora (4-bit base; within ~1% on benchmarks per the guide)", ["method.name=qlora"], s))
    if s.method == "full" and not s.optimizer.endswith("8bit") and gpu_only:
        s = replace(s, optimizer="adamw_8bit")
        ladder.append(("--optimizer adamw_8bit (2 B of state per parameter instead of 8)", ["train.optimizer=adamw_8bit"], s))
    largest = max(gpus, key=lambda g: g.memory_gb)
    if gpu_only:
        ladder.append((f"--gpus 8 --gpu {largest.name} (FSDP shards weights, gradients and optimizer state)", [],
                       replace(s, gpus=8, strategy="fsdp")))
    by_memory = sorted(gpus, key=lambda g: g.memory_gb)
    out = []
    for number, (change, fields, setup) in enumerate(ladder):
        memory = estimate(run.facts, setup)
        if setup.gpus > 1:
            where = f"8 x {largest.name}" if fits(memory, largest, HEADROOM) else None
        else:
            where = next((g.name for g in by_memory if fits(memory, g, HEADROOM)), None)
        out.append({"change": ("then " if number else "") + change, "set": fields,
                    "peak_gb": round(memory.peak / GB, 2), "fits": where})
    return out


def make_plan(run: Run, gpus: list[Gpu], prices: list[Price], *, mfu: Mfu | None = None, count: int | None = None,
              strategy: str | None = None, only_gpu: str | None = None) -> dict[str, Any]:
    """The whole plan as plain data: what `tunesmith plan --json` prints and RUN/plan.json holds.
    `mfu`: a calibrated value for every GPU; none: each GPU's default from catalog/mfu.json."""
    chosen = [g for g in gpus if only_gpu is None or g.name.lower() == only_gpu.lower()]
    if not chosen:
        raise UsageError(f"--gpu {only_gpu}: not in the GPU catalog; it has {', '.join(g.name for g in gpus)}")
    ranked = options(run, chosen, prices, mfu, count=count, strategy=strategy)
    shown_mfu = mfu or default_mfu(run.setup.method, "*")
    memory = estimate(run.facts, run.setup)
    counts = count_params(run.facts)
    recommendation = recommend(ranked)
    plan: dict[str, Any] = {
        "model": {"config_from": run.config_from, "architecture": run.facts.to_dict()},
        "setup": {**asdict(run.setup), "target_modules": list(run.setup.target_modules),
                  "grad_accum": run.grad_accum, "save_every": run.save_every},
        "params": {"total": counts["total"], "active": counts["active"],
                   "trainable": trainable_params(run.facts, run.setup)},
        "tokens": {"per_epoch": run.tokens_per_epoch, "epochs": run.epochs, "total": run.total_tokens,
                   "from": run.tokens_from},
        "flops_per_token": flops_per_token(run.facts, run.setup),
        "memory_gb": {"peak": round(memory.peak / GB, 3), "phase": memory.peak_phase, **memory.gb()},
        "mfu": {"value": shown_mfu.value, "source": shown_mfu.source, "calibrated": shown_mfu.calibrated},
        "options": [_option_dict(o) for o in ranked],
        "recommendation": recommendation,
        "advice": [] if recommendation else advice(run, gpus),
        "assumptions": assumptions(),
        "notes": list(memory.notes),
    }
    if run.total_tokens is None:
        plan["notes"].append("no token count: give --tokens N or --dataset FILE for time and cost")
    return plan


def _option_dict(o: Option) -> dict[str, Any]:
    d = asdict(o)
    for key in ("cost_on_demand_range", "cost_spot_range"):
        d[key] = list(d[key]) if d[key] else None
    return d


def local_option(run: Run, device: Any, rate_flops: float | None = None) -> dict[str, Any]:
    """Does the run (set up for `device.type`, see `on_device`) fit the device this process
    sees, and how long would it take there? `rate_flops`: model FLOP/s a run measured on this
    kind of device (calibration); without it, a catalog GPU uses its MFU default and a CPU has
    no estimate."""
    setup = run.setup
    memory = estimate(run.facts, setup)
    wall = None
    if run.total_tokens and rate_flops:
        wall = run.total_tokens * flops_per_token(run.facts, setup)["model"] / rate_flops / 3600
    elif run.total_tokens and device.type == "cuda" and device.catalog_gpu:
        gpu = catalog_gpu(device.catalog_gpu)
        wall = hours(run.total_tokens, run.facts, setup, gpu, 1, default_mfu(setup.method, gpu.name))
    return {"device": device.to_dict(), "peak_gb": round(memory.peak / GB, 2),
            "fits": memory.peak <= device.available_gb * GB,
            "hours": None if wall is None else float(f"{wall:.4g}"),  # short runs keep their precision
            "memory_gb": memory.gb()}
