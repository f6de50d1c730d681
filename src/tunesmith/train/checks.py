"""What `tunesmith train` refuses before it writes anything: inputs that cannot work, a
method this machine cannot run, and a run folder that holds another run.

A failed run must not leave a folder that describes a run that never happened, and a
run that cannot work should cost seconds, not the minutes of a data stage and a model load.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import RunConfig, flat_fields
from tunesmith.data.prepare import check_data_files
from tunesmith.errors import UsageError
from tunesmith.io import check_output_dir, file_facts
from tunesmith.models.source import check_model_source
from tunesmith.plan.autofit import recorded_changes, set_fields
from tunesmith.train.checkpoint import field_differences, relevant_fields
from tunesmith.train.record import FINISHED, read_record

# What a run writes into its folder (DESIGN.md, "The run folder"). --restart removes these
# and nothing else: a file we did not write is never deleted.
RUN_ENTRIES = (
    "config.yaml", "data", "plan.json", "plan_vs_actual.json", "metrics.jsonl", "train.json", "checkpoints", "adapter",
    "model", "eval", "review", "launch", "summary.json", "error.log", "tensorboard", "mlflow.db", "mlflow-artifacts", "wandb",
)
# Entries that mean training got somewhere: a folder without them holds only an attempt that
# stopped before the first step (pre-flight, data stage), which a new attempt may replace.
TRAINED_ENTRIES = ("metrics.jsonl", "checkpoints", "adapter", "model", "eval", "summary.json")


def check_run_inputs(cfg: RunConfig) -> None:
    """The data files exist and differ, and the model can be loaded (read from its files, not
    loaded). What this machine can run is the pre-flight's checklist."""
    check_data_files(cfg)
    check_model_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)


# ---------------------------------------------------------------- the run folder

@dataclass(frozen=True)
class RunFolder:
    """A run folder this run may write into; `replace` lists what an earlier run left there
    that must go first (nothing is removed until `take` is called). `resume`: the folder
    holds this same run, unfinished; `finished`: this same run, done. `auto_fit`: the changes
    the pre-flight's auto-fit made to this same run (its train.json's record), to continue with."""

    path: Path
    replace: tuple[Path, ...] = ()
    resume: bool = False
    finished: bool = False
    auto_fit: dict[str, Any] | None = None

    def take(self) -> Path:
        for entry in self.replace:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        return self.path

    def restart_all(self) -> "RunFolder":
        """The same folder, everything of the earlier run to be replaced."""
        return RunFolder(self.path, _ours(self.path))


def inspect_run_dir(cfg: RunConfig, *, restart: bool = False, same_run_restarts: bool = False,
                    resuming: bool = False, flag: str = "--out") -> RunFolder:
    """May this run write into cfg.output.dir? An absent or empty folder: yes. A folder with
    another tunesmith run in it: only with `restart`. This same run (the config fields that
    matter are equal): continue it, or nothing to do when it finished (`same_run_restarts`:
    start over instead, as the demo does). A folder of other files: never. Nothing is removed
    here."""
    path = Path(cfg.output.dir)
    check_output_dir(path, flag)
    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else []
    if not entries:
        return RunFolder(path)
    if not (path / "config.yaml").is_file() and any(p.name not in RUN_ENTRIES for p in entries):
        shown = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(f"{flag} {path}: the folder holds other files ({shown}) and no tunesmith run: give a new "
                         f"or empty folder")
    trained = [name for name in TRAINED_ENTRIES if (path / name).exists()]
    if restart or not trained:  # nothing trained yet: an attempt the data stage or a crash stopped
        return RunFolder(path, _ours(path))
    previous = _previous_config(path / "config.yaml")
    record = read_record(path) or {}
    fitted = record.get("auto_fit") if recorded_changes(record.get("auto_fit")) else None
    if not (path / "config.yaml").exists():
        return without_config(path, fitted, flag)
    differences = config_differences(previous, cfg.to_dict())
    if differences and fitted and previous is not None:
        # The folder's config may be this command's config as auto-fit changed it: the same run.
        asked = set_fields(previous, {key: before for key, (before, _) in recorded_changes(fitted).items()})
        differences = config_differences(asked, cfg.to_dict())
    if differences:
        raise UsageError(f"{flag} {path} holds another run ({describe_run(path)}) that differs in "
                         f"{'; '.join(differences[:3])}"
                         + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")
                         + f": choose another {flag}, or add --restart to delete it and start over")
    if same_run_restarts:
        return RunFolder(path, _ours(path))
    if _finished(path) and not resuming:
        return RunFolder(path, finished=True, auto_fit=fitted)
    return RunFolder(path, resume=True, auto_fit=fitted)


def without_config(path: Path, fitted: dict[str, Any] | None, flag: str) -> RunFolder:
    """A folder of our files without config.yaml: on a bucket mount the files of a run arrive
    in no order, so checkpoints can be there before config.yaml is. With checkpoints, continue:
    the checkpoint's fingerprint (the same config fields, and the data) decides whether it is
    this run. With neither checkpoints nor trained weights nothing can be continued: replace it.
    Trained weights without checkpoints cannot be told to be this run's: refused."""
    if (path / "checkpoints").is_dir():
        return RunFolder(path, resume=True, auto_fit=fitted)
    if not ((path / "adapter").exists() or (path / "model").exists()):
        return RunFolder(path, _ours(path))
    raise UsageError(f"{flag} {path} holds trained weights but no config.yaml to tell which run they are from: "
                     f"choose another {flag}, or add --restart to delete them and start over")


def _ours(path: Path) -> tuple[Path, ...]:
    """What an earlier run wrote here: our entries and the temp files a kill left behind."""
    ours = tuple(path / name for name in RUN_ENTRIES if (path / name).exists() or (path / name).is_symlink())
    leftovers = tuple(p for p in path.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))
    return ours + leftovers


def _finished(path: Path) -> bool:
    """Trained to the end: train.json says so, and the weights files it lists are all there
    as written (or, from before train.json, the weights folder is there)."""
    weights = (path / "adapter").is_dir() or (path / "model").is_dir()
    record = read_record(path)
    if record is None:
        return weights
    return weights and record.get("status") in FINISHED and weights_whole(path, record)


def weights_whole(path: Path, record: dict[str, Any]) -> bool:
    """Every file train.json's `weights_files` lists has its size and hash. A bucket mount
    uploads files in no order: train.json's "completed" can be there before the weights are;
    such a run continues from its newest checkpoint and writes them again. A train.json from
    before the list: the folder is taken as whole."""
    files = record.get("weights_files")
    if not isinstance(files, dict):
        return True
    return all((path / name).is_file() and file_facts(path / name) == facts for name, facts in files.items())


def _previous_config(path: Path) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def config_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """`["train.lr 0.0002 -> 0.0001", ...]` between two resolved configs, in the fields that
    fix the weights (not the folder itself, how often to log or save, eval or tracking)."""
    if old is None:
        return ["its config.yaml, which cannot be read"]
    return field_differences(relevant_fields(flat_fields(old)), relevant_fields(flat_fields(new)))


def describe_run(path: Path) -> str:
    """A few words on how far the run in `path` got."""
    if (path / "adapter").is_dir() or (path / "model").is_dir():
        return "finished: it has a trained " + ("adapter" if (path / "adapter").is_dir() else "model")
    steps = _last_logged_step(path / "metrics.jsonl")
    return f"stopped after step {steps}" if steps else "stopped before its first logged step"


def _last_logged_step(metrics: Path) -> int | None:
    last = None
    try:
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                last = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        return None
    return last
