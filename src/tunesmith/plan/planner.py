"""The plan: for a model and a training setup, the memory it needs, and for every GPU in the
catalog how many it takes, how long, what it costs on demand and on spot; the cheapest that
fits with headroom; and, when nothing fits, which of the guide's changes would make it fit.

Pure functions on plain data; `tunesmith plan` prints the result and `tunesmith train`
asks it before loading anything (the pre-flight).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

from tunesmith.catalog.gpu import Gpu
from tunesmith.catalog.gpu import gpu as catalog_gpu
from tunesmith.catalog.prices import Price, Range, cheapest, mid
from tunesmith.errors import UsageError
from tunesmith.models.arch import count_params
from tunesmith.plan.device import bitsandbytes_installed
from tunesmith.plan.inputs import Run
from tunesmith.plan.memory import GB, Memory, Setup, estimate, trainable_params
from tunesmith.plan.throughput import Mfu, assumptions, default_mfu, flops_per_token, hours

COUNTS = (1, 2, 4, 8)  # GPUs per node the planner tries
# What `tunesmith train --nproc N` runs through accelerate alone; the others need DeepSpeed.
DEEPSPEED = ("zero2", "zero3")
# The train command's config when plan was given none: the name `tunesmith config show > CONFIG.yaml` writes.
CONFIG_PLACEHOLDER = "CONFIG.yaml"
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
    # The date of the price whose provider `plan` names (provider_spot, else provider_on_demand):
    # with prices from several sources the cheapest spot and on-demand offers can be two providers'
    # read on different days, so each has its own date as well.
    price_as_of: str | None
    on_demand_as_of: str | None = None
    spot_as_of: str | None = None
    # The $ per GPU-hour each cost is priced at: the provider's offer for one machine of `count` GPUs
    # (or a price for any machine size). None: no such offer, and no cost.
    on_demand_per_gpu_hour: Range | None = None
    spot_per_gpu_hour: Range | None = None
    mfu: float | None = None  # the utilisation this row's time assumes
    mfu_calibrated: bool = False

    @property
    def best_cost(self) -> float | None:
        costs = [c for c in (self.cost_spot, self.cost_on_demand) if c is not None]
        return min(costs) if costs else None


def fits(memory: Memory, gpu: Gpu, headroom: float = 0.0) -> bool:
    return memory.peak <= gpu.memory_gb * GB * (1 - headroom)


def option_for(run: Run, gpu: Gpu, count: int, strategy: str | None, prices: list[Price], mfu: Mfu | None) -> Option:
    """`count` x `gpu` with `strategy`; none given and several GPUs: DDP when a whole replica
    fits each GPU with headroom (no gathers, the fastest), else FSDP (shards it)."""
    if strategy is None and count > 1:
        replicated = _option(run, gpu, count, "ddp", prices, mfu)
        return replicated if replicated.headroom_ok else _option(run, gpu, count, "fsdp", prices, mfu)
    return _option(run, gpu, count, strategy or "ddp", prices, mfu)  # one GPU: nothing to share


def _option(run: Run, gpu: Gpu, count: int, strategy: str, prices: list[Price], mfu: Mfu | None) -> Option:
    mfu = mfu or default_mfu(run.setup.method, gpu.name)
    setup = replace(run.setup, gpus=count, strategy=strategy)
    memory = estimate(run.facts, setup)
    total = run.total_tokens
    train_hours = hours(total, run.facts, setup, gpu, count, mfu) if total else None
    # One machine with `count` of the GPU (multi-node is not planned): priced only by offers for that
    # machine size, since a 1-GPU machine's rate is often far below what a 4- or 8-GPU machine costs per GPU.
    offers = cheapest(prices, gpu.name, count)
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
        hours=significant(od_hours),
        cost_on_demand=cost_od, cost_on_demand_range=cost_od_range,
        cost_spot=cost_spot, cost_spot_range=cost_spot_range,
        spot_hours=significant(spot_hours),
        provider_on_demand=od.provider if od else None, provider_spot=spot.provider if spot else None,
        price_as_of=(spot or od).as_of if (od or spot) else None,
        on_demand_as_of=od.as_of if od else None, spot_as_of=spot.as_of if spot else None,
        on_demand_per_gpu_hour=od.on_demand if od else None, spot_per_gpu_hour=spot.spot if spot else None,
        mfu=mfu.value, mfu_calibrated=mfu.calibrated,
    )


def significant(value: float | None, digits: int = 4) -> float | None:
    """Round to `digits` significant digits: a 2-minute run keeps its minutes and cents
    (fixed decimals rounded them to 0), a million-hour one loses nothing that matters."""
    return None if value is None else float(f"{value:.{digits}g}")


def _cost(price_range: tuple[float, float] | None, count: int, wall: float | None) -> tuple[float | None, tuple[float, float] | None]:
    """$ at the midpoint of a price range, and the range, for `count` GPUs over `wall` hours."""
    if price_range is None or wall is None:
        return None, None
    low, high = price_range
    return significant(mid(price_range) * count * wall), (significant(low * count * wall), significant(high * count * wall))


def steps(run: Run, setup: Setup) -> float:
    """Optimizer steps for all epochs, assuming packed rows (full to max_seq_len)."""
    if run.max_steps is not None:
        return float(run.max_steps)
    per_step = setup.micro_batch * run.grad_accum * setup.seq_len * setup.gpus
    return (run.total_tokens or 0) / per_step


def checkpoint_hours(run: Run, setup: Setup) -> float:
    """Time spent writing checkpoints: adapters (fp32) or the full fp32 weights."""
    params = count_params(run.facts)["total"] if setup.method == "full" else trainable_params(run.facts, setup)
    seconds_each = 4 * params / GB / assumptions()["checkpoint_write_gb_per_s"]["value"]
    return steps(run, setup) / run.save_every * seconds_each / 3600


def spot_wall_hours(run: Run, setup: Setup, train_hours: float) -> float:
    """Expected wall-clock on spot: training, checkpoint writes, and for each expected
    preemption the work since the last checkpoint (half an interval on average) plus a restart:
    a new machine (assumed) and tunesmith's resume (measured, bench/resume_time.py)."""
    spot = assumptions()["spot"]
    total_steps = max(steps(run, setup), 1)
    interval_hours = train_hours * min(run.save_every / total_steps, 1.0)
    base = train_hours + checkpoint_hours(run, setup)
    preemptions = spot["preemptions_per_hour"] * base
    restart_hours = spot["provision_minutes"] / 60 + spot["resume_seconds"] / 3600
    return base + preemptions * (interval_hours / 2 + restart_hours)


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
        return {"gpu": best.gpu, "count": best.count, "strategy": _strategy(best), "pricing": pricing,
                "cost": best.best_cost, "hours": best.spot_hours if pricing == "spot" else best.hours,
                "peak_gb": best.peak_gb, "why": why}
    best = min(good, key=lambda o: (o.count * o.memory_gb, o.hours or 0.0))
    # No cost to compare: without a token count there is no time, else no GPU that fits is priced.
    why = ("no token count, so no cost to compare (give --tokens or --dataset)" if best.hours is None
           else f"no price known for a machine with {best.count} of it (add yours with --prices FILE.csv)")
    return {"gpu": best.gpu, "count": best.count, "strategy": _strategy(best), "pricing": None, "cost": None,
            "hours": best.hours, "peak_gb": best.peak_gb, "why": f"smallest GPU memory that fits with headroom; {why}"}


def _strategy(o: Option) -> str | None:
    """How several GPUs share the run; None for one GPU, which has nothing to share."""
    return o.strategy if o.count > 1 else None


def train_command(recommendation: dict[str, Any], config: str | None = None, overrides: Sequence[str] = ()) -> str:
    """The command that trains what `recommendation` planned: the config plan read (or a
    placeholder), the config fields plan's flags changed (as --set), one process per GPU, and
    the strategy when there are several. Quoted for a POSIX shell."""
    words = ["tunesmith", "train", config or CONFIG_PLACEHOLDER]
    for field in overrides:
        words += ["--set", field]
    words += ["--nproc", str(recommendation["count"])]
    if recommendation["count"] > 1:
        words += ["--set", f"distributed.strategy={recommendation['strategy']}"]
    return shlex.join(words)


Remedy = tuple[str, list[str], Setup]  # (the change in plan flags, the --set fields, the setup after it)


def advice(run: Run, gpus: list[Gpu], prices: list[Price] = ()) -> list[dict[str, Any]]:
    """The guide's remedies for an OOM, in its order and each on top of the ones before:
    what the peak becomes and the smallest GPU (or 8 of the cheapest priced that fit) it would
    then fit. Each has the `plan` flags and the config fields (`--set`) that make the change.

    A remedy that does not lower the peak is neither listed nor applied: with full
    fine-tuning the optimizer step sets the peak, and a smaller batch changes nothing. It is
    tried again after each later remedy, since sharding the optimizer over 8 GPUs can make
    the activations the peak again."""
    gpu_only = run.setup.device == "cuda"  # 4-bit weights, 8-bit optimizers and GPU counts need CUDA
    ladder: list[Callable[[Setup], Remedy | None]] = [_checkpointing, lambda s: _batch_one(s, run.grad_accum)]
    if gpu_only:
        ladder += [_qlora, _eight_bit, lambda s: _eight_gpus(s, run, gpus, prices)]
    setup, peak = run.setup, estimate(run.facts, run.setup).peak
    out: list[dict[str, Any]] = []
    deferred: list[Callable[[Setup], Remedy | None]] = []
    for remedy in ladder:
        for attempt in [remedy] + (deferred if out else []):
            found = attempt(setup)
            if found is None:
                continue
            change, fields, candidate = found
            memory = estimate(run.facts, candidate)
            if memory.peak >= peak:
                if attempt is remedy:
                    deferred.append(remedy)
                continue
            if attempt is not remedy:
                deferred.remove(attempt)
            setup, peak = candidate, memory.peak
            out.append({"change": ("then " if out else "") + change, "set": fields, "gpus": candidate.gpus,
                        "peak_gb": round(memory.peak / GB, 2), "fits": _where(run, candidate, memory, gpus, prices)})
    return out


def _checkpointing(s: Setup) -> Remedy | None:
    if s.gradient_checkpointing:
        return None
    return ("--gradient-checkpointing (recompute activations: ~30% slower)", ["train.gradient_checkpointing=true"],
            replace(s, gradient_checkpointing=True))


def _batch_one(s: Setup, grad_accum: int) -> Remedy | None:
    if s.micro_batch == 1:
        return None
    accum = s.micro_batch * grad_accum
    return (f"--batch 1 --grad-accum {accum} (same effective batch)", ["train.micro_batch=1", f"train.grad_accum={accum}"],
            replace(s, micro_batch=1))


def _qlora(s: Setup) -> Remedy | None:
    if s.method != "lora":
        return None
    return "--method qlora (4-bit base; within ~1% on benchmarks per the guide)", ["method.name=qlora"], replace(s, method="qlora")


def _eight_bit(s: Setup) -> Remedy | None:
    if s.method != "full" or s.optimizer.endswith("8bit"):
        return None
    return ("--optimizer adamw_8bit (2 B of state per parameter instead of 8)", ["train.optimizer=adamw_8bit"],
            replace(s, optimizer="adamw_8bit"))


def _eight_gpus(s: Setup, run: Run, gpus: list[Gpu], prices: list[Price]) -> Remedy | None:
    if s.gpus >= 8:
        return None
    setup = replace(s, gpus=8, strategy="fsdp")
    chosen, why, _ = eight_gpu_choice(replace(run, setup=setup), estimate(run.facts, setup), gpus, prices)
    return (f"--gpus 8 --gpu {chosen.name} (FSDP shards weights, gradients and optimizer state; {why}; trained with "
            f"`tunesmith train … --nproc 8 --set distributed.strategy=fsdp`)", [], setup)


def _where(run: Run, setup: Setup, memory: Memory, gpus: list[Gpu], prices: list[Price]) -> str | None:
    """Where a setup fits with headroom: the smallest single GPU, or 8 of the chosen one."""
    if setup.gpus > 1:
        chosen, _, fitting = eight_gpu_choice(replace(run, setup=setup), memory, gpus, prices)
        return f"8 x {chosen.name}" if fitting else None
    return next((g.name for g in sorted(gpus, key=lambda g: g.memory_gb) if fits(memory, g, HEADROOM)), None)


def eight_gpu_choice(run: Run, memory: Memory, gpus: list[Gpu], prices: list[Price]) -> tuple[Gpu, str, bool]:
    """(GPU, why, whether it fits) for 8 GPUs: of those that fit with headroom, the cheapest
    priced for an 8-GPU machine (the whole run when the tokens are known, else per hour); without
    a price, the smallest that fits, saying no price is known; when none fits, the largest."""
    fitting = [g for g in gpus if fits(memory, g, HEADROOM)]
    priced = []
    for g in fitting:
        offers = [p for p in cheapest(prices, g.name, 8).values() if p]
        if not offers:
            continue
        total = option_for(run, g, 8, run.setup.strategy, prices, None).best_cost
        hourly = min(mid(p.spot) if p.spot else mid(p.on_demand) for p in offers)
        priced.append((total if total is not None else 8 * hourly, g.memory_gb, g, total))
    if priced:
        _, _, chosen, total = min(priced, key=lambda p: (p[0], p[1]))
        return chosen, "the cheapest priced GPU that fits 8-way" + (f", ~${total:,.2f}" if total is not None else ""), True
    if fitting:
        chosen = min(fitting, key=lambda g: g.memory_gb)
        return chosen, "no price is known for any GPU that fits 8-way (add yours: --prices FILE.csv)", True
    return max(gpus, key=lambda g: g.memory_gb), "the largest GPU in the catalog", False


def make_plan(run: Run, gpus: list[Gpu], prices: list[Price], *, mfu: Mfu | None = None, count: int | None = None,
              strategy: str | None = None, only_gpu: str | None = None) -> dict[str, Any]:
    """The GPU part of a plan as plain data (`build.build_plan` adds this machine: that is what
    `tunesmith plan --json` prints and RUN/plan.json holds). `mfu`: a calibrated value for
    every GPU; none: each GPU's default from catalog/mfu.json."""
    chosen = [g for g in gpus if only_gpu is None or g.name.lower() == only_gpu.lower()]
    if not chosen:
        raise UsageError(f"--gpu {only_gpu}: not in the GPU catalog; it has {', '.join(g.name for g in gpus)}")
    ranked = options(run, chosen, prices, mfu, count=count, strategy=strategy)
    if count and count > 1 and strategy is None and ranked:
        # The figures above the table are for the strategy the best row uses (DDP or FSDP).
        run = replace(run, setup=replace(run.setup, strategy=ranked[0].strategy))
    shown_mfu = mfu or default_mfu(run.setup.method, "*")
    memory = estimate(run.facts, run.setup)
    counts = count_params(run.facts)
    recommendation = recommend(ranked)
    plan: dict[str, Any] = {
        "model": {"config_from": run.config_from, "architecture": run.facts.to_dict()},
        "setup": {**setup_dict(run.setup), "grad_accum": run.grad_accum, "save_every": run.save_every},
        "params": {"total": counts["total"], "active": counts["active"],
                   "trainable": trainable_params(run.facts, run.setup)},
        "tokens": {"per_epoch": run.tokens_per_epoch, "epochs": run.epochs, "total": run.total_tokens,
                   "from": run.tokens_from, "max_steps": run.max_steps},
        "flops_per_token": flops_per_token(run.facts, run.setup),
        "memory_gb": {"peak": round(memory.peak / GB, 3), "phase": memory.peak_phase, **memory.gb()},
        "mfu": {"value": shown_mfu.value, "source": shown_mfu.source, "calibrated": shown_mfu.calibrated},
        "options": [_option_dict(o) for o in ranked],
        "recommendation": recommendation,
        "advice": [] if recommendation else advice(run, gpus, prices),
        "assumptions": assumptions(),
        "notes": list(memory.notes),
    }
    if run.max_steps is not None:
        plan["notes"].append(
            f"train.max_steps = {run.max_steps} sets the length: {run.max_steps:,} steps x {run.setup.micro_batch} rows "
            f"x grad-accum {run.grad_accum} x {run.setup.seq_len} tokens = {run.total_tokens:,.0f} tokens at most "
            "(packed rows are nearly full; epochs do not count)")
    elif run.total_tokens is None:
        plan["notes"].append("no token count: give --tokens N or --dataset FILE for time and cost")
    if recommendation and recommendation["strategy"] in DEEPSPEED:
        plan["notes"].append(f"{recommendation['strategy']} trains through DeepSpeed, which `tunesmith train` does not "
                             "run yet (it refuses the strategy): priced here only; fsdp shards the same way and runs")
    return plan


def setup_dict(setup: Setup) -> dict[str, Any]:
    """A Setup as JSON: double quantisation only where there is a 4-bit base to quantise."""
    d = {**asdict(setup), "target_modules": list(setup.target_modules)}
    if setup.method != "qlora":
        del d["double_quant"]
    return d


def _option_dict(o: Option) -> dict[str, Any]:
    d = asdict(o)
    for key in ("cost_on_demand_range", "cost_spot_range", "on_demand_per_gpu_hour", "spot_per_gpu_hour"):
        d[key] = list(d[key]) if d[key] else None
    return d


def cannot_run(setup: Setup, device_type: str, bitsandbytes: bool) -> str | None:
    """Why this setup cannot train on a `device_type` device at all, whatever the memory:
    4-bit weights and 8-bit or paged optimizers are bitsandbytes kernels for CUDA GPUs."""
    needs, instead = [], []
    if setup.method == "qlora":
        needs.append("QLoRA's 4-bit base")
        instead.append("--method lora")
    if setup.optimizer != "adamw":
        needs.append(f"the {setup.optimizer} optimizer")
        instead.append("--set train.optimizer=adamw")
    if not needs:
        return None
    what = " and ".join(needs)
    if device_type != "cuda":
        return f"{what} needs a CUDA GPU and bitsandbytes; this machine has no CUDA GPU (here: {' '.join(instead)})"
    if not bitsandbytes:
        return f"{what} needs bitsandbytes, which is not installed: pip install bitsandbytes"
    return None


def fits_here(peak_bytes: float, device: Any) -> bool:
    """The GPU options' rule on this machine too: the peak leaves HEADROOM of what is free
    (allocator spikes, and on a CPU the other processes that share the memory)."""
    return peak_bytes <= device.available_gb * GB * (1 - HEADROOM)


def local_option(run: Run, device: Any, *, flops_per_s: float | None = None, time_from: str | None = None,
                 bitsandbytes: bool | None = None) -> dict[str, Any]:
    """Does the run (set up for `device.type`, see `on_device`) fit and run on the device this
    process sees, and how long would it take there? `flops_per_s`: executed FLOP/s expected
    there (a calibrated run's, or a CPU's measured matmul rate x its efficiency), with
    `time_from` saying which; without it a catalog GPU uses its MFU default. `bitsandbytes`:
    whether it is installed (None: look)."""
    setup = run.setup
    memory = estimate(run.facts, setup)
    total = run.total_tokens
    wall = None
    if total and flops_per_s:
        wall = total * flops_per_token(run.facts, setup)["executed"] / flops_per_s / 3600
    elif total and device.type == "cuda" and device.catalog_gpu:
        gpu = catalog_gpu(device.catalog_gpu)
        mfu = default_mfu(setup.method, gpu.name)
        wall = hours(total, run.facts, setup, gpu, 1, mfu)
        flops_per_s = gpu.bf16_tflops * 1e12 * mfu.value
        time_from = f"{gpu.name} at the {mfu.value:.0%} MFU default"
    blocked = cannot_run(setup, device.type, bitsandbytes_installed() if bitsandbytes is None else bitsandbytes)
    return {"device": device.to_dict(), "setup": setup_dict(setup), "peak_gb": round(memory.peak / GB, 2),
            "fits": fits_here(memory.peak, device), "runs_here": blocked is None, "cannot_run": blocked,
            "hours": significant(wall),  # short runs keep their precision
            "flops_per_s": flops_per_s if wall is not None else None,
            "time_from": time_from if wall is not None else None,
            "memory_gb": memory.gb()}
