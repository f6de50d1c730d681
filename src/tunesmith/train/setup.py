"""`tunesmith train` from a config to a trained adapter: refuse what cannot work, decide
whether this is a new run or one to continue, clean the data, plan, build the model, fit,
and keep the best weights.

Kill it at any moment and run the same command again: it continues from the newest complete
checkpoint and ends with exactly the model an uninterrupted run gives (bit for bit on CPU).
"""

from __future__ import annotations

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
from tunesmith.io import write_dir_atomic, write_json_atomic, write_text_atomic
from tunesmith.models.card import base_record, make_portable, write_model_card
from tunesmith.models.encode import ensure_chat_template
from tunesmith.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.source import resolve_source
from tunesmith.train.attention import use_packed_attention
from tunesmith.train.checkpoint import (
    Checkpoint, CorruptCheckpoint, checkpoint_dir, cleaned_hashes, discard_after, fingerprint,
    fingerprint_differences, load_weights, newest_valid, read_checkpoint,
)
from tunesmith.train.checks import RunFolder, check_run_inputs, inspect_run_dir
from tunesmith.train.dropout import use_bit_dropout
from tunesmith.train.lean import return_freed_memory
from tunesmith.train.fit import Fit, LoopState, MetricsLog, enable_checkpointing, plan_steps
from tunesmith.train.preempt import PreemptionWatcher, StopRequest
from tunesmith.train.record import RunLock, RunRecord, now_iso, process_start_time, read_record
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
    set, stops after the current step with a checkpoint."""
    from accelerate.utils import set_seed

    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note:
            on_note(text)

    # Everything that can refuse the run does so before anything is written or loaded.
    device = pick_device()
    return_freed_memory(device)  # on CPU: RSS near what torch allocated (train/lean.py)
    check_run_inputs(cfg)
    require_trackers(cfg)
    folder = inspect_run_dir(cfg, restart=restart, same_run_restarts=same_run_restarts,
                             resuming=resume is not None)
    if folder.finished:
        return finished_result(folder.path, note)
    if resume is not None and not folder.resume:
        raise UsageError(f"--resume {resume}: {folder.path} holds no run to continue")
    set_seed(cfg.train.seed)
    check = check_fit(cfg, enforce=preflight)  # an OOM costs the most
    if on_preflight:
        on_preflight(check)
    with RunLock(folder.path):
        prints = fingerprint(cfg)  # the data files are hashed once
        start = pick_start(folder, resume, prints, check, note)
        run_dir = start.folder.take()
        path = resolve_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
        ensure_chat_template(tokenizer)
        data, cleaned = prepare_data(cfg, tokenizer, run_dir, start.checkpoint)
        if on_data:
            on_data(data.report)
        check = check_fit_with_data(cfg, check, data.report)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        write_json_atomic(run_dir / "plan.json", run_plan(cfg, check, data.report))
        epochs, why = resolve_epochs(cfg.train.epochs, sum(len(e.input_ids) for e in data.train))
        if cfg.train.epochs == "auto" and cfg.train.max_steps is None:
            note(f"{why}; early stopping ends it when eval loss stops improving" if data.val else why)
        steps = plan_steps(data.train, cfg, epochs)
        prints = {**prints, "data": cleaned}
        return run_fit(cfg, run_dir, path, tokenizer, data, steps, start, device, check, prints,
                       progress=progress, on_log=on_log, note=note, notes=notes, stop=stop)


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
            f"killed, by the kernel for lack of memory or by `kill -9`{predicted}. If memory is short: "
            f"--set train.gradient_checkpointing=true, or a smaller train.micro_batch with a larger train.grad_accum "
            f"(that changes the run: add --restart)")


def prepare_data(cfg: RunConfig, tokenizer: Any, run_dir: Path,
                 checkpoint: Checkpoint | None) -> tuple[Prepared, dict[str, str]]:
    """The data stage into RUN/data, and the cleaned files' hashes; when continuing, into a
    scratch folder first, so that data that no longer matches the checkpoint is refused
    without touching RUN/data (which then holds the same bytes)."""
    if checkpoint is None:
        data = prepare_run_data(cfg, tokenizer, run_dir)
        return data, cleaned_hashes(run_dir / "data")
    scratch = run_dir / ".resume-data.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        data = prepare_run_data(cfg, tokenizer, scratch)
        now = cleaned_hashes(scratch / "data")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    before = checkpoint.state["fingerprint"].get("data")
    if before is not None and now != before:
        raise UsageError(f"{checkpoint.path}: the cleaned data differs from what it was trained on (a changed "
                         f"tunesmith version?): add --restart to start over")
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
            note: Callable[[str], None], notes: list[str], stop: Any) -> TrainResult:
    from accelerate.utils import set_seed

    resumed_from = start.checkpoint.step if start.checkpoint else None
    log = MetricsLog(run_dir / "metrics.jsonl", on_log)
    if resumed_from is not None:
        discard_after(run_dir, resumed_from)
        log.cut_back(resumed_from)
        state = LoopState.from_checkpoint(start.checkpoint.state)
        note(f"continuing from checkpoint step-{resumed_from:06d} ({resumed_from} of {len(steps)} steps done)")
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        state = LoopState.fresh(cfg)
    record = RunRecord.start(run_dir, steps_planned=len(steps), previous=start.previous, resumed_from=resumed_from)
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
              on_first_step=restart_timer(record) if resumed_from is not None else None)
    try:
        with out_of_memory_says_where(fit.phase, check):
            set_seed(cfg.train.seed)  # LoRA init must not depend on how much data work came first
            model = build_model(cfg, path, device)
            with guards(cfg, device, len(steps), stop, note) as (fit.stop, fit.watch, fit.poll_notes), \
                    progress_bar(progress, len(steps), state.step) as bar:
                fit.bar = bar
                state = fit.run(model, state, start.checkpoint)
            fit.phase[0] = "saving the trained weights"
            adapter_step = keep_best(model, tokenizer, run_dir, cfg, state)
    except BaseException as e:  # a kill -9 never gets here: train.json then still says "running"
        if record.fields["status"] == "running":
            record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            record.write()
        trackers.finish(status=record.fields["status"], adapter_dir=None)
        raise
    status = "stopped_early" if state.stopped_early else "completed"
    record.update(status=status, adapter_step=adapter_step, final_loss=state.last_loss,
                  final_eval_loss=state.last_eval)
    record.write()
    write_model_card(run_dir)  # from the final train.json; before the trackers take the folder
    trackers.finish(status=status, adapter_dir=run_dir / "adapter" if cfg.method.name != "full" else None)
    return TrainResult(run_dir=run_dir, steps=state.step, data=data.report, tokens=state.tokens,
                       train_seconds=state.train_seconds,
                       tokens_per_s=state.tokens / state.train_seconds if state.train_seconds else 0.0,
                       final_loss=state.last_loss, final_eval_loss=state.last_eval, status=status,
                       steps_planned=len(steps), best_step=state.best_step, adapter_step=adapter_step,
                       resumed_from=resumed_from, notes=notes)


@contextmanager
def guards(cfg: RunConfig, device: torch.device, total_steps: int, stop: StopRequest | None,
           note: Callable[[str], None]) -> Iterator[tuple[StopRequest, Watchdogs, Callable[[], None]]]:
    """What watches a run while it trains: SIGTERM/SIGINT (and, when asked, the cloud's
    preemption notices) become a clean stop; the watchdogs, with GPU utilisation sampled on
    CUDA. Yields the stop request, the watchdogs and a function that passes on their notes."""
    settings = {"train.lr": cfg.train.lr, **({"method.r": cfg.method.r} if cfg.method.name != "full" else {})}
    with ExitStack() as stack:
        stop = stop if stop is not None else stack.enter_context(StopRequest())
        watcher = None
        if cfg.train.watch_preemption != "off":
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


def keep_best(model: Any, tokenizer: Any, run_dir: Path, cfg: RunConfig, state: LoopState) -> int:
    """RUN/adapter (RUN/model) holds the checkpoint with the lowest eval loss; without
    validation data, the last step's weights. Returns the step it holds."""
    if state.best_step is not None and state.best_step != state.step:
        best = read_checkpoint(checkpoint_dir(run_dir, state.best_step))
        load_weights(model, best.weights(), best.path.name)
    save_trained(model, tokenizer, run_dir, cfg)
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
    checkpointing, adapters. The planner's memory tests build models from configs and run
    them through this too, so what they measure is what training runs."""
    model.config.use_cache = False
    use_packed_attention(model)  # falls back to the model's own masked attention if refused
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.method.name == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.method.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    try:
        model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise TunesmithError(f"method.target_modules: {e}", exit_code=2) from None
    if device.type == "cpu":
        use_bit_dropout(model)
    return model


def count_params(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def save_trained(model: Any, tokenizer: Any, run_dir: Path, cfg: RunConfig) -> Path:
    """RUN/adapter (PEFT format) for LoRA/QLoRA, RUN/model for full fine-tuning; atomic."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
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


def check_fit(cfg: RunConfig, *, enforce: bool, tokens_per_epoch: int | None = None) -> dict[str, Any]:
    """The planner's pre-flight for this machine and its checklist (a GPU the config needs,
    torch's CUDA build, bf16, disk for the checkpoints, a network filesystem). Refuses (exit
    1) a run with a failed item, and one predicted not to fit unless `enforce` is off.
    `tokens_per_epoch`: once the data stage counted them, the data the loop keeps in memory
    is counted too."""
    from tunesmith.plan.device import machine_facts, visible_device
    from tunesmith.plan.preflight import checklist, failed, preflight, refusal

    device = visible_device()
    check = preflight(cfg, device, tokens_per_epoch=tokens_per_epoch)
    check["enforced"] = enforce
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


def check_fit_with_data(cfg: RunConfig, check: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """On a CPU the cleaned data lives in the same memory as the model: once it is counted,
    the pre-flight again with it (a GPU's memory does not hold it)."""
    from tunesmith.plan.inputs import report_tokens

    tokens = report_tokens(report, cfg.data.train).per_epoch
    if check["device"]["type"] != "cpu" or check["run"] is None or not tokens:
        return check
    return check_fit(cfg, enforce=check["enforced"], tokens_per_epoch=tokens)


def run_plan(cfg: RunConfig, check: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """RUN/plan.json: the plan `tunesmith plan RUN/config.yaml --dataset DATA` makes (the same
    function, the cleaned data's token count), plus what the pre-flight checked before the
    data was counted and the device (so `tunesmith plan --calibrate RUN` knows what ran)."""
    preflight = {"peak_gb": check["peak_gb"], "fits": check["fits"], "enforced": check["enforced"],
                 "headroom": check.get("headroom"), "memory_gb": check.get("memory_gb"),
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
