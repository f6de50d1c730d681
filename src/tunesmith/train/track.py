"""Experiment tracking: the metrics.jsonl records, also in TensorBoard, MLflow and W&B.

Every tracker gets every numeric key of a record under its metrics.jsonl name (`loss`,
`eval_loss`, `lr`, `grad_norm`, `tokens_per_s`, ...) at the record's step, so a curve reads
the same wherever it is looked at. The libraries are the optional extra `track` and are
imported only when `track.to` names them: with `track.to: []` nothing here imports anything.

A resumed run continues the tracked run it started (`Trackers.ids`, kept by the loop in
RUN/train.json, come back as `resume`):

- TensorBoard writes a new events file into the same RUN/tensorboard with
  `purge_step=N + 1`, so the steps an earlier session logged after checkpoint N (and before
  it died) are hidden, and the resumed values take their place.
- MLflow reopens the run by id. MLflow keeps every value logged at a step, so a step logged
  before the kill and again after the resume would be there twice; the loop re-logs only from
  N + 1, and readers take the latest value per step.
- W&B reopens the run by id (`resume="allow"`). Offline, each session is its own folder under
  RUN/wandb carrying the same run id, for `wandb sync` to upload into that one run. W&B
  cannot take a step twice (online, it ignores a step below the last one it has), so the
  values a killed session logged after checkpoint N stay there.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from tunesmith.config import RunConfig, flat_fields
from tunesmith.errors import UsageError

# What the trackers add to the run folder (the default MLflow store and its artifacts).
RUN_ENTRIES = ("tensorboard", "mlflow.db", "mlflow-artifacts", "wandb")

# A run's end as train.json names it -> MLflow's run status and the exit code W&B is given
# (W&B marks a run failed on any non-zero code; 130 is the shell's code for Ctrl-C).
STATUSES: dict[str, tuple[str, int]] = {
    "completed": ("FINISHED", 0),
    "stopped_early": ("FINISHED", 0),
    "failed": ("FAILED", 1),
    "interrupted": ("KILLED", 130),
}


class Backend(Protocol):
    name: str
    id: str | None  # what a resumed run reopens it by; None: the run folder is enough

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, status: str, adapter_dir: Path | None) -> None: ...


class Trackers:
    """The open trackers of one run. `ids` is JSON: {"mlflow": run id, "wandb": run id}.
    `notes` are one-line remarks for the user (a tracked run that could not be reopened)."""

    def __init__(self, backends: list[Backend], notes: list[str] | None = None) -> None:
        self._backends = backends
        self.ids: dict[str, str] = {b.name: b.id for b in backends if b.id is not None}
        self.notes = notes or []

    def log(self, record: dict) -> None:
        """One metrics.jsonl record: every numeric key but `step`, at `step`."""
        values = numeric_values(record)
        if not values:
            return
        step = int(record["step"])
        for backend in self._backends:
            backend.log(step, values)

    def finish(self, *, status: str, adapter_dir: Path | None) -> None:
        """Close every tracker, even when one fails (the first error is raised after). Once:
        a second call does nothing."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}; expected one of {', '.join(STATUSES)}")
        backends, self._backends = self._backends, []
        first: Exception | None = None
        for backend in backends:
            try:
                backend.finish(status, adapter_dir)
            except Exception as e:  # the others still get closed
                first = first or e
        if first is not None:
            raise first


def numeric_values(record: dict) -> dict[str, float]:
    """The keys a tracker can plot: numbers, not `step`, not booleans, not lists (alarms)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def require_trackers(cfg: RunConfig) -> None:
    """Refuse, in one line, a `track.to` whose libraries are not installed: call it with the
    other checks, before anything is written."""
    for name in dict.fromkeys(cfg.track.to):
        for module in BACKENDS[name][1](cfg):
            try:
                importlib.import_module(module)
            except ImportError as e:
                what = f"{e.name} is not installed" if isinstance(e, ModuleNotFoundError) and e.name else str(e)
                raise UsageError(f"track.to: {name} needs the optional extra `track` ({what}); "
                                 f"install it with pip install 'tunesmith[track]'") from None


def open_trackers(cfg: RunConfig, run_dir: Path, *, resume: dict | None, resume_step: int | None) -> Trackers:
    """Open the trackers `cfg.track.to` names. `resume`: the `ids` of the run being resumed;
    `resume_step`: the checkpoint's step it resumes from (None: a fresh run)."""
    require_trackers(cfg)
    backends: list[Backend] = []
    notes: list[str] = []
    try:
        for name in dict.fromkeys(cfg.track.to):
            opener = BACKENDS[name][0]
            backends.append(opener(cfg, run_dir, (resume or {}).get(name), resume_step, notes))
    except BaseException:
        # Close what did open, so a failed start leaves no run marked running; the error that
        # stopped the start is the one the user sees.
        try:
            Trackers(backends).finish(status="failed", adapter_dir=None)
        except Exception:
            pass
        raise
    return Trackers(backends, notes)


# ---------------------------------------------------------------- TensorBoard

class TensorBoard:
    """RUN/tensorboard, through torch's own writer (torch is there already; the `tensorboard`
    package it needs is also what shows and reads the files). Scalars are stored as float32."""

    name = "tensorboard"
    id = None  # resumed by folder and step

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_id: str | None, resume_step: int | None,
                 notes: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides every step >= it that earlier sessions wrote in this folder: the
        # steps after the checkpoint that the killed session logged and the resumed one redoes.
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a killed run keeps its curve up to its last step, as metrics.jsonl does

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        self.writer.close()


def _tensorboard_modules(cfg: RunConfig) -> tuple[str, ...]:
    return ("tensorboard",)


# ---------------------------------------------------------------- MLflow

class MLflow:
    """An MLflow run in `track.mlflow_uri`, by default a SQLite store in the run folder
    (RUN/mlflow.db, artifacts in RUN/mlflow-artifacts). Params: the resolved config, flattened
    (`train.lr`). Talks through one MlflowClient: no global active run, no environment set."""

    name = "mlflow"

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_id: str | None, resume_step: int | None,
                 notes: list[str]) -> None:
        from mlflow import MlflowClient

        self.uri = mlflow_uri(cfg, run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        if resume_id and self._exists(resume_id):
            self.id = resume_id
            self.client.update_run(resume_id, status="RUNNING")  # an interrupted run was set KILLED
        else:
            if resume_id:
                notes.append(f"MLflow run {resume_id} is not in {self.uri}; tracking this run as a new one")
            experiment = self._experiment(cfg.track.experiment or run_dir.resolve().name, run_dir, cfg)
            self.id = self.client.create_run(experiment, run_name=run_dir.resolve().name).info.run_id
        self._log_params(flat_params(cfg.to_dict()))

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def _experiment(self, name: str, run_dir: Path, cfg: RunConfig) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # The default store lives in the run folder, so its artifacts do too; a store the user
        # named keeps MLflow's own choice (the server's artifact root).
        where = (run_dir / "mlflow-artifacts").resolve().as_uri() if cfg.track.mlflow_uri is None else None
        return self.client.create_experiment(name, artifact_location=where)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        # A param cannot be changed once logged: a resumed run logs only what is new.
        have = self.client.get_run(self.id).data.params
        todo = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.id, params=todo[i : i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        if adapter_dir is not None and adapter_dir.is_dir():
            self.client.log_artifacts(self.id, str(adapter_dir), artifact_path=adapter_dir.name)
        self.client.set_terminated(self.id, status=STATUSES[status][0])


def mlflow_uri(cfg: RunConfig, run_dir: Path) -> str:
    """`track.mlflow_uri`, or the SQLite store RUN/mlflow.db (an absolute path: sqlite:////...)."""
    return cfg.track.mlflow_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve().as_posix()}"


def flat_params(tree: dict[str, Any]) -> dict[str, str]:
    """{"train": {"lr": 2e-4}} -> {"train.lr": "0.0002"}. Values as JSON (null, true, lists),
    text as it is; cut to MLflow's length limit, which refuses longer values."""
    limit = _param_limit()
    out: dict[str, str] = {}
    for key, value in flat_fields(tree).items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text if len(text) <= limit else text[: limit - 3] + "..."
    return out


def _param_limit() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:  # an MLflow that moved it: 500 is the smallest limit it ever had
        return 500
    return int(MAX_PARAM_VAL_LENGTH)


def _mlflow_modules(cfg: RunConfig) -> tuple[str, ...]:
    # The SQLite store (the default) needs sqlalchemy and alembic, which mlflow-skinny leaves out.
    uri = cfg.track.mlflow_uri or "sqlite:"
    return ("mlflow", "sqlalchemy", "alembic") if uri.startswith("sqlite:") else ("mlflow",)


# ---------------------------------------------------------------- W&B

class WandB:
    """A W&B run, offline unless the user has set W&B up.

    "Set up" means WANDB_MODE is set (online, offline, disabled: that mode is used) or
    WANDB_API_KEY is (then W&B's own default, online); online runs go to
    `track.wandb_project`. Otherwise the run is offline, in RUN/wandb, and `wandb sync
    RUN/wandb/offline-run-*` uploads it later: a training run never waits on, or fails for,
    a network or a login prompt. A key stored by `wandb login` alone does not count, so a
    run never uploads because of a file the user may have forgotten.
    """

    name = "wandb"

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_id: str | None, resume_step: int | None,
                 notes: list[str]) -> None:
        import wandb

        # The mode is passed, not left to W&B: W&B reads its environment once per process.
        mode = os.environ.get("WANDB_MODE") or (None if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            # W&B's own default guesses from the git repository; a fixed name is easier to find.
            project=cfg.track.wandb_project or os.environ.get("WANDB_PROJECT") or "tunesmith",
            name=run_dir.resolve().name,
            dir=str(run_dir),  # W&B adds its own wandb/ folder below
            config=cfg.to_dict(),
            id=resume_id,
            resume="allow" if resume_id else None,
            allow_val_change=bool(resume_id),  # a resumed run may carry a changed max_steps
            mode=mode,  # type: ignore[arg-type]  # W&B checks the value
            reinit="create_new",  # our own Run object: no global run to finish or clash with
        )
        self.id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        self.run.finish(exit_code=STATUSES[status][1])


def _wandb_modules(cfg: RunConfig) -> tuple[str, ...]:
    return ("wandb",)


# name -> (opener, the modules it needs); the opener is called (cfg, run_dir, resume_id,
# resume_step, notes). A new tracker is one class and one line here.
BACKENDS: dict[str, tuple[Callable[..., Backend], Callable[[RunConfig], tuple[str, ...]]]] = {
    "tensorboard": (TensorBoard, _tensorboard_modules),
    "mlflow": (MLflow, _mlflow_modules),
    "wandb": (WandB, _wandb_modules),
}
