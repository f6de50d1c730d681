"""What the planner plans: the model's facts, the setup from a run config, the token count
(given, or counted in a data file with the model's tokenizer), and a real run's measured speed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.config import resolve_epochs
from tunesmith.errors import UsageError
from tunesmith.io import read_json, read_jsonl_objects, require_file
from tunesmith.models.arch import ModelFacts
from tunesmith.models.facts import model_facts
from tunesmith.plan.actual import read_measured_speed
from tunesmith.plan.memory import Setup
from tunesmith.plan.throughput import Mfu, flops_per_token


def setup_from_config(cfg: Any, *, device: str = "cuda", gpus: int = 1, strategy: str | None = None) -> Setup:
    """The Setup a run config trains with on `device` (the dtype `auto` resolves there)."""
    # On a CPU `auto` is fp32, and full fine-tuning keeps fp32 weights whatever model.dtype says
    # (train/setup.py).
    on_cpu_fp32 = device == "cpu" and (cfg.model.dtype == "auto" or cfg.method.name == "full")
    dtype = "fp32" if cfg.model.dtype == "float32" or on_cpu_fp32 else "bf16"
    return Setup(
        method=cfg.method.name,
        seq_len=cfg.train.max_seq_len,
        micro_batch=cfg.train.micro_batch,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        offload_activations=cfg.train.offload_activations,
        release_freed_memory=cfg.train.release_freed_memory,
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
    """The guess before a GPU is chosen. One GPU: nothing to split. Several: full fine-tuning
    shards (FSDP), adapters replicate (DDP: a LoRA replica is the frozen base, which each GPU
    needs whole anyway). Per GPU the planner tries DDP first and shards only when a replica
    does not fit (`planner.option_for`)."""
    if gpus == 1:
        return "ddp"
    return "fsdp" if method == "full" else "ddp"


def configured_strategy(cfg: Any) -> str | None:
    """The config's distributed.strategy, or None for auto (the planner's pick)."""
    chosen = cfg.distributed.strategy
    return None if chosen == "auto" else chosen


@dataclass(frozen=True)
class TokenCount:
    """Tokens per epoch and where they come from (or why there is no count)."""

    per_epoch: int | None
    trained_per_epoch: int | None = None  # positions with a loss; None: plan for all of them
    source: str | None = None


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
    max_steps: int | None = None

    @property
    def step_tokens(self) -> int:
        """Token positions one optimizer step trains on, packed rows assumed full."""
        return self.setup.micro_batch * self.grad_accum * self.setup.seq_len

    @property
    def total_tokens(self) -> float | None:
        # The loop runs exactly max_steps steps when it is set (repeating the data if one
        # epoch is shorter, stopping early if it is longer): epochs no longer count.
        if self.max_steps is not None:
            return float(self.max_steps * self.step_tokens)
        return None if self.tokens_per_epoch is None else self.tokens_per_epoch * self.epochs


# Beyond this a token count is a typo, not a fine-tuning set: 10 trillion tokens is the
# scale of a whole pre-training corpus, and the time and cost figures stop meaning anything.
MAX_TOKENS = 1e13
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_tokens(text: str) -> int:
    """"20M", "1.5B", "350k" or "2000000" -> tokens; UsageError naming --tokens for anything
    that is not a finite count from 1 to MAX_TOKENS."""
    t = text.strip().lower().replace(",", "").replace("_", "")
    try:
        value = float(t[:-1]) * _SCALE[t[-1]] if t and t[-1] in _SCALE else float(t)
    except ValueError:
        raise UsageError(f"--tokens {text!r}: expected a number of tokens like 2000000, 350k, 20M or 1.5B") from None
    if not math.isfinite(value):
        raise UsageError(f"--tokens {text!r}: expected a finite number of tokens like 20M, not inf or nan")
    if value < 1:
        raise UsageError(f"--tokens {text!r}: must be at least 1 token")
    if value > MAX_TOKENS:
        raise UsageError(f"--tokens {text!r}: {value:.3g} tokens per epoch is above 10T, the size of a whole "
                         "pre-training corpus, not a fine-tuning set; check the unit (k, M, B)")
    return int(value)


def dataset_tokens(path: str, cfg: Any, what: str = "data file") -> TokenCount:
    """Tokens per epoch of a data file as training would see it: cleaned with the run's
    clean settings and counted with the model's own tokenizer and chat template."""
    from tunesmith.data.prepare import clean_report
    from tunesmith.models.tokenizer import load_target_tokenizer

    require_file(path, what)
    try:
        tokenizer = load_target_tokenizer(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, UsageError) as e:
        # A gated hub model not in the cache, offline: the plan still works from --tokens.
        raise UsageError(f"counting the tokens of the {what} {path} needs {cfg.model.source}'s tokenizer, which "
                         f"cannot be loaded here ({str(e).splitlines()[0]}); give --tokens N instead (e.g. "
                         f"--tokens 20M)") from None
    return report_tokens(clean_report(path, cfg, tokenizer), path)


def report_tokens(report: dict[str, Any], path: str) -> TokenCount:
    """The token count in a data report (report.json) of `path`: what `train` plans with, and
    what `plan --dataset` counts, so the two agree."""
    tokens = report.get("tokens")
    per_epoch = tokens.get("per_epoch") if isinstance(tokens, dict) else None
    if not _positive_int(per_epoch):
        return TokenCount(None, None, f"{path}: no tokens counted")
    trained = tokens.get("trained_per_epoch")
    rows = report.get("kept")
    where = f"{path}: {rows:,} rows after cleaning" if _positive_int(rows) else str(path)
    mixed = report.get("mix_general") or {}
    if _positive_int(mixed.get("tokens")):  # data.mix_general's rows train too (their trained share is unknown here)
        per_epoch += mixed["tokens"]
        where += f", plus {mixed['rows']:,} general-mix rows"
    return TokenCount(per_epoch, trained if _positive_int(trained) else None, where)


def run_from_config(cfg: Any, count: TokenCount | None = None, *, device: str = "cuda", gpus: int = 1,
                    strategy: str | None = None, facts: tuple[ModelFacts, str] | None = None) -> Run:
    """What to plan: the config's model and setup on `device`, trained on `count` tokens per
    epoch (or the config's max_steps). `facts`: (facts, where) already read, to read them once."""
    facts, config_from = facts or model_facts(cfg.model.source)
    count = count or TokenCount(None)
    setup = setup_from_config(cfg, device=device, gpus=gpus, strategy=strategy)
    if count.per_epoch and count.trained_per_epoch is not None:
        # A packed micro-batch mixes many examples, so its share of trained positions stays
        # near the file's; a quarter more covers uneven batches.
        share = count.trained_per_epoch / count.per_epoch
        setup = replace(setup, trained_fraction=min(1.0, 1.25 * share))
    return Run(facts=facts, config_from=config_from, setup=setup, tokens_per_epoch=count.per_epoch,
               epochs=resolve_epochs(cfg.train.epochs, count.per_epoch)[0], tokens_from=count.source,
               grad_accum=cfg.train.grad_accum,
               save_every=cfg.train.save_every, max_steps=cfg.train.max_steps)


def on_device(run: Run, cfg: Any, device_type: str) -> Run:
    """The same run on another kind of device (a config's dtype `auto` means fp32 on CPU)."""
    setup = setup_from_config(cfg, device=device_type)
    return replace(run, setup=replace(setup, trained_fraction=run.setup.trained_fraction))


# ---------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """What a real run measured: its device, method and speed."""

    run_dir: str
    device: dict[str, Any]  # plan.json's this_machine.device: type, name, catalog_gpu
    method: str
    tokens_per_s: float
    flops_per_s: float  # executed FLOPs (recomputation included) per second it achieved
    mfu: Mfu | None  # on its catalog GPU; None on a CPU or a GPU not in the catalog
    summary: str  # "calibrated from RUN: N tokens/s of MODEL METHOD on DEVICE (where the speed comes from)"
    speed_from: str = "metrics.jsonl"  # or plan_vs_actual.json

    def same_device(self, device: Any) -> bool:
        """Did the run train on this kind of machine (same device type and name)?"""
        return self.device.get("type") == device.type and self.device.get("name") == device.name


def calibrate(run_dir: Any, gpus: list[Gpu]) -> Calibration:
    """From a finished or running run folder: its measured speed, as the executed FLOP/s it
    achieved (and the utilisation of its GPU's peak, when that is in the catalog). The speed is
    plan_vs_actual.json's (the run's mean over its steps, written when it ended) when there is
    one, else the last logged step's in metrics.jsonl (the mean up to that step). Every file
    it reads gives one UsageError naming it when missing or malformed."""
    from tunesmith.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--calibrate {run_dir}: not a folder; give a run folder written by `tunesmith train`")
    tokens_per_s, speed_from, how = _measured_speed(run_dir)
    device = _run_device(run_dir / "plan.json")
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise UsageError(f"--calibrate {run_dir}: no config.yaml there (is it a run folder written by `tunesmith train`?)")
    cfg = load_config(config_file)
    facts, _ = model_facts(cfg.model.source)
    setup = setup_from_config(cfg, device=device.get("type", "cuda"))
    work = flops_per_token(facts, setup)
    # Executed FLOPs: a plan with another checkpointing choice then gets the time right too.
    rate = tokens_per_s * work["executed"]
    where = device.get("catalog_gpu") or device.get("name") or device.get("type", "?")
    summary = f"calibrated from {run_dir}: {tokens_per_s:,.0f} tokens/s of {cfg.model.source} {setup.method} on {where}"
    gpu = next((g for g in gpus if g.name == device.get("catalog_gpu")), None)
    utilisation = None
    if device.get("type") == "cuda" and gpu is not None:
        # Utilisation of the executed work, so the same setup reproduces the measured speed
        # (hours() charges recomputation at the same rate); equal to MFU without checkpointing.
        utilisation = rate / (gpu.bf16_tflops * 1e12)
        summary += f" = {utilisation:.1%} MFU"
    summary += f" ({how})"
    # 4 significant digits: a tiny model on a big GPU is far below 0.01%.
    mfu = Mfu(float(f"{utilisation:.4g}"), summary, calibrated=True) if utilisation is not None else None
    return Calibration(str(run_dir), device, setup.method, tokens_per_s, rate, mfu, summary, speed_from)


def _measured_speed(run_dir: Path) -> tuple[float, str, str]:
    """(tokens/s, the file it comes from, how it was measured, in words)."""
    found = read_measured_speed(run_dir)
    if found is None:
        number, tokens_per_s = _last_speed(run_dir / "metrics.jsonl")
        return tokens_per_s, "metrics.jsonl", f"metrics.jsonl, its last logged step, {number}"
    tokens_per_s, comparison = found
    steps = comparison.get("steps", {}).get("done") if isinstance(comparison.get("steps"), dict) else None
    how = "plan_vs_actual.json, the run's mean" + (f" over its {steps:,} steps" if isinstance(steps, int) else "")
    planned = comparison["tokens_per_s"].get("planned")
    if isinstance(planned, (int, float)) and not isinstance(planned, bool) and planned > 0:
        how += f"; its plan said {planned:,.0f}"
    return tokens_per_s, "plan_vs_actual.json", how


def _last_speed(metrics: Path) -> tuple[int | str, float]:
    """(the step, its tokens_per_s) of the last logged step in metrics.jsonl."""
    if not metrics.exists():
        raise UsageError(f"--calibrate {metrics.parent}: no metrics.jsonl there (is it a run folder written by "
                         "`tunesmith train`?)")
    records = read_jsonl_objects(metrics, "metrics file", "each line is one logged step: is it a file `tunesmith "
                                                          "train` wrote?")
    last = records[-1] if records else None
    if last is None or last[1].get("tokens_per_s") is None:
        raise UsageError(f"{metrics}: no step with tokens_per_s logged yet; calibrate once the run has logged a step")
    number, record = last
    value = record["tokens_per_s"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{metrics}:{number}: tokens_per_s = {json.dumps(value)} is not a speed above 0")
    step = record.get("step")
    return (f"step {step}" if isinstance(step, int) else f"line {number}"), float(value)


def _run_device(plan_file: Path) -> dict[str, Any]:
    """The device a run trained on, from its plan.json."""
    if not plan_file.exists():
        raise UsageError(f"--calibrate {plan_file.parent}: no plan.json there (is it a run folder written by "
                         "`tunesmith train`?)")
    here = _json_object(plan_file).get("this_machine")
    device = here.get("device") if isinstance(here, dict) else None
    if not isinstance(device, dict) or device.get("type") not in ("cuda", "cpu"):
        raise UsageError(f"{plan_file}: no this_machine.device with type cuda or cpu; it is not a plan.json "
                         "written by `tunesmith train`")
    return device


def run_tokens(run_dir: Any) -> TokenCount:
    """A run's own token count: its data report (tokens per epoch of its cleaned training
    file), else its plan.json."""
    run_dir = Path(run_dir)
    report = run_dir / "data" / "report.json"
    if report.exists():
        data = _json_object(report)
        count = report_tokens(data, str(data.get("file") or report))
        if count.per_epoch:
            return replace(count, source=f"calibrated run {run_dir}: {count.source}")
    plan_file = run_dir / "plan.json"
    tokens = _json_object(plan_file).get("tokens") if plan_file.exists() else None
    per_epoch = tokens.get("per_epoch") if isinstance(tokens, dict) else None
    if _positive_int(per_epoch):
        return TokenCount(per_epoch, None, f"calibrated run {run_dir}: its plan.json")
    return TokenCount(None, None, f"calibrated run {run_dir} has no token count (data/report.json, plan.json)")


NOT_OURS = "it is not a file `tunesmith train` wrote"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file tunesmith wrote (an object), or one UsageError naming it and the place."""
    data = read_json(path, "JSON file", NOT_OURS)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, found {type(data).__name__}; {NOT_OURS}")
    return data
