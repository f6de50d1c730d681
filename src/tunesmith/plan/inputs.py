"""What the planner plans: the model's facts, the setup from a run config, the token count
(given, or counted in a data file with the model's tokenizer), and a real run's measured speed."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.catalog.gpu import Gpu
from tunesmith.errors import UsageError
from tunesmith.plan.arch import ModelFacts
from tunesmith.plan.facts import model_facts
from tunesmith.plan.memory import Setup
from tunesmith.plan.throughput import Mfu, flops_per_token


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


def parse_tokens(text: str) -> int:
    """"20M", "1.5B", "350k" or "2000000" -> tokens."""
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
    facts, config_from = model_facts(cfg.model.source)
    setup = setup_from_config(cfg, device=device, gpus=gpus, strategy=strategy)
    per_epoch, tokens_from = None, None
    if dataset is None and tokens is None and count_data and cfg.data.train:
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


def on_device(run: Run, cfg: Any, device_type: str) -> Run:
    """The same run on another kind of device (a config's dtype `auto` means fp32 on CPU)."""
    setup = setup_from_config(cfg, device=device_type)
    return replace(run, setup=replace(setup, trained_fraction=run.setup.trained_fraction))


def calibrate(run_dir: Any, gpus: list[Gpu]) -> tuple[Mfu | None, float | None, str]:
    """From a finished or running run folder: (MFU on its catalog GPU, or None on CPU; model
    FLOP/s it achieved; one line saying what was measured)."""
    from tunesmith.config import load_config

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
    line += f" = {value:.1%} MFU"
    return Mfu(round(value, 4), line, calibrated=True), rate, line
