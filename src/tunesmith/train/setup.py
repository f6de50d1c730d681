"""`tunesmith train` from a config to a trained adapter: refuse what cannot work, decide
whether this is a new run or one to continue, clean the data, plan, build the model, fit,
and keep the best weights.

Kill it at any moment and run the same command again: it continues from the newest complete
checkpoint and ends with exactly the model an uninterrupted run gives (bit for bit on CPU).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from tunesmith.config import RunConfig, resolve_epochs
from tunesmith.data.prepare import Prepared, prepare_run_data
from tunesmith.errors import OutOfMemory, TunesmithError, UsageError, memory_kind
from tunesmith.io import file_facts, write_dir_atomic, write_json_atomic, write_text_atomic
from tunesmith.models.card import CARD_FILES, base_record, make_portable, write_model_card
from tunesmith.models.encode import Encoded, ensure_chat_template
from tunesmith.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.source import resolve_source
from tunesmith.train.attention import use_packed_attention
from tunesmith.train.checkpoint import (
    Checkpoint, CorruptCheckpoint, checkpoint_dir, cleaned_hashes, discard_after, fingerprint,
    fingerprint_differences, load_weights, newest_valid, read_checkpoint,
)
from tunesmith.train.checks import RunFolder, check_run_inputs, inspect_run_dir
from tunesmith.train.distributed import (
    PeerFailed, World, check_strategy, join, leave, lost_peer, share, world_from_env,
)
from tunesmith.train.sharding import SHARDED, full_trained_weights
from tunesmith.train.dropout import use_bit_dropout
from tunesmith.train.fit import Fit, LoopState, MetricsLog, enable_checkpointing, peak_memory, plan_steps
from tunesmith.train.lean import (
    adapters_in_base_dtype, offload_checkpointed_inputs, prepare_kbit, return_freed_memory,
)
from tunesmith.train.preempt import PreemptionWatcher, StopRequest
from tunesmith.train.record import FINISHED, RunLock, RunRecord, now_iso, process_start_time, read_record
from tunesmith.train.track import open_trackers, require_trackers
from tunesmith.train.tuned import lora_config
from tunesmith.train.watchdog import NvmlSampler, Watchdogs


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # optimizer steps done
    tokens: int
    train_seconds: float
    tokens_per_s: float
    final_loss: float | None
    final_eval_loss: float | None
    data: dict[str, Any]  # the data stage's report for the training file
    status: str = "completed"
    steps_planned: int = 0
    best_step: int | None = None
    adapter_step: int | None = None
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)
    plan_vs_actual: dict[str, Any] | None = None  # RUN/plan_vs_actual.json, when it could be written


def train(
    cfg: RunConfig,
    *,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    on_data: Callable[[dict], None] | None = None,
    preflight: bool = True,
    on_preflight: Callable[[dict], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    restart: bool = False,
    resume: Path | None = None,
    same_run_restarts: bool = False,
    stop: Any = None,
) -> TrainResult:
    """on_data gets the data stage's report once the data is cleaned and split; on_preflight
    the planner's verdict for this machine; on_note one line for each thing worth saying
    (a resume, a skipped checkpoint, early stopping). `preflight=False` trains even when the
    planner predicts the run does not fit. `restart` replaces a run already in the folder
    (`same_run_restarts`: only when it is this same run, as the demo does); `resume` names the
    checkpoint to continue from (default: the newest complete one). `stop.requested`, when
    set, stops after the current step with a checkpoint.

    Under a launcher (`--nproc N`) every worker calls this; the main one decides and tells the
    others (`distributed.py`), which then only train."""
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note:
            on_note(text)

    world = world_from_env()
    device = join(world, pick_device().type)
    strategy = check_strategy(cfg.distributed.strategy, world, device.type, cfg.method.name)
    try:
        with peers_lost_say_so(world, Path(cfg.output.dir)):
            if not world.main:
                return follow(cfg, world, device, strategy, stop)
            herald = Herald(world)
            try:
                return lead(cfg, world, device, strategy, herald, note, notes, progress=progress, on_log=on_log,
                            on_data=on_data, preflight=preflight, on_preflight=on_preflight, restart=restart,
                            resume=resume, same_run_restarts=same_run_restarts, stop=stop)
            except BaseException as e:
                # Stopped before the workers could start: they end with the same exit code.
                herald.stop_workers(getattr(e, "exit_code", 1))
                raise
    finally:
        leave(world)


@contextmanager
def peers_lost_say_so(world: World, run_dir: Path) -> Iterator[None]:
    """A collective that fails because another training process is gone (killed by the
    kernel for lack of memory, `kill -9`) becomes one line with the way on, not a bug report."""
    try:
        yield
    except RuntimeError as e:
        if world.size == 1 or not lost_peer(e):
            raise
        raise TunesmithError(
            f"lost contact with the other training processes: one of them stopped without a word (most likely "
            f"killed: by the kernel for lack of memory, or by `kill -9`); the checkpoints already written in "
            f"{run_dir / 'checkpoints'} are intact: run the same command again to continue from the newest",
            exit_code=1) from None


class Herald:
    """The main process's one message to the workers: go (with the data and the checkpoint),
    or stop (the run was refused, or is already finished)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.sent = world.size == 1

    def go(self, message: dict[str, Any]) -> None:
        share(self.world, message)
        self.sent = True

    def stop_workers(self, exit_code: int) -> None:
        if not self.sent:
            self.go({"stop": True, "exit_code": exit_code})


def lead(cfg: RunConfig, world: World, device: torch.device, strategy: str, herald: Herald,
         note: Callable[[str], None], notes: list[str], *, progress: bool, on_log: Callable[[dict], None] | None,
         on_data: Callable[[dict], None] | None, preflight: bool, on_preflight: Callable[[dict], None] | None,
         restart: bool, resume: Path | None, same_run_restarts: bool, stop: Any) -> TrainResult:
    """The main process's part (the only one in a one-process run): everything that can
    refuse the run does so before anything is written or loaded."""
    from accelerate.utils import set_seed

    check_run_inputs(cfg)
    require_trackers(cfg)
    folder = inspect_run_dir(cfg, restart=restart, same_run_restarts=same_run_restarts,
                             resuming=resume is not None)
    if folder.finished:
        herald.go({"stop": "finished"})
        return finished_result(folder.path, note)
    if resume is not None and not folder.resume:
        raise UsageError(f"--resume {resume}: {folder.path} holds no run to continue")
    set_seed(cfg.train.seed)
    if strategy == "auto":
        strategy, why = pick_strategy(cfg, world)
        note(f"{world.size} processes, distributed.strategy auto: {strategy} ({why})")
    # An OOM costs the most: refused (or fitted) before anything is loaded.
    check = check_fit(cfg, enforce=preflight, recorded=folder.auto_fit, world=world, strategy=strategy)
    cfg = check["config"]  # auto-fit may have changed it to fit this device
    if cfg.train.release_freed_memory:
        return_freed_memory(device)  # on CPU: RSS near what torch allocated (train/lean.py)
    if on_preflight:
        on_preflight(check)
    with RunLock(folder.path):
        prints = fingerprint(cfg, world.size)  # the data files are hashed once
        start = pick_start(folder, resume, prints, check, note)
        run_dir = start.folder.take()
        path = resolve_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
        ensure_chat_template(tokenizer)
        data, cleaned = prepare_data(cfg, tokenizer, run_dir, start.checkpoint)
        if on_data:
            on_data(data.report)
        check = check_fit_with_data(cfg, check, data.report, world)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        write_json_atomic(run_dir / "plan.json", run_plan(cfg, check, data.report))
        epochs, why = resolve_epochs(cfg.train.epochs, sum(len(e.input_ids) for e in data.train))
        if cfg.train.epochs == "auto" and cfg.train.max_steps is None:
            note(f"{why}; early stopping ends it when eval loss stops improving" if data.val else why)
        steps = plan_steps(data.train, cfg, epochs, world.size)
        prints = {**prints, "data": cleaned}
        herald.go({"config": cfg.to_dict(), "strategy": strategy, "run_dir": str(run_dir), "path": path,
                   "epochs": epochs,
                   "checkpoint": str(start.checkpoint.path) if start.checkpoint else None,
                   "train": encoded_rows(data.train), "val": encoded_rows(data.val)})
        return run_fit(cfg, run_dir, path, tokenizer, data, steps, start, device, check, prints,
                       progress=progress, on_log=on_log, note=note, notes=notes, stop=stop, world=world,
                       strategy=strategy)


def pick_strategy(cfg: RunConfig, world: World) -> tuple[str, str]:
    """distributed.strategy auto, and why: DDP when a replica fits each process's device, else
    FSDP; QLoRA always DDP (its 4-bit base is not sharded)."""
    if cfg.method.name == "qlora":
        return "ddp", "QLoRA's 4-bit base is not sharded"
    from tunesmith.plan.device import share_among, visible_device
    from tunesmith.plan.preflight import preflight

    replica = preflight(cfg, share_among(visible_device(), world.size, world.local_size, "ddp"))
    if replica["fits"] is False:
        return "fsdp", "a whole replica does not fit each process's memory"
    return "ddp", "a whole replica fits each process's memory"


def follow(cfg: RunConfig, world: World, device: torch.device, strategy: str, stop: Any) -> TrainResult:
    """A worker's part: wait for the main process's go, build the same model, train its share
    of each step; it writes nothing."""
    message = share(world, None)
    if message.get("stop") == "finished":
        return TrainResult(run_dir=Path(cfg.output.dir), steps=0, tokens=0, train_seconds=0.0, tokens_per_s=0.0,
                           final_loss=None, final_eval_loss=None, data={}, status="completed")
    if message.get("stop"):
        raise PeerFailed("", exit_code=message["exit_code"])
    cfg = RunConfig.model_validate(message["config"])  # as the main process runs it (auto-fit may change it)
    if cfg.train.release_freed_memory:
        return_freed_memory(device)
    strategy = message["strategy"]
    run_dir, path = Path(message["run_dir"]), message["path"]
    train_rows, val_rows = examples_from(message["train"]), examples_from(message["val"])
    steps = plan_steps(train_rows, cfg, message["epochs"], world.size)
    checkpoint = read_checkpoint(Path(message["checkpoint"])) if message["checkpoint"] else None
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
    state = LoopState.from_checkpoint(checkpoint.state) if checkpoint else LoopState.fresh(cfg)
    record = RunRecord.start(None, steps_planned=len(steps), previous=None, resumed_from=None)
    fit = Fit(cfg, steps, val_rows, tokenizer.pad_token_id, device, run_dir, {}, MetricsLog(None, None), record,
              on_note=lambda text: None, world=world, strategy=strategy)
    model = seeded_model(cfg, path, device, world)
    with guards(cfg, device, len(steps), stop, lambda text: None, watch_cloud=False) as (fit.stop, fit.watch,
                                                                                          fit.poll_notes):
        state = fit.run(model, state, checkpoint)
    if state.best_step is None:
        sharded_weights(model, run_dir, state, strategy)  # the main process gathers the last step's shards
    return TrainResult(run_dir=run_dir, steps=state.step, tokens=state.tokens, train_seconds=state.train_seconds,
                       tokens_per_s=0.0, final_loss=state.last_loss, final_eval_loss=state.last_eval, data={},
                       status="stopped_early" if state.stopped_early else "completed", steps_planned=len(steps))


def encoded_rows(examples: list[Encoded]) -> list[list[Any]]:
    """Encoded examples as JSON for the workers: ids, trained positions as 0/1, origin."""
    return [[e.input_ids, [int(t) for t in e.trained], e.origin] for e in examples]


def examples_from(rows: list[list[Any]]) -> list[Encoded]:
    return [Encoded(ids, [bool(t) for t in trained], origin) for ids, trained, origin in rows]


def seeded_model(cfg: RunConfig, path: str, device: torch.device, world: World) -> Any:
    """The model built from the run's seed (LoRA's initial weights must not depend on how much
    data work came first, nor on the worker); then each worker draws its own dropout masks."""
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    model = build_model(cfg, path, device)
    if world.size > 1:
        set_seed(cfg.train.seed + world.rank)
    return model


# ---------------------------------------------------------------- new run or continue

@dataclass
class Start:
    folder: RunFolder
    checkpoint: Checkpoint | None  # None: from step 0
    previous: dict[str, Any] | None  # the earlier session's train.json, when continuing


def pick_start(folder: RunFolder, resume: Path | None, prints: dict[str, Any], check: dict[str, Any],
               note: Callable[[str], None]) -> Start:
    """From step 0, or from which checkpoint; refuses (exit 2) a checkpoint whose fingerprint
    differs from `prints` (this command's, before the data stage). Called with the folder's
    lock held, so a train.json that still says "running" was left by a process that died."""
    if not folder.resume:
        return Start(folder, None, None)
    previous = read_record(folder.path)
    if previous and previous.get("status") == "running":
        note(killed_note(folder.path, previous, check))
    if previous and previous.get("status") in FINISHED and resume is None:  # else inspect_run_dir said finished
        note(f"{folder.path / 'train.json'} says the run finished, but its trained weights are not all there (a "
             f"bucket mount that had not uploaded them yet?): training the last steps again to write them")
    checkpoint = chosen_checkpoint(folder.path, resume, note)
    if checkpoint is None:
        note(f"{folder.path}: no complete checkpoint yet: starting over from step 0")
        return Start(folder.restart_all(), None, None)
    differences = fingerprint_differences(checkpoint.state.get("fingerprint", {}), prints)
    if differences:
        raise UsageError(
            f"{checkpoint.path} was trained with other settings: {'; '.join(differences[:3])}"
            + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")
            + ": continuing would not give the model either setting gives; run the original command to continue, "
              "add --restart to delete the run and start over, or choose another --out")
    return Start(folder, checkpoint, previous)


def chosen_checkpoint(run_dir: Path, resume: Path | None, note: Callable[[str], None]) -> Checkpoint | None:
    if resume is None:
        checkpoint, skipped = newest_valid(run_dir)
        for text in skipped:
            note(text)
        return checkpoint
    try:
        checkpoint = read_checkpoint(Path(resume))
    except CorruptCheckpoint as e:
        raise UsageError(f"--resume {resume}: cannot continue from it: {e}") from None
    if Path(resume).resolve().parent != (run_dir / "checkpoints").resolve():
        raise UsageError(f"--resume {resume}: not a checkpoint of {run_dir} (give one of {run_dir / 'checkpoints'})")
    return checkpoint


def killed_note(run_dir: Path, previous: dict[str, Any], check: dict[str, Any]) -> str:
    predicted = ""
    if check.get("peak_gb") is not None:
        predicted = (f"; the pre-flight predicts a peak of ~{check['peak_gb']:.1f} GB of "
                     f"{check['device']['available_gb']:.1f} GB free")
    return (f"the last run in {run_dir} stopped without a word after step {previous.get('steps_done', 0)} "
            f"(train.json still said running; last heartbeat {previous.get('heartbeat', '?')}): most likely it was "
            f"killed, by the kernel for lack of memory or by `kill -9`, or its machine went away (a spot instance "
            f"preempted without notice){predicted}. If memory is short: "
            f"--set train.gradient_checkpointing=true, or a smaller train.micro_batch with a larger train.grad_accum "
            f"(that changes the run: add --restart)")


def prepare_data(cfg: RunConfig, tokenizer: Any, run_dir: Path,
                 checkpoint: Checkpoint | None) -> tuple[Prepared, dict[str, str]]:
    """The data stage into RUN/data, and the cleaned files' hashes; when continuing, into a
    scratch folder first, so that data that no longer matches the checkpoint is refused
    without touching RUN/data. Data that matches fills in the files RUN/data lacks (lost on
    a bucket mount that had not uploaded them yet); the files there stay as they are."""
    if checkpoint is None:
        data = prepare_run_data(cfg, tokenizer, run_dir)
        return data, cleaned_hashes(run_dir / "data")
    scratch = run_dir / ".resume-data.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        data = prepare_run_data(cfg, tokenizer, scratch)
        now = cleaned_hashes(scratch / "data")
        before = checkpoint.state["fingerprint"].get("data")
        if before is not None and now != before:
            raise UsageError(f"{checkpoint.path}: the cleaned data differs from what it was trained on (a changed "
                             f"tunesmith version?): add --restart to start over")
        (run_dir / "data").mkdir(exist_ok=True)
        for made in (scratch / "data").iterdir():
            if not (run_dir / "data" / made.name).exists():
                os.replace(made, run_dir / "data" / made.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return data, now


def finished_result(run_dir: Path, note: Callable[[str], None]) -> TrainResult:
    """The same command on a finished run: nothing to train; what it did."""
    record = read_record(run_dir) or {}
    weights = "model" if (run_dir / "model").is_dir() else "adapter"
    note(f"{run_dir} already holds this run, finished ({record.get('status', 'completed')}): nothing to do; "
         f"the trained weights are in {run_dir / weights}. Add --restart to train it again")
    seconds = record.get("train_seconds") or 0.0
    tokens = record.get("tokens") or 0
    return TrainResult(run_dir=run_dir, steps=record.get("steps_done", 0), tokens=tokens, train_seconds=seconds,
                       tokens_per_s=tokens / seconds if seconds else 0.0, final_loss=record.get("final_loss"),
                       final_eval_loss=record.get("final_eval_loss"), data={}, status=record.get("status", "completed"),
                       steps_planned=record.get("steps_planned", 0), best_step=record.get("best_step"),
                       adapter_step=record.get("adapter_step"), notes=[])


# ---------------------------------------------------------------- fit and keep the best

def run_fit(cfg: RunConfig, run_dir: Path, path: str, tokenizer: Any, data: Prepared, steps: list, start: Start,
            device: torch.device, check: dict[str, Any], prints: dict[str, Any], *, progress: bool, on_log: Callable[[dict], None] | None,
            note: Callable[[str], None], notes: list[str], stop: Any, world: World | None = None,
            strategy: str = "single") -> TrainResult:
    from tunesmith.plan.actual import FILE as PLAN_VS_ACTUAL

    world = world or World()
    resumed_from = start.checkpoint.step if start.checkpoint else None
    log = MetricsLog(run_dir / "metrics.jsonl", on_log)
    # It describes the run as its last session left it: rewritten when this one ends.
    (run_dir / PLAN_VS_ACTUAL).unlink(missing_ok=True)
    if resumed_from is not None:
        discard_after(run_dir, resumed_from)
        log.continue_from(start.checkpoint)
        state = LoopState.from_checkpoint(start.checkpoint.state)
        note(f"continuing from checkpoint step-{resumed_from:06d} ({resumed_from} of {len(steps)} steps done)")
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        state = LoopState.fresh(cfg)
    record = RunRecord.start(run_dir, steps_planned=len(steps), previous=start.previous, resumed_from=resumed_from,
                             peak_memory=lambda: peak_memory(device))
    record.update(auto_fit=check.get("auto_fit"))
    if resumed_from is not None:
        record.fields["resumes"].append({"from_step": resumed_from, "at": now_iso()})
    trackers = open_trackers(cfg, run_dir, resume=record.fields["tracking"], resume_step=resumed_from)
    record.update(tracking=trackers.ids)
    record.write()
    for text in trackers.notes:
        note(text)
    log.sinks.append(trackers.log)
    fit = Fit(cfg, steps, data.val, tokenizer.pad_token_id, device, run_dir, prints, log, record,
              predicted_peak_gb=check.get("peak_gb"), on_note=note,
              on_first_step=restart_timer(record) if resumed_from is not None else None, world=world,
              strategy=strategy)
    try:
        with out_of_memory_says_where(fit.phase, check):
            model = seeded_model(cfg, path, device, world)
            with guards(cfg, device, len(steps), stop, note) as (fit.stop, fit.watch, fit.poll_notes), \
                    progress_bar(progress, len(steps), state.step) as bar:
                fit.bar = bar
                state = fit.run(model, state, start.checkpoint)
            fit.phase[0] = "saving the trained weights"
            adapter_step = keep_best(model, tokenizer, run_dir, cfg, state, sharded_weights(model, run_dir, state,
                                                                                             strategy))
    except BaseException as e:  # a kill -9 never gets here: train.json then still says "running"
        if record.fields["status"] == "running":
            record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            record.write()
        compare_with_plan(run_dir, note)  # a stopped run's part is worth comparing too (marked incomplete)
        trackers.finish(status=record.fields["status"], adapter_dir=None)
        raise
    status = "stopped_early" if state.stopped_early else "completed"
    record.update(status=status, adapter_step=adapter_step, final_loss=state.last_loss,
                  final_eval_loss=state.last_eval, weights_files=weights_files(run_dir, cfg))
    record.write()
    compared = compare_with_plan(run_dir, note)
    write_model_card(run_dir)  # from the final train.json; before the trackers take the folder
    trackers.finish(status=status, adapter_dir=run_dir / "adapter" if cfg.method.name != "full" else None)
    return TrainResult(run_dir=run_dir, steps=state.step, data=data.report, tokens=state.tokens,
                       train_seconds=state.train_seconds,
                       tokens_per_s=state.tokens / state.train_seconds if state.train_seconds else 0.0,
                       final_loss=state.last_loss, final_eval_loss=state.last_eval, status=status,
                       steps_planned=len(steps), best_step=state.best_step, adapter_step=adapter_step,
                       resumed_from=resumed_from, notes=notes, plan_vs_actual=compared)


def compare_with_plan(run_dir: Path, note: Callable[[str], None]) -> dict[str, Any] | None:
    """RUN/plan_vs_actual.json from the plan and train.json just written. Failing to write it
    costs the run nothing: one note, and the run ends as it would have."""
    from tunesmith.plan.actual import FILE, write_plan_vs_actual

    try:
        return write_plan_vs_actual(run_dir)
    except (TunesmithError, OSError) as e:
        note(f"could not write {run_dir / FILE}: {e}")
        return None


@contextmanager
def guards(cfg: RunConfig, device: torch.device, total_steps: int, stop: StopRequest | None,
           note: Callable[[str], None], *, watch_cloud: bool = True,
           ) -> Iterator[tuple[StopRequest, Watchdogs, Callable[[], None]]]:
    """What watches a run while it trains: SIGTERM/SIGINT (and, when asked, the cloud's
    preemption notices: on the main process only) become a clean stop; the watchdogs, with GPU
    utilisation sampled on CUDA. Yields the stop request, the watchdogs and a function that
    passes on their notes."""
    settings = {"train.lr": cfg.train.lr, **({"method.r": cfg.method.r} if cfg.method.name != "full" else {})}
    with ExitStack() as stack:
        stop = stop if stop is not None else stack.enter_context(StopRequest())
        watcher = None
        if cfg.train.watch_preemption != "off" and watch_cloud:
            watcher = stack.enter_context(PreemptionWatcher(stop, provider=cfg.train.watch_preemption).start())
        sampler = None
        if device.type == "cuda":
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            sampler = stack.enter_context(NvmlSampler(device=uuid))
        told: set[str] = set()

        def poll_notes() -> None:
            found = (watcher.notes if watcher else []) + ([sampler.note] if sampler and sampler.note else [])
            for text in found:
                if text not in told:
                    told.add(text)
                    note(text)

        yield stop, Watchdogs(total_steps, settings, sampler), poll_notes


def restart_timer(record: RunRecord) -> Callable[[], None]:
    """A resume's restart time, the way spot pricing needs it: from process start to the end
    of the first step after the checkpoint (model load, data stage and restore included)."""
    started = process_start_time()

    def first_step_done() -> None:
        record.fields["resumes"][-1]["restart_seconds"] = round(time.time() - started, 2)
        record.write()

    return first_step_done


def keep_best(model: Any, tokenizer: Any, run_dir: Path, cfg: RunConfig, state: LoopState,
              weights: dict[str, torch.Tensor] | None = None) -> int:
    """RUN/adapter (RUN/model) holds the checkpoint with the lowest eval loss; without
    validation data, the last step's weights. Returns the step it holds. `weights`: those
    weights whole, when the model holds only shards of them."""
    if weights is None and state.best_step is not None and state.best_step != state.step:
        best = read_checkpoint(checkpoint_dir(run_dir, state.best_step))
        load_weights(model, best.weights(), best.path.name)
    save_trained(model, tokenizer, run_dir, cfg, weights)
    return state.best_step if state.best_step is not None else state.step


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
    checkpointing (its layer inputs in host memory when asked), adapters on the lean memory
    path (train/lean.py). The planner's memory tests build models from configs and run them
    through this too, so what they measure is what training runs."""
    model.config.use_cache = False
    use_packed_attention(model)  # falls back to the model's own masked attention if refused
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
        if cfg.train.offload_activations:
            offload_checkpointed_inputs(model, device)
    if cfg.method.name == "full":
        return model
    from peft import get_peft_model

    if cfg.method.name == "qlora":
        model = prepare_kbit(model)
    try:
        model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise TunesmithError(f"method.target_modules: {e}", exit_code=2) from None
    adapters_in_base_dtype(model)
    if device.type == "cpu":
        use_bit_dropout(model)
    return model


def count_params(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def sharded_weights(model: Any, run_dir: Path, state: LoopState, strategy: str) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the weights RUN/adapter gets, whole: the best checkpoint's, else the last
    step's gathered from every process (all of them call this). None: the model holds them."""
    if strategy not in SHARDED:
        return None
    if state.best_step is not None:  # a new best eval loss always writes a checkpoint
        return read_checkpoint(checkpoint_dir(run_dir, state.best_step)).weights()
    return full_trained_weights(model)


def weights_files(run_dir: Path, cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The trained weights' files (path in the run folder: size and sha256), for train.json's
    last word: on a bucket mount train.json can say "completed" before these are all uploaded,
    and a run whose weights are not all there is not finished (checks.py). The card's files
    (README.md, tunesmith.json) are left out: eval and review rewrite them."""
    folder = run_dir / ("model" if cfg.method.name == "full" else "adapter")
    return {str(p.relative_to(run_dir)): file_facts(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in CARD_FILES}


def save_trained(model: Any, tokenizer: Any, run_dir: Path, cfg: RunConfig,
                 weights: dict[str, torch.Tensor] | None = None) -> Path:
    """RUN/adapter (PEFT format) for LoRA/QLoRA, RUN/model for full fine-tuning; atomic.
    `weights`: the trained weights whole, when the model holds shards."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True, **({"state_dict": weights} if weights else {}))
        if cfg.method.name == "full":
            tokenizer.save_pretrained(folder)
        # PEFT names the base by the cache path it was loaded from; name it as the user did.
        make_portable(folder, cfg, base)

    base = base_record(cfg)  # hashes the base's weights: seconds for a big model, once per run

    return write_dir_atomic(run_dir / ("model" if cfg.method.name == "full" else "adapter"), fill)


# ---------------------------------------------------------------- pre-flight and plan

@contextmanager
def out_of_memory_says_where(phase: list[str], check: dict[str, Any]) -> Iterator[None]:
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
        raise OutOfMemory(kind, phase[0], predicted) from None


def check_fit(cfg: RunConfig, *, enforce: bool, tokens_per_epoch: int | None = None, auto_fit: bool = True,
              recorded: dict[str, Any] | None = None, world: World | None = None,
              strategy: str = "single") -> dict[str, Any]:
    """The planner's pre-flight for this machine and its checklist (a GPU the config needs,
    torch's CUDA build, bf16, disk for the checkpoints, a network filesystem). Refuses (exit
    1) a run with a failed item, and one predicted not to fit unless `enforce` is off.
    `tokens_per_epoch`: once the data stage counted them, the data the loop keeps in memory
    is counted too. A run predicted not to fit, with `auto_fit` and train.auto_fit on, trains with
    the cheapest change that fits (plan.autofit) instead of being refused; `recorded`: the
    changes an earlier session of this run made (its train.json's auto_fit), applied as they
    are, since the checkpoints were trained with them. check["config"] is the config to train
    with, check["auto_fit"] the changes' record (None: none). With several processes (`world`)
    each is checked: a GPU each, or its share of this machine's memory, with the model split by
    `strategy`."""
    from tunesmith.plan.device import machine_facts, share_among, visible_device
    from tunesmith.plan.preflight import checklist, failed, refusal

    world = world or World()
    device = share_among(visible_device(), world.size, world.local_size, strategy)
    cfg, fitted, check = fit_to_device(cfg, device, enforce=enforce and auto_fit, recorded=recorded,
                                       tokens_per_epoch=tokens_per_epoch)
    check["enforced"] = enforce
    check["config"], check["auto_fit"] = cfg, fitted
    check["checklist"] = checklist(cfg, device, cfg.output.dir, machine_facts(cfg.output.dir, device.type),
                                   run=check["run"], fit=check, keep_checkpoints=cfg.train.keep_checkpoints)
    blocking = [item for item in failed(check["checklist"]) if item["check"] != "memory"]
    if blocking:
        raise TunesmithError("; ".join(f"pre-flight: {item['check']}: {item['detail']}" for item in blocking),
                             exit_code=1)
    if check["fits"] is False and enforce:
        from tunesmith.catalog.gpu import load_gpus
        from tunesmith.catalog.prices import load_prices

        raise TunesmithError(refusal(check, cfg, load_gpus(), load_prices()), exit_code=1)
    return check


def fit_to_device(cfg: RunConfig, device: Any, *, enforce: bool, recorded: dict[str, Any] | None,
                  tokens_per_epoch: int | None) -> tuple[RunConfig, dict[str, Any] | None, dict[str, Any]]:
    """(the config to train with, auto-fit's record or None, the pre-flight's verdict for it).
    The search sees no data (the first pre-flight runs before the data stage)."""
    from pydantic import ValidationError

    from tunesmith.plan.autofit import recorded_changes, said, said_continued, search, with_values
    from tunesmith.plan.preflight import preflight

    changes = recorded_changes(recorded)
    if changes:  # this run's checkpoints were trained with them: a new search could differ
        try:
            cfg = with_values(cfg, {key: after for key, (_, after) in changes.items()})
        except ValidationError as e:
            raise UsageError(f"{Path(cfg.output.dir) / 'train.json'}: auto_fit.changes does not fit this config "
                             f"({e.errors()[0]['msg']}): fix it, or add --restart to start the run over") from None
        check = preflight(cfg, device, tokens_per_epoch=tokens_per_epoch)
        check["auto_fit_said"] = said_continued(recorded, check["peak_gb"], device.available_gb)
        return cfg, recorded, check
    check = preflight(cfg, device, tokens_per_epoch=tokens_per_epoch)
    if check["fits"] is not False or not enforce or not cfg.train.auto_fit:
        return cfg, None, check
    found = search(cfg, device)
    if not found.fits:
        return cfg, None, check  # refused with what would fit elsewhere
    cfg = with_values(cfg, found.values())
    fitted = found.record()
    check = preflight(cfg, device, tokens_per_epoch=tokens_per_epoch)
    check["auto_fit_said"] = said(fitted, device.available_gb)
    return cfg, fitted, check


def check_fit_with_data(cfg: RunConfig, check: dict[str, Any], report: dict[str, Any],
                        world: World | None = None) -> dict[str, Any]:
    """On a CPU the cleaned data lives in the same memory as the model: once it is counted,
    the pre-flight again with it (a GPU's memory does not hold it). The config is the one the
    first pre-flight chose, already fingerprinted: no new auto-fit here."""
    from tunesmith.plan.inputs import report_tokens

    tokens = report_tokens(report, cfg.data.train).per_epoch
    if check["device"]["type"] != "cpu" or check["run"] is None or not tokens:
        return check
    again = check_fit(cfg, enforce=check["enforced"], tokens_per_epoch=tokens, auto_fit=False, world=world,
                      strategy=check["device"]["strategy"] or "single")
    again["auto_fit"] = check.get("auto_fit")
    return again


def run_plan(cfg: RunConfig, check: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """RUN/plan.json: the plan `tunesmith plan RUN/config.yaml --dataset DATA` makes (the same
    function, the cleaned data's token count), plus what the pre-flight checked before the
    data was counted and the device (so `tunesmith plan --calibrate RUN` knows what ran)."""
    preflight = {"peak_gb": check["peak_gb"], "fits": check["fits"], "enforced": check["enforced"],
                 "headroom": check.get("headroom"), "memory_gb": check.get("memory_gb"),
                 "auto_fit": check.get("auto_fit"),
                 "checklist": check["checklist"], "note": "every position trained: the worst case"}
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


# ---------------------------------------------------------------- progress

class progress_bar:
    """A Rich progress bar with loss and tokens/s; a no-op when progress is off."""

    def __init__(self, enabled: bool, total: int, done: int = 0) -> None:
        self.enabled = enabled
        self.total = total
        self.done = done

    def __enter__(self) -> "progress_bar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.done, info="")
        return self

    def advance(self, loss: float, tokens_per_s: float, eval_loss: float | None) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.3f}" + (f"  eval {eval_loss:.3f}" if eval_loss is not None else "") + f"  {tokens_per_s:,.0f} tok/s"
        self._progress.update(self._task, advance=1, info=info)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
