"""RUN/train.json, the training stage's outcome, rewritten atomically as training goes, and
the lock that keeps two `tunesmith train` processes out of one run folder.

train.json says at any moment how far the run got: a reader (a person, `tunesmith plan
--calibrate`, a cloud job's log) never sees half a file. While the run is alive its `status`
is "running" and `heartbeat` moves; a train.json that says "running" when no process holds the
folder's lock belongs to a process that died without a word (most often: killed by the
kernel for lack of memory).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import UsageError
from tunesmith.io import write_json_atomic

STATUSES = ("running", "completed", "stopped_early", "interrupted", "failed")
FINISHED = ("completed", "stopped_early")
# train.json is rewritten at events (eval, checkpoint, alarm, end) and at least this often.
HEARTBEAT_SECONDS = 30.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / "train.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


PeakMemory = Callable[[], dict[str, Any]]  # {"gb": the process's high-water mark so far, "measure": how}


class RunRecord:
    """train.json in memory; `write()` puts it on disk whole (a worker of a multi-process run
    keeps one that is never written: `run_dir` None).

    Each process that trains the run adds one entry to `sessions`, which a resume never rolls
    back (unlike tokens and train_seconds, restored from the checkpoint): the time every
    process really spent, the steps a resume did again included, and its memory high-water
    mark. `peak_memory` is the highest of them."""

    def __init__(self, run_dir: Path | None, fields: dict[str, Any], peak_memory: PeakMemory | None = None) -> None:
        self.path = run_dir / "train.json" if run_dir is not None else None
        self.fields = fields
        self._written = 0.0
        self._peak_memory = peak_memory
        self._process_start = process_start_time()

    @classmethod
    def start(cls, run_dir: Path | None, *, steps_planned: int, previous: dict[str, Any] | None,
              resumed_from: int | None, peak_memory: PeakMemory | None = None) -> "RunRecord":
        """A new record, or the previous one carried on (its resumes, sessions, alarms and
        changes). Alarms and memory changes of steps after `resumed_from` go: those steps are
        trained again, and say so again if they do again (kept, they were there twice).
        `peak_memory()` measures this process's memory at each write."""
        keep = previous if resumed_from is not None and previous else {}
        session = {"started": now_iso(), "from_step": resumed_from or 0, "to_step": resumed_from or 0,
                   "step_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_gb": None}

        def until_resumed(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in entries if not isinstance(e.get("step"), int) or e["step"] <= (resumed_from or 0)]

        fields = {
            "status": "running", "steps_planned": steps_planned, "steps_done": resumed_from or 0,
            "best_step": keep.get("best_step"), "best_eval_loss": keep.get("best_eval_loss"),
            "adapter_step": None, "resumes": list(keep.get("resumes", [])),
            "alarms": until_resumed(keep.get("alarms", [])),
            "memory_changes": until_resumed(keep.get("memory_changes", [])), "tokens": keep.get("tokens", 0),
            "train_seconds": keep.get("train_seconds", 0.0), "tracking": keep.get("tracking", {}),
            "pid": os.getpid(), "started": keep.get("started", now_iso()), "heartbeat": now_iso(),
            "sessions": _sessions(keep) + [session], "peak_memory": keep.get("peak_memory"),
        }
        return cls(run_dir, fields, peak_memory)

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)

    def stepped(self, step: int, step_seconds: float) -> None:
        """This session reached `step`, having spent `step_seconds` in its optimizer steps."""
        session = self.fields["sessions"][-1]
        session["to_step"], session["step_seconds"] = step, round(step_seconds, 3)

    def write(self) -> None:
        if self.path is None:
            return
        self.fields["heartbeat"] = now_iso()
        self._measure_session()
        write_json_atomic(self.path, self.fields)
        self._written = time.monotonic()

    def _measure_session(self) -> None:
        """This session's wall time from its process's start (the clock `restart_seconds` uses:
        model load, data stage, steps, evals and checkpoints), and its memory high-water mark.
        A process killed without a word keeps what its last write measured (at most
        HEARTBEAT_SECONDS old)."""
        session = self.fields["sessions"][-1]
        session["wall_seconds"] = round(time.time() - self._process_start, 3)
        if self._peak_memory is None:
            return
        try:
            peak = self._peak_memory()
        except Exception:  # a failed run's broken CUDA context must not hide the error that broke it
            return
        session["peak_memory_gb"] = max(peak["gb"], session["peak_memory_gb"] or 0.0)
        highest = max(_gb(s.get("peak_memory_gb")) for s in self.fields["sessions"])
        self.fields["peak_memory"] = {"gb": highest, "measure": peak["measure"]}

    def beat(self) -> None:
        """Rewrite only when the last write is older than the heartbeat interval."""
        if time.monotonic() - self._written >= HEARTBEAT_SECONDS:
            self.write()


def _sessions(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The earlier sessions of a run being continued (entries that are not ours are dropped:
    a hand-edited train.json must not stop a resume)."""
    sessions = previous.get("sessions")
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def _gb(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class RunLock:
    """An exclusive lock on the run folder itself for as long as the run trains. The kernel
    drops it when the process dies, however it dies, so a stale lock cannot block a resume,
    and no lock file is left behind."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "RunLock":
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            record = read_record(self.path) or {}
            holder = f" (pid {record['pid']})" if record.get("status") == "running" and record.get("pid") else ""
            raise UsageError(f"{self.path}: another `tunesmith train`{holder} is training in this folder now; wait "
                             f"for it, stop it, or choose another --out") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
        if self._created:  # a run refused before it wrote anything leaves no empty folder behind
            try:
                self.path.rmdir()
            except OSError:
                pass


def process_start_time() -> float:
    """When this process started (seconds since the epoch): the clock a resume's restart time
    is measured from. Linux: /proc; elsewhere the moment tunesmith was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()
