"""Our own training loop on accelerate + peft: setup -> plan -> fit -> save.

Loss is averaged over the trained tokens of the whole optimizer step (all micro-batches
together), so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from tunesmith.config import RunConfig
from tunesmith.data.prepare import prepare_run_data
from tunesmith.errors import OutOfMemory, TunesmithError, UsageError, memory_kind
from tunesmith.io import write_dir_atomic, write_json_atomic, write_text_atomic
from tunesmith.models.encode import Encoded, ensure_chat_template
from tunesmith.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.source import resolve_source
from tunesmith.train.attention import use_packed_attention
from tunesmith.train.checks import check_run_inputs, inspect_run_dir
from tunesmith.train.dropout import use_bit_dropout
from tunesmith.train.loss import TokenLoss
from tunesmith.train.pack import Row, collate, one_per_row, pack

Step = list[list[Row]]  # one optimizer step = micro-batches of rows


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    train_seconds: float
    tokens_per_s: float
    final_loss: float | None
    final_eval_loss: float | None
    data: dict[str, Any]  # the data stage's report for the training file


def plan_steps(examples: list[Encoded], cfg: RunConfig) -> list[Step]:
    """The whole schedule up front: shuffle per epoch (seeded), pack, group into steps."""
    t = cfg.train
    per_step = t.micro_batch * t.grad_accum
    rows: list[Row] = []
    epoch = 0
    while True:
        order = list(examples)
        random.Random(t.seed + epoch).shuffle(order)
        epoch_rows = pack(order, t.max_seq_len) if t.packing else one_per_row(order)
        remaining = t.epochs - epoch
        if t.max_steps is None and remaining < 1:
            epoch_rows = epoch_rows[: max(1, round(len(epoch_rows) * remaining))]
        rows += epoch_rows
        epoch += 1
        enough = len(rows) >= t.max_steps * per_step if t.max_steps else epoch >= math.ceil(t.epochs)
        if enough:
            break
    steps = [rows[i : i + per_step] for i in range(0, len(rows), per_step)]
    steps = steps[: t.max_steps] if t.max_steps else steps
    return [[s[i : i + t.micro_batch] for i in range(0, len(s), t.micro_batch)] for s in steps]


# ---------------------------------------------------------------- model

def build_model(cfg: RunConfig, path: str, device: torch.device) -> Any:
    dtype = pick_dtype(cfg.model.dtype, device)
    if cfg.method.name == "full":
        dtype = torch.float32  # master weights stay fp32; the GPU path autocasts to bf16
    model = load_model(
        path,
        dtype=dtype,
        device=device,
        quantize_4bit=cfg.method.name == "qlora",
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return prepare_model(model, cfg, device)


def prepare_model(model: Any, cfg: RunConfig, device: torch.device) -> Any:
    """Make a loaded model trainable the way the config says: packed attention, gradient
    checkpointing, adapters. The planner's memory tests build models from configs and run
    them through this too, so what they measure is what training runs."""
    model.config.use_cache = False
    use_packed_attention(model)  # falls back to the model's own masked attention if refused
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.method.name == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.method.r,
        lora_alpha=cfg.method.alpha,
        lora_dropout=cfg.method.dropout,
        target_modules=cfg.method.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise TunesmithError(f"method.target_modules: {e}", exit_code=2) from None
    if device.type == "cpu":
        use_bit_dropout(model)
    return model


def count_params(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# ---------------------------------------------------------------- fit

def train(
    cfg: RunConfig,
    *,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    on_data: Callable[[dict], None] | None = None,
    preflight: bool = True,
    on_preflight: Callable[[dict], None] | None = None,
    restart: bool = False,
    same_run_restarts: bool = False,
) -> TrainResult:
    """on_data gets the data stage's report once the data is cleaned and split; on_preflight
    the planner's verdict for this machine. `preflight=False` trains even when the planner
    predicts the run does not fit. `restart` replaces a run already in the folder
    (`same_run_restarts`: only when it is this same run, as the demo does)."""
    from accelerate.utils import set_seed

    # Everything that can refuse the run does so before anything is written or loaded.
    device = pick_device()
    check_run_inputs(cfg, device.type)
    folder = inspect_run_dir(cfg, restart=restart, same_run_restarts=same_run_restarts)
    set_seed(cfg.train.seed)
    check = check_fit(cfg, enforce=preflight)  # an OOM costs the most
    if on_preflight:
        on_preflight(check)
    run_dir = folder.take()
    path = resolve_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
    ensure_chat_template(tokenizer)
    # The data stage writes RUN/data (with the report, also when it blocks the run); the
    # config follows only once there is a run to describe.
    data = prepare_run_data(cfg, tokenizer, run_dir)
    if on_data:
        on_data(data.report)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    write_json_atomic(run_dir / "plan.json", run_plan(cfg, check, data.report))
    steps = plan_steps(data.train, cfg)

    phase = Phase("loading the model")
    with out_of_memory_says_where(phase, check):
        set_seed(cfg.train.seed)  # LoRA init must not depend on how much data work came first
        model = build_model(cfg, path, device)
        fitted = fit(model, cfg, steps, data.val, tokenizer.pad_token_id, device, run_dir,
                     MetricsLog(run_dir / "metrics.jsonl", on_log), progress, phase)
        phase.now = "saving the trained weights"
        save_trained(model, tokenizer, run_dir, cfg)
    return TrainResult(run_dir=run_dir, steps=len(steps), data=data.report, **fitted)


def fit(model: Any, cfg: RunConfig, steps: list[Step], val: list[Encoded], pad_id: int, device: torch.device,
        run_dir: Path, log: "MetricsLog", progress: bool, phase: "Phase") -> dict[str, Any]:
    """The optimizer steps, with eval loss, metrics and checkpoints on their schedules."""
    accelerator = make_accelerator(cfg, device)
    optimizer = make_optimizer(cfg, model, device)
    scheduler = make_scheduler(cfg, optimizer, len(steps))
    loss_fn, optimizer = accelerator.prepare(TokenLoss(model), optimizer)
    tokens = 0
    train_seconds = 0.0
    start = time.perf_counter()
    last_loss = last_eval = None
    with progress_bar(progress, len(steps)) as bar:
        for number, step in enumerate(steps, start=1):
            phase.now = f"training step {number} of {len(steps)}"
            t0 = time.perf_counter()
            loss, n_real, grad_norm = run_step(loss_fn, optimizer, accelerator, step, pad_id, cfg.train.max_grad_norm, device)
            scheduler.step()
            train_seconds += time.perf_counter() - t0
            tokens += n_real
            last_loss = loss
            record: dict[str, Any] = {}
            if number % cfg.train.eval_every == 0 or number == len(steps):
                last_eval = evaluate_loss(loss_fn, val, cfg, pad_id, device)
                if last_eval is not None:
                    record["eval_loss"] = round(last_eval, 6)
            if record or number % cfg.train.log_every == 0 or number == len(steps):
                log.write({
                    "step": number,
                    "loss": round(loss, 6),
                    **record,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": round(grad_norm, 6),
                    "tokens": tokens,
                    "tokens_per_s": round(tokens / train_seconds, 2),
                    "elapsed": round(time.perf_counter() - start, 3),
                    **memory_record(device),
                })
            if number % cfg.train.save_every == 0 and number < len(steps):
                save_checkpoint(model, run_dir, number, tokens)
            bar.advance(loss, tokens / train_seconds, last_eval)
    return {"tokens": tokens, "train_seconds": train_seconds,
            "tokens_per_s": tokens / train_seconds if train_seconds else 0.0,
            "final_loss": last_loss, "final_eval_loss": last_eval}


@dataclass
class Phase:
    """What training is doing now, for a message if it runs out of memory."""

    now: str


@contextmanager
def out_of_memory_says_where(phase: Phase, check: dict[str, Any]) -> Iterator[None]:
    """An out-of-memory error becomes one line: where it happened, what the pre-flight had
    predicted, and the guide's remedies (instead of a traceback from deep inside torch)."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        kind = memory_kind(e)
        if kind is None:
            raise
        predicted = ""
        if check.get("peak_gb") is not None:
            predicted = (f"the pre-flight predicted a peak of ~{check['peak_gb']:.1f} GB of "
                         f"{check['device']['available_gb']:.1f} GB free"
                         + ("" if check.get("enforced", True) else ", and was overridden with --no-preflight"))
        raise OutOfMemory(kind, phase.now, predicted) from None


def check_fit(cfg: RunConfig, *, enforce: bool) -> dict[str, Any]:
    """The planner's pre-flight for this machine; refuses a run predicted not to fit (exit 1,
    naming what would), unless `enforce` is off. (A run that cannot run here at all, QLoRA
    without CUDA, was refused before this by `check_run_inputs`.)"""
    from tunesmith.plan.device import visible_device
    from tunesmith.plan.preflight import preflight, refusal

    check = preflight(cfg, visible_device())
    check["enforced"] = enforce
    if check["fits"] is False and enforce:
        from tunesmith.catalog.gpu import load_gpus
        from tunesmith.catalog.prices import load_prices

        raise TunesmithError(refusal(check, cfg, load_gpus(), load_prices()), exit_code=1)
    return check


def run_plan(cfg: RunConfig, check: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """RUN/plan.json: the plan `tunesmith plan RUN/config.yaml --dataset DATA` makes (the same
    function, the cleaned data's token count), plus what the pre-flight checked before the
    data was counted and the device (so `tunesmith plan --calibrate RUN` knows what ran)."""
    preflight = {"peak_gb": check["peak_gb"], "fits": check["fits"],
                 "enforced": check["enforced"], "note": "every position trained: the worst case"}
    if check["run"] is None:
        return {"this_machine": {"device": check["device"], "preflight": {**preflight, "skipped": check["reason"]}}}
    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.catalog.prices import load_prices
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import Device
    from tunesmith.plan.inputs import report_tokens

    run = check["run"]
    plan = build_plan(cfg, report_tokens(report, cfg.data.train), Device(**check["device"]), gpus=load_gpus(),
                      prices=load_prices(), facts=(run.facts, run.config_from))
    plan["this_machine"]["preflight"] = preflight
    return plan


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing per decoder layer, by the name transformers
    uses (it renamed `gradient_checkpointing_enable` in 5.x and drops the old one in v6)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_accelerator(cfg: RunConfig, device: torch.device) -> Any:
    from accelerate import Accelerator

    # Full fine-tuning keeps fp32 master weights and runs matmuls in bf16 on a GPU.
    mixed = "bf16" if device.type == "cuda" and cfg.method.name == "full" else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)


def make_optimizer(cfg: RunConfig, model: Any, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg.train.optimizer
    kwargs = dict(lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if device.type != "cuda":
        raise UsageError(f"train.optimizer = {name!r} needs a CUDA GPU (bitsandbytes); on CPU use adamw")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UsageError(f"train.optimizer = {name!r} needs bitsandbytes: pip install bitsandbytes") from None
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
    return cls(params, **kwargs)


def make_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, total: int) -> Any:
    from transformers import get_scheduler

    warmup = round(total * cfg.train.warmup_ratio)
    name = "constant_with_warmup" if cfg.train.scheduler == "constant" else cfg.train.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def run_step(loss_fn, optimizer, accelerator, step: Step, pad_id: int, max_norm: float, device) -> tuple[float, int, float]:
    batches = [collate(rows, pad_id) for rows in step]
    n_trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    loss_fn.train()
    total_loss = 0.0
    for i, batch in enumerate(batches):
        sync = accelerator.no_sync(loss_fn) if i < len(batches) - 1 else nullcontext()
        with sync:
            loss_sum, _ = loss_fn(
                batch["input_ids"].to(device), batch["position_ids"].to(device), batch["labels"].to(device)
            )
            # Divide by the step's trained tokens, not the micro-batch's: same update as one big batch.
            accelerator.backward(loss_sum / max(n_trained, 1))
        total_loss += loss_sum.item()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    n_real = sum(int(b["n_real"]) for b in batches)
    return total_loss / max(n_trained, 1), n_real, float(grad_norm)


@torch.no_grad()
def evaluate_loss(loss_fn, examples: list[Encoded], cfg: RunConfig, pad_id: int, device) -> float | None:
    if not examples:
        return None
    loss_fn.eval()
    rows = pack(examples, cfg.train.max_seq_len) if cfg.train.packing else one_per_row(examples)
    total, count = 0.0, 0
    for i in range(0, len(rows), cfg.train.micro_batch):
        batch = collate(rows[i : i + cfg.train.micro_batch], pad_id)
        loss_sum, n = loss_fn(batch["input_ids"].to(device), batch["position_ids"].to(device), batch["labels"].to(device))
        total += loss_sum.item()
        count += int(n)
    loss_fn.train()
    return total / max(count, 1)


def memory_record(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"mem_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


class MetricsLog:
    """Appends one JSON object per logged step; flushed each line so a crash keeps the curve."""

    def __init__(self, path: Path, on_log: Callable[[dict], None] | None) -> None:
        self.path = path
        self.on_log = on_log

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_log:
            self.on_log(record)


# ---------------------------------------------------------------- saving

def save_trained(model: Any, tokenizer: Any, run_dir: Path, cfg: RunConfig) -> Path:
    """RUN/adapter (PEFT format) for LoRA/QLoRA, RUN/model for full fine-tuning; atomic."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        if cfg.method.name == "full":
            tokenizer.save_pretrained(folder)

    return write_dir_atomic(run_dir / ("model" if cfg.method.name == "full" else "adapter"), fill)


def save_checkpoint(model: Any, run_dir: Path, step: int, tokens: int) -> Path:
    """checkpoints/step-NNNNNN: complete or absent, then the `latest` pointer moves to it."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        write_json_atomic(folder / "state.json", {"step": step, "tokens": tokens})

    final = write_dir_atomic(run_dir / "checkpoints" / f"step-{step:06d}", fill)
    write_text_atomic(run_dir / "checkpoints" / "latest", final.name + "\n")
    return final


# ---------------------------------------------------------------- progress

class progress_bar:
    """A Rich progress bar with loss and tokens/s; a no-op when progress is off."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> "progress_bar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, info="")
        return self

    def advance(self, loss: float, tokens_per_s: float, eval_loss: float | None) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.3f}" + (f"  eval {eval_loss:.3f}" if eval_loss is not None else "") + f"  {tokens_per_s:,.0f} tok/s"
        self._progress.update(self._task, advance=1, info=info)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
