"""The optimizer steps: schedule, step, eval loss, early stopping, checkpoints, metrics.

Loss is averaged over the trained tokens of the whole optimizer step (all micro-batches
together), so gradient accumulation gives the same update as one big batch, and a step
split into smaller micro-batches after an out-of-memory error is the same update again.

Everything the loop carries from one step to the next is in `LoopState` (saved in each
checkpoint) or in the checkpoint's tensors, so a resumed run takes the very same steps.
"""

from __future__ import annotations

import gc
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError, UsageError, memory_kind
from tunesmith.io import write_text_atomic
from tunesmith.models.encode import IGNORE, Encoded
from tunesmith.train.checkpoint import Checkpoint, prune, restore, save_checkpoint
from tunesmith.train.distributed import (
    PeerFailed, World, accelerator_kwargs, all_sum, any_rank, barrier, gather_tensors, my_share,
)
from tunesmith.train.loss import TokenLoss
from tunesmith.train.pack import Row, collate, one_per_row, pack
from tunesmith.train.sharding import SHARDED, full_optimizer_state, full_trained_weights, shard_model, whole
from tunesmith.train.record import RunRecord
from tunesmith.train.watchdog import Alarm, Watchdogs

Step = list[Row]  # the rows of one optimizer step; cut into micro-batches when it runs


def plan_steps(examples: list[Encoded], cfg: RunConfig, epochs: float, world_size: int = 1) -> list[Step]:
    """The whole schedule up front: shuffle per epoch (seeded), pack, group into steps of
    micro_batch x grad_accum x world_size rows. `epochs`: train.epochs resolved (a number,
    also when the config says auto)."""
    t = cfg.train
    per_step = t.micro_batch * t.grad_accum * world_size
    rows: list[Row] = []
    epoch = 0
    while True:
        order = list(examples)
        random.Random(t.seed + epoch).shuffle(order)
        epoch_rows = pack(order, t.max_seq_len) if t.packing else one_per_row(order)
        remaining = epochs - epoch
        if t.max_steps is None and remaining < 1:
            epoch_rows = epoch_rows[: max(1, round(len(epoch_rows) * remaining))]
        rows += epoch_rows
        epoch += 1
        enough = len(rows) >= t.max_steps * per_step if t.max_steps else epoch >= math.ceil(epochs)
        if enough:
            break
    steps = [rows[i : i + per_step] for i in range(0, len(rows), per_step)]
    return steps[: t.max_steps] if t.max_steps else steps


@dataclass
class LoopState:
    """What the loop carries between steps; saved in every checkpoint's state.json."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    elapsed: float = 0.0
    last_loss: float | None = None
    last_eval: float | None = None
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    # What runs now: the config's values unless an out-of-memory error changed them.
    micro_batch: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = False

    @classmethod
    def fresh(cls, cfg: RunConfig) -> "LoopState":
        t = cfg.train
        return cls(micro_batch=t.micro_batch, grad_accum=t.grad_accum, gradient_checkpointing=t.gradient_checkpointing)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "LoopState":
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in state["loop"].items() if key in names})


class Stopped(TunesmithError):
    """Training stopped on request (a signal, a preemption notice) after a checkpoint."""

    label = "stopped"


@dataclass
class Fit:
    """One training session: its inputs and the places it reports to."""

    cfg: RunConfig
    steps: list[Step]
    val: list[Encoded]
    pad_id: int
    device: torch.device
    run_dir: Path
    fingerprint: dict[str, Any]
    log: "MetricsLog"
    record: RunRecord
    predicted_peak_gb: float | None = None
    watch: Watchdogs | None = None
    stop: Any = None  # a StopRequest: `.requested` is None, or why to stop (a signal, a preemption notice)
    bar: Any = None
    on_note: Callable[[str], None] = print
    on_first_step: Callable[[], None] | None = None  # after this session's first step
    poll_notes: Callable[[], None] | None = None  # passes on what the watchers have to say
    phase: list[str] = field(default_factory=lambda: ["loading the model"])
    world: World = field(default_factory=World)
    strategy: str = "single"  # what the world runs: single, ddp, fsdp, fsdp_offload, zero2, zero3

    def run(self, model: Any, state: LoopState, resume: Checkpoint | None) -> LoopState:
        cfg, steps = self.cfg, self.steps
        sharded = self.strategy in SHARDED
        raw_loss = loss_fn = TokenLoss(model)
        if sharded:  # before the optimizer: its parameters become the shards
            shard_model(raw_loss, self.strategy, self.device, cfg.method.name == "full")
        accelerator = make_accelerator(cfg, self.device, self.strategy)
        optimizer = make_optimizer(cfg, model, self.device)
        scheduler = make_scheduler(cfg, optimizer, len(steps))
        watch = self.watch or Watchdogs(len(steps), {})
        if resume is not None:
            restore(resume, model, optimizer, scheduler, rank=self.world.rank, sharded=sharded)
            watch.load_state(resume.state["watchdogs"])
        if state.gradient_checkpointing and not cfg.train.gradient_checkpointing:
            enable_checkpointing(model)  # an earlier out-of-memory error turned it on
        if not sharded:  # FSDP syncs the gradients itself: nothing for accelerate to wrap
            with warnings.catch_warnings():
                # torch 2.13 renamed DDP's broadcast_buffers (forward_sync_buffers); accelerate's
                # kwargs handler passes the old name only.
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated", category=FutureWarning)
                loss_fn, optimizer = accelerator.prepare(raw_loss, optimizer)
        parts = Parts(model, loss_fn, optimizer, scheduler, accelerator, self.world, raw_loss, sharded)
        clock = time.perf_counter() - state.elapsed
        restored_seconds = state.train_seconds  # from the checkpoint: this session's own steps come on top
        for number in range(state.step + 1, len(steps) + 1):
            self.phase[0] = f"training step {number} of {len(steps)}"
            t0 = time.perf_counter()
            rows = steps[number - 1]
            apply = lambda loss, norm, n=number: watch.before_update(n, loss, norm)  # noqa: E731
            loss, n_real, grad_norm = self.step_with_recovery(parts, rows, state, number, apply)
            scheduler.step()  # also after a skipped update: the schedule follows the step number
            state.train_seconds += time.perf_counter() - t0
            if self.on_first_step is not None:
                self.on_first_step()
                self.on_first_step = None
            state.step, state.tokens, state.last_loss = number, state.tokens + n_real, loss
            alarms = watch.after_step(number, loss, [o for row in rows for o in row.origins])
            improved = self.evaluate(parts, state, number)
            if improved is not None:
                alarms += watch.after_eval(number, state.last_eval)
            state.elapsed = time.perf_counter() - clock
            self.write_metrics(state, number, loss, grad_norm, scheduler, evaluated=improved is not None,
                               alarms=[a.to_dict() for a in alarms])
            self.raise_alarms(alarms)
            if self.poll_notes is not None:
                self.poll_notes()
            if watch.stop:
                raise self.failed_non_finite(number) if self.world.main else PeerFailed("", exit_code=1)
            last = number == len(steps) or state.stopped_early
            # A signal may reach one worker a step before the others: all stop at the same step.
            stopping = any_rank(self.world, self.stop is not None and bool(self.stop.requested)) and not last
            if improved or stopping or (number % cfg.train.save_every == 0 and not last):
                self.checkpoint(parts, state, watch)
            self.record.update(steps_done=number, tokens=state.tokens, train_seconds=round(state.train_seconds, 3),
                               best_step=state.best_step, best_eval_loss=state.best_eval_loss)
            self.record.stepped(number, state.train_seconds - restored_seconds)
            if self.bar is not None:
                self.bar.advance(loss, state.tokens / max(state.train_seconds, 1e-9), state.last_eval)
            if stopping:
                raise self.stopped(number) if self.world.main else Stopped("", exit_code=143)
            if improved is not None or alarms or number % cfg.train.save_every == 0:
                self.record.write()
            else:
                self.record.beat()
            if state.stopped_early:
                break
        return state

    # ------------------------------------------------------------ pieces of a step

    def step_with_recovery(self, parts: "Parts", rows: Step, state: LoopState, number: int,
                           apply: Callable[[float, float], bool]) -> tuple[float, int, float]:
        """One optimizer step; an out-of-memory error frees memory, halves the micro-batch
        (doubling accumulation: the same rows, the same update), then turns on gradient
        checkpointing, and tries the step again; when neither is left it stops the run."""
        rng = _rng_states(self.device)  # a retried step draws the same dropout masks
        while True:
            try:
                return run_step(parts, rows, state.micro_batch, self.pad_id, self.cfg.train.max_grad_norm, self.device,
                                apply)
            except (MemoryError, RuntimeError) as e:
                # Several workers would have to agree on the lighter setting mid-step: not retried.
                if memory_kind(e) is None or self.world.size > 1:
                    raise
                measured = _measured_peak_gb(self.device)
                parts.optimizer.zero_grad(set_to_none=True)
                del e
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                change = self.lighten(parts, state)
                if change is None:
                    raise
                change.update(step=number, predicted_peak_gb=self.predicted_peak_gb, measured_peak_gb=measured)
                self.record.fields["memory_changes"].append(change)
                self.record.write()
                self.on_note(f"out of memory at step {number}: retrying with {change['now']}")
                _set_rng_states(rng)

    def lighten(self, parts: "Parts", state: LoopState) -> dict[str, Any] | None:
        """The next lighter way to run a step, or None when there is none left."""
        if state.micro_batch > 1:
            before = (state.micro_batch, state.grad_accum)
            state.micro_batch, state.grad_accum = state.micro_batch // 2, state.grad_accum * 2
            if state.micro_batch * state.grad_accum < before[0] * before[1]:  # an odd micro-batch
                state.grad_accum += 1
            return {"micro_batch": [before[0], state.micro_batch], "grad_accum": [before[1], state.grad_accum],
                    "now": f"train.micro_batch={state.micro_batch} train.grad_accum={state.grad_accum}"}
        if not state.gradient_checkpointing:
            enable_checkpointing(parts.model)
            state.gradient_checkpointing = True
            return {"gradient_checkpointing": [False, True], "now": "train.gradient_checkpointing=true"}
        return None

    def evaluate(self, parts: "Parts", state: LoopState, number: int) -> bool | None:
        """Eval loss on its schedule; None when not evaluated, else whether it is a new best
        (and early stopping's count)."""
        if not self.val or not (number % self.cfg.train.eval_every == 0 or number == len(self.steps)):
            return None
        state.last_eval = evaluate_loss(parts.raw_loss, self.val, self.cfg, state.micro_batch, self.pad_id, self.device,
                                        self.world, parts.sharded)
        t = self.cfg.train
        if state.best_eval_loss is None or state.best_eval_loss - state.last_eval > t.early_stopping_min_delta:
            state.best_eval_loss, state.best_step, state.evals_since_best = state.last_eval, number, 0
            return True
        state.evals_since_best += 1
        if t.early_stopping_patience and state.evals_since_best >= t.early_stopping_patience:
            state.stopped_early = True
            self.on_note(f"early stopping at step {number}: eval loss has not improved for {state.evals_since_best} "
                         f"evaluations (best {state.best_eval_loss:.4f} at step {state.best_step}; "
                         f"train.early_stopping_patience={t.early_stopping_patience})")
        return False

    def write_metrics(self, state: LoopState, number: int, loss: float, grad_norm: float, scheduler: Any,
                      *, evaluated: bool, alarms: list[dict[str, Any]]) -> None:
        if not (evaluated or alarms or number % self.cfg.train.log_every == 0 or number == len(self.steps)
                or state.stopped_early):
            return
        self.log.write({
            "step": number,
            "loss": _number(loss),
            **({"eval_loss": _number(state.last_eval)} if evaluated else {}),
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": _number(grad_norm),
            "tokens": state.tokens,
            "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 2),
            "train_seconds": round(state.train_seconds, 3),  # in the steps so far: tokens / this is the mean speed
            "elapsed": round(state.elapsed, 3),
            **memory_record(self.device),
            **({"alarms": alarms} if alarms else {}),
        })

    def raise_alarms(self, alarms: list[Alarm]) -> None:
        for alarm in alarms:
            self.record.fields["alarms"].append(alarm.to_dict())
            self.on_note(alarm.message)

    def failed_non_finite(self, number: int) -> TunesmithError:
        self.record.update(status="failed")
        self.record.write()
        return TunesmithError(
            f"training stopped at step {number}: the loss or the gradients were not finite (NaN or inf) for "
            f"{self.watch_limit()} steps in a row, so their updates were skipped; the checkpoints before it are "
            f"intact. Lower train.lr (now {self.cfg.train.lr:g}) or look for extreme rows (metrics.jsonl alarms), "
            f"then add --restart", exit_code=1)

    def watch_limit(self) -> int:
        return self.watch.nonfinite.max_in_a_row if self.watch else 3

    def checkpoint(self, parts: "Parts", state: LoopState, watch: Watchdogs) -> None:
        """The main process writes the checkpoint (with every worker's RNG state: each draws
        its own dropout masks); the others wait until it is complete."""
        self.phase[0] = f"saving the checkpoint of step {state.step}"
        rank_rng = rank_rng_states(self.world, self.device)
        weights = optimizer_state = None
        if parts.sharded:  # every process sends its shards; the main one writes them whole
            weights, optimizer_state = full_trained_weights(parts.model), full_optimizer_state(parts.optimizer)
        if self.world.main:
            save_checkpoint(self.run_dir, state.step, model=parts.model, optimizer=parts.optimizer,
                            scheduler=parts.scheduler, state={"loop": asdict(state), "watchdogs": watch.state()},
                            fingerprint=self.fingerprint, rank_rng=rank_rng, weights=weights,
                            optimizer_state=optimizer_state, metrics=self.log.path)
            prune(self.run_dir, self.cfg.train.keep_checkpoints, state.best_step)
        barrier(self.world)

    def stopped(self, number: int) -> Stopped:
        why = self.stop.requested
        self.record.update(status="interrupted", stop_reason=why)
        self.record.write()
        code = 128 + self.stop.signum if getattr(self.stop, "signum", None) else 143  # a notice: as SIGTERM
        return Stopped(f"{why}: stopped after step {number} of {len(self.steps)} with a checkpoint "
                       f"(checkpoints/step-{number:06d}); run the same command again to continue from there "
                       f"(exit {code})", exit_code=code)


@dataclass
class Parts:
    model: Any
    loss_fn: Any  # the loss module as accelerate prepared it (DDP-wrapped with several workers)
    optimizer: Any
    scheduler: Any
    accelerator: Any
    world: World = field(default_factory=World)
    raw_loss: Any = None  # the same loss module unwrapped: evaluation needs no gradient sync
    sharded: bool = False  # FSDP: every forward and backward is a collective


# ---------------------------------------------------------------- building blocks

def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing per decoder layer, by the name transformers
    uses (it renamed `gradient_checkpointing_enable` in 5.x and drops the old one in v6)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_accelerator(cfg: RunConfig, device: torch.device, strategy: str = "single") -> Any:
    from accelerate import Accelerator

    # Full fine-tuning keeps fp32 master weights and runs matmuls in bf16 on a GPU.
    mixed = "bf16" if device.type == "cuda" and cfg.method.name == "full" else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed, **accelerator_kwargs(strategy))


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


def run_step(parts: Parts, rows: Step, micro_batch: int, pad_id: int, max_norm: float, device: torch.device,
             apply: Callable[[float, float], bool] | None = None) -> tuple[float, int, float]:
    """Forward and backward over the step's micro-batches, clip, update: (loss, tokens, grad
    norm). `apply(loss, grad_norm)` may veto the update (a NaN step): gradients are dropped.
    With several workers each runs its share of the micro-batches (`my_share`); the gradient
    sync averages over workers, so each scales its loss by the world size."""
    batches = [collate(rows[i : i + micro_batch], pad_id) for i in range(0, len(rows), micro_batch)]
    n_trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    loss_fn, optimizer, accelerator, world = parts.loss_fn, parts.optimizer, parts.accelerator, parts.world
    mine = my_share(batches, world)
    # Every worker syncs once a step (DDP); under FSDP every forward and backward gathers, so
    # every worker runs as many micro-batches as the busiest one.
    rounds = -(-len(batches) // world.size) if parts.sharded else 1
    mine += [without_targets(batches[0])] * max(0, rounds - len(mine))
    loss_fn.train()
    total_loss = 0.0
    for i, batch in enumerate(mine):
        sync = accelerator.no_sync(loss_fn) if i < len(mine) - 1 and not parts.sharded else nullcontext()
        with sync:
            loss_sum, _ = loss_fn(
                batch["input_ids"].to(device), batch["position_ids"].to(device), batch["labels"].to(device)
            )
            # Divide by the step's trained tokens, not the micro-batch's: same update as one big batch.
            accelerator.backward(loss_sum * world.size / max(n_trained, 1))
        total_loss += loss_sum.item()
    total_loss = all_sum(world, [total_loss])[0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(whole(accelerator.clip_grad_norm_(params, max_norm)))
    loss = total_loss / max(n_trained, 1)
    if apply is None or apply(loss, grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    n_real = sum(int(b["n_real"]) for b in batches)
    return loss, n_real, grad_norm


def without_targets(batch: dict[str, Any]) -> dict[str, Any]:
    """A micro-batch that trains nothing (every label ignored): for a worker left without rows
    in a step's last, short share, so that it still joins the gradient sync with zeros."""
    return {**batch, "labels": torch.full_like(batch["labels"], IGNORE)}


def rank_rng_states(world: World, device: torch.device) -> list[torch.Tensor] | None:
    """Every worker's torch generator states (CPU, and its GPU's), gathered on all; None alone."""
    if world.size == 1:
        return None
    state = torch.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return gather_tensors(world, state)


def _number(x: float | None) -> float | None:
    """A metric as JSON can hold it: rounded, and null for NaN or inf (the alarm says which)."""
    return round(x, 6) if x is not None and math.isfinite(x) else None


@torch.no_grad()
def evaluate_loss(loss_fn: Any, examples: list[Encoded], cfg: RunConfig, micro_batch: int, pad_id: int,
                  device: torch.device, world: World | None = None, sharded: bool = False) -> float | None:
    """Mean loss per trained token over the validation rows; with several workers each runs
    its share of the micro-batches (under FSDP as many as the busiest) and the sums are added up."""
    if not examples:
        return None
    world = world or World()
    loss_fn.eval()
    rows = pack(examples, cfg.train.max_seq_len) if cfg.train.packing else one_per_row(examples)
    starts = list(range(0, len(rows), micro_batch))
    mine: list[int | None] = list(my_share(starts, world))
    if sharded:
        mine += [None] * (-(-len(starts) // world.size) - len(mine))
    total, count = 0.0, 0
    for start in mine:
        batch = collate(rows[start : start + micro_batch], pad_id) if start is not None else \
            without_targets(collate(rows[:micro_batch], pad_id))
        loss_sum, n = loss_fn(batch["input_ids"].to(device), batch["position_ids"].to(device), batch["labels"].to(device))
        total += loss_sum.item()
        count += int(n)
    loss_fn.train()
    total, count = all_sum(world, [total, count])
    return total / max(count, 1)


def memory_record(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"mem_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


# What `peak_memory` measures, in the plan's terms (plan/memory.py: `Memory.peak`).
CUDA_PEAK = ("torch.cuda.max_memory_reserved plus the CUDA context (the GPU's memory in use outside torch's "
             "allocator, read with torch.cuda.mem_get_info), on the main process's GPU: what the plan's GPU peak "
             "counts")
CPU_PEAK = ("the main training process's peak resident set (getrusage ru_maxrss; model load and data stage "
            "included): what the plan's CPU peak counts, the data the loop keeps included")
GB = 1e9  # as the plan counts; metrics.jsonl's mem_gb is in GiB (2**30)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """This process's memory high-water mark so far in GB, measured the way the planner
    predicts a peak on `device`, and which measure it is."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # The context (CUDA runtime, cuBLAS and NCCL handles) is what the allocator does not hold.
        context = max(0, total - free - torch.cuda.memory_reserved(device))
        return {"gb": round((torch.cuda.max_memory_reserved(device) + context) / GB, 3), "measure": CUDA_PEAK}
    return {"gb": round(max_rss_bytes() / GB, 3), "measure": CPU_PEAK}


def max_rss_bytes() -> int:
    """The process's peak resident set: Linux gives ru_maxrss in KiB, macOS in bytes."""
    import resource
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generators a step's dropout draws from: the CPU's, and the GPU's on CUDA."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_states(states: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def _measured_peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None


class MetricsLog:
    """Appends one JSON object per logged step; flushed each line so a crash keeps the curve."""

    def __init__(self, path: Path | None, on_log: Callable[[dict], None] | None) -> None:
        self.path = path  # None: a worker of a multi-process run, which writes nothing
        self.sinks: list[Callable[[dict], None]] = [on_log] if on_log else []  # the printer, the trackers

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink(record)

    def continue_from(self, checkpoint: Checkpoint) -> None:
        """The log as it was when `checkpoint` was written: a resumed run logs the later steps
        again, once. The checkpoint's own copy, when it has one: the run's file may be older
        than the checkpoint (a bucket mount uploads files in no order) and miss steps."""
        if checkpoint.metrics is None:
            self.cut_back(checkpoint.step)
        else:
            write_text_atomic(self.path, checkpoint.metrics.read_text(encoding="utf-8"))

    def cut_back(self, step: int) -> int:
        """Keep the records up to `step` (a resumed run logs the later steps again, once);
        a line a kill left half-written goes too. Returns how many records were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            kept += [line] if keep else []
            dropped += 0 if keep else 1
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        return dropped
