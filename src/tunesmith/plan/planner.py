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
from tunesmith.catalog.prices import Price, cheapest, mid
from tunesmith.plan.arch import ModelFacts, count_params
from tunesmith.plan.memory import GB, Memory, Setup, estimate, trainable_params
from tunesmith.plan.throughput import Mfu, assumptions, default_mfu, flops_per_token, hours

COUNTS = (1, 2, 4, 8)  # GPUs per node the planner tries
HEADROOM = 0.10  # keep 10% of the GPU free: fragmentation spikes and longer-than-planned rows


def setup_from_config(cfg: Any, *, device: str = "cuda", gpus: int = 1, strategy: str | None = None) -> Setup:
    """The Setup a run config trains with on `device` (the dtype `auto` resolves there)."""
    dtype = "fp32" if cfg.model.dtype == "float32" or (device == "cpu" and cfg.model.dtype == "auto") else "bf16"
    return Setup(
        method=cfg.method.name,
        seq_len=cfg.train.max_seq_len,
        micro_batch=cfg.train.micro_batch,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        lora_r=cfg.method.r,
        lora_dropout=cfg.method.dropout,
        target_modules=tuple(cfg.method.target_modules),
        optimizer=cfg.train.optimizer,
        device=device,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        gpus=gpus,
        strategy=strategy or default_strategy(cfg.method.name, gpus),
    )


def default_strategy(method: str, gpus: int) -> str:
    """One GPU: nothing to split. Several: full fine-tuning shards (FSDP), adapters replicate
    (DDP: a LoRA replica is the frozen base, which each GPU needs whole anyway)."""
    if gpus == 1:
        return "ddp"
    return "fsdp" if method == "full" else "ddp"


@dataclass(frozen=True)
class Run:
    """What is being planned: the model, the setup, and how many tokens it trains on."""

    facts: ModelFacts
    config_from: str
    setup: Setup
    tokens_per_epoch: int | None
    epochs: float
    tokens_from: str | None
    grad_accum: int = 1
    save_every: int = 200

    @property
    def total_tokens(self) -> float | None:
        return None if self.tokens_per_epoch is None else self.tokens_per_epoch * self.epochs


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
        od_hours = train_hours + checkpoint_hours(run, setup, train_hours)
        spot_hours = spot_wall_hours(run, setup, train_hours)

    def cost(offer: Price | None, price_range: Any, wall: float | None) -> tuple[float | None, tuple[float, float] | None]:
        if offer is None or price_range is None or wall is None:
            return None, None
        low, high = price_range
        return round(mid(price_range) * count * wall, 2), (round(low * count * wall, 2), round(high * count * wall, 2))

    cost_od, cost_od_range = cost(od, od.on_demand if od else None, od_hours)
    cost_spot, cost_spot_range = cost(spot, spot.spot if spot else None, spot_hours)
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


def steps(run: Run, setup: Setup) -> float:
    """Optimizer steps for all epochs, assuming packed rows (full to max_seq_len)."""
    per_step = setup.micro_batch * run.grad_accum * setup.seq_len * setup.gpus
    return (run.total_tokens or 0) / per_step


def checkpoint_hours(run: Run, setup: Setup, train_hours: float) -> float:
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
    base = train_hours + checkpoint_hours(run, setup, train_hours)
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
    steps_: list[tuple[str, list[str], Setup]] = []
    if not s.gradient_checkpointing:
        s = replace(s, gradient_checkpointing=True)
        steps_.append(("--gradient-checkpointing (recompute activations: ~30% slower)",
                       ["train.gradient_checkpointing=true"], s))
    if s.micro_batch > 1:
        accum = s.micro_batch * run.grad_accum
        s = replace(s, micro_batch=1)
        steps_.append((f"--batch 1 --grad-accum {accum} (same effective batch)",
                       ["train.micro_batch=1", f"train.grad_accum={accum}"], s))
    if s.method == "lora" and gpu_only:
        s = replace(s, method="qlora")
        steps_.append(("--method qlora (4-bit base; within ~1% on benchmarks per the guide)", ["method.name=qlora"], s))
    if s.method == "full" and not s.optimizer.endswith("8bit") and gpu_only:
        s = replace(s, optimizer="adamw_8bit")
        steps_.append(("--optimizer adamw_8bit (2 B of state per parameter instead of 8)", ["train.optimizer=adamw_8bit"], s))
    largest = max(gpus, key=lambda g: g.memory_gb)
    if gpu_only:
        steps_.append((f"--gpus 8 --gpu {largest.name} (FSDP shards weights, gradients and optimizer state)", [],
                       replace(s, gpus=8, strategy="fsdp")))
    by_memory = sorted(gpus, key=lambda g: g.memory_gb)
    out = []
    for number, (change, fields, setup) in enumerate(steps_):
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
        from tunesmith.errors import UsageError

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


# ---------------------------------------------------------------- inputs

def parse_tokens(text: str) -> int:
    """"20M", "1.5B", "350k" or "2000000" -> tokens."""
    from tunesmith.errors import UsageError

    scale = {"k": 1e3, "m": 1e6, "b": 1e9}
    t = text.strip().lower().replace(",", "").replace("_", "")
    try:
        value = float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except ValueError:
        raise UsageError(f"--tokens {text!r}: expected a number of tokens like 2000000, 350k, 20M or 1.5B") from None
    if value <= 0:
        raise UsageError(f"--tokens {text!r}: must be above 0")
    return int(value)


def dataset_tokens(path: str, cfg: Any) -> dict[str, Any]:
    """Tokens per epoch of a data file as training would see it: cleaned with the run's
    clean settings and counted with the model's own tokenizer and chat template."""
    from tunesmith.data.clean import clean_file
    from tunesmith.data.tokens import load_target_tokenizer, token_encoder
    from tunesmith.errors import UsageError

    try:
        tokenizer = load_target_tokenizer(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsageError(f"--dataset needs {cfg.model.source}'s tokenizer, which is not available here "
                         f"({str(e).splitlines()[0]}); give --tokens N instead") from None
    result = clean_file(path, cfg.clean, encode=token_encoder(tokenizer, cfg.data.train_on_inputs),
                        max_seq_len=cfg.train.max_seq_len, tokenizer_name=cfg.model.source, seed=cfg.train.seed)
    tokens = result.report["tokens"]
    return {"per_epoch": tokens["per_epoch"], "trained_per_epoch": tokens["trained_per_epoch"],
            "rows": result.report["kept"]}


def run_from_config(cfg: Any, *, tokens: str | None = None, dataset: str | None = None, device: str = "cuda",
                    gpus: int = 1, strategy: str | None = None, count_data: bool = True) -> Run:
    """What to plan, from a run config and the plan command's token flags. Without either,
    the config's training file is counted, unless `count_data` is off."""
    from tunesmith.plan.facts import model_facts

    facts, config_from = model_facts(cfg.model.source)
    setup = setup_from_config(cfg, device=device, gpus=gpus, strategy=strategy)
    per_epoch, tokens_from = None, None
    if dataset is None and tokens is None and count_data and cfg.data.train:
        from pathlib import Path

        if Path(cfg.data.train).is_file():
            dataset = cfg.data.train
        else:
            tokens_from = f"data.train {cfg.data.train} not found: not counted"
    if tokens is not None:
        per_epoch, tokens_from = parse_tokens(tokens), "--tokens"
    elif dataset:
        counted = dataset_tokens(dataset, cfg)
        per_epoch, tokens_from = counted["per_epoch"], f"{dataset}: {counted['rows']:,} rows after cleaning"
        if counted["per_epoch"]:
            # A packed micro-batch mixes many examples, so its share of trained positions stays
            # near the file's; a quarter more covers uneven batches.
            share = counted["trained_per_epoch"] / counted["per_epoch"]
            setup = replace(setup, trained_fraction=min(1.0, 1.25 * share))
    return Run(facts=facts, config_from=config_from, setup=setup, tokens_per_epoch=per_epoch,
               epochs=cfg.train.epochs, tokens_from=tokens_from, grad_accum=cfg.train.grad_accum,
               save_every=cfg.train.save_every)


# ---------------------------------------------------------------- this machine

def on_device(run: Run, cfg: Any, device_type: str) -> Run:
    """The same run on another kind of device (a config's dtype `auto` means fp32 on CPU)."""
    setup = setup_from_config(cfg, device=device_type)
    return replace(run, setup=replace(setup, trained_fraction=run.setup.trained_fraction))


def local_option(run: Run, device: Any, rate_flops: float | None = None) -> dict[str, Any]:
    """Does the run (set up for `device.type`, see `on_device`) fit the device this process
    sees, and how long would it take there? `rate_flops`: model FLOP/s a run measured on this kind of device (calibration); without
    it, a catalog GPU uses its MFU default and a CPU has no estimate."""
    from tunesmith.catalog.gpu import gpu as catalog_gpu

    setup = run.setup
    memory = estimate(run.facts, setup)
    wall = None
    if run.total_tokens and rate_flops:
        wall = run.total_tokens * flops_per_token(run.facts, setup)["model"] / rate_flops / 3600
    elif run.total_tokens and device.type == "cuda" and device.catalog_gpu:
        gpu = catalog_gpu(device.catalog_gpu)
        wall = hours(run.total_tokens, run.facts, setup, gpu, 1, default_mfu(setup.method, gpu.name))
    return {"device": device.to_dict(), "peak_gb": round(memory.peak / GB, 2),
            "fits": memory.peak <= device.available_gb * GB, "hours": None if wall is None else round(wall, 3),
            "memory_gb": memory.gb()}


def calibrate(run_dir: Any, gpus: list[Gpu]) -> tuple[Mfu | None, float | None, str]:
    """From a finished or running run folder: (MFU on its catalog GPU, or None on CPU; model
    FLOP/s it achieved; one line saying what was measured)."""
    import json
    from pathlib import Path

    from tunesmith.config import load_config
    from tunesmith.errors import UsageError
    from tunesmith.plan.facts import model_facts

    run_dir = Path(run_dir)
    metrics, plan_file, config_file = run_dir / "metrics.jsonl", run_dir / "plan.json", run_dir / "config.yaml"
    for needed in (metrics, plan_file, config_file):
        if not needed.is_file():
            raise UsageError(f"--calibrate {run_dir}: no {needed.name} there (is it a run folder written by `tunesmith train`?)")
    last = None
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{metrics}:{number}: not valid JSON") from None
    if not last or not last.get("tokens_per_s"):
        raise UsageError(f"{metrics}: no step with tokens_per_s logged yet")
    device = json.loads(plan_file.read_text(encoding="utf-8")).get("this_machine", {}).get("device", {})
    cfg = load_config(config_file)
    facts, _ = model_facts(cfg.model.source)
    setup = setup_from_config(cfg, device=device.get("type", "cuda"))
    tokens_per_s = float(last["tokens_per_s"])
    rate = tokens_per_s * flops_per_token(facts, setup)["model"]
    where = device.get("catalog_gpu") or device.get("name") or device.get("type", "?")
    line = f"calibrated from {run_dir}: {tokens_per_s:,.0f} tokens/s of {cfg.model.source} {setup.method} on {where}"
    gpu = next((g for g in gpus if g.name == device.get("catalog_gpu")), None)
    if device.get("type") != "cuda" or gpu is None:
        return None, rate, line
    value = rate / (gpu.bf16_tflops * 1e12)
    return Mfu(round(value, 4), line + f" = {value:.1%} MFU", calibrated=True), rate, line + f" = {value:.1%} MFU"


# ---------------------------------------------------------------- pre-flight

def preflight(cfg: Any, device: Any) -> dict[str, Any]:
    """Will this config's training fit the device this process sees? Asked before anything
    is loaded. {"fits": bool | None (None: could not plan), "peak_gb", "device", "reason",
    "run": Run | None}."""
    from tunesmith.errors import UsageError
    from tunesmith.plan.facts import model_facts

    try:
        model_facts(cfg.model.source)
    except UsageError as e:
        return {"fits": None, "peak_gb": None, "device": device.to_dict(), "run": None,
                "reason": f"pre-flight skipped: {e}"}
    run = run_from_config(cfg, device=device.type, count_data=False)  # memory needs no token count
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
    run = replace(check["run"], setup=setup_from_config(cfg))
    ranked = [o for o in options(run, gpus, prices, None) if o.headroom_ok][:3]
    if ranked:
        lines.append("GPUs that would fit: " + "; ".join(
            f"{o.count} x {o.gpu} ({o.peak_gb:.1f} of {o.memory_gb:g} GB"
            + (f", ~${o.best_cost:,.2f}" if o.best_cost is not None else "") + ")" for o in ranked) + ".")
    else:
        fix = _first_fix(advice(run, gpus), lambda step: step["fits"] is not None)
        if fix:
            where = fix[1]["fits"] if " x " in fix[1]["fits"] else f"1 x {fix[1]['fits']}"
            lines.append(f"As configured it fits no GPU in the catalog; with {fix[0]} it fits {where} "
                         f"({fix[1]['peak_gb']:.1f} GB).")
    fix = _first_fix(advice(check["run"], gpus), lambda step: step["peak_gb"] <= d["available_gb"] * (1 - HEADROOM))
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
