"""SkyPilot from outside: find its `sky` command, check a task YAML with its own parser
(offline), and run `sky jobs …`. tunesmith never imports SkyPilot: its click pin conflicts
with transformers', so it lives in an environment of its own (pipx, or `make setup`'s
.venv-sky) and is called in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from tunesmith.errors import TunesmithError, UsageError

SKY_ENV = "TUNESMITH_SKY"
TESTED = "0.14.1"
INSTALL = (f"install SkyPilot apart from tunesmith (its click pin conflicts with transformers'): "
           f"`pipx install 'skypilot[aws,gcp]=={TESTED}'` (the clouds you use in the brackets), or `make setup` in a "
           f"tunesmith checkout (it builds .venv-sky); then `sky check`, and put `sky` on PATH or set {SKY_ENV} to it")

# Runs in SkyPilot's Python: reads the task as `sky jobs launch` would and prints what it
# understood, or why it refused. Offline: nothing is provisioned, no API server is started.
PARSE = """
import json, sys
import sky
try:
    task = sky.Task.from_yaml(sys.argv[1])
except Exception as e:
    print(json.dumps({"refused": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
resources = sorted(task.resources, key=lambda r: json.dumps(r.accelerators, sort_keys=True))
print(json.dumps({
    "version": sky.__version__, "name": task.name,
    "resources": [{"accelerators": r.accelerators, "use_spot": r.use_spot, "disk_size": r.disk_size,
                   "job_recovery": r.job_recovery} for r in resources],
    "storage_mounts": {path: {"source": s.source, "mode": s.mode.value} for path, s in task.storage_mounts.items()},
    "file_mounts": task.file_mounts, "envs": task.envs,
}))
"""


def find_sky() -> Path | None:
    """The `sky` command: $TUNESMITH_SKY, else `sky` on PATH, else the .venv-sky of the
    tunesmith checkout this runs from (`make setup` builds it)."""
    named = os.environ.get(SKY_ENV)
    if named:
        path = Path(named).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"{SKY_ENV}={named}: not an executable file; point it at SkyPilot's `sky` command")
        return path
    on_path = shutil.which("sky")
    if on_path:
        return Path(on_path)
    checkout = Path(__file__).resolve().parents[3] / ".venv-sky" / "bin" / "sky"
    return checkout if checkout.is_file() else None


def require_sky() -> Path:
    sky = find_sky()
    if sky is None:
        raise UsageError(f"SkyPilot is not installed here: {INSTALL}")
    return sky


def sky_python(sky: Path) -> Path:
    """The Python SkyPilot runs in: beside its `sky` script (a venv's or pipx's bin folder,
    through a symlink), else the interpreter its first line names."""
    for folder in (sky.parent, sky.resolve().parent):
        for name in ("python", "python3"):
            if (folder / name).is_file():
                return folder / name
    first = sky.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    if first.startswith("#!") and Path(first[2:].strip().split()[0]).is_file():
        return Path(first[2:].strip().split()[0])
    raise UsageError(f"{sky}: cannot find the Python SkyPilot runs in (no python beside it, no #! line naming "
                     f"one); {INSTALL}")


def quiet_env() -> dict[str, str]:
    """SkyPilot's environment for tunesmith's calls: no usage reports sent from here."""
    return {**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}


def parse_task(task_file: Path, sky: Path) -> dict[str, Any]:
    """What SkyPilot's own parser reads in the task YAML (see PARSE); UsageError with its
    reason when it refuses the file."""
    try:
        done = subprocess.run([str(sky_python(sky)), "-c", PARSE, str(task_file)], capture_output=True, text=True,
                              env=quiet_env(), timeout=300)
    except subprocess.TimeoutExpired:
        raise TunesmithError(f"SkyPilot's parser took over 5 minutes on {task_file}; run `sky check` to see "
                             "whether SkyPilot works here") from None
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        parsed = json.loads(last[0])
    except json.JSONDecodeError:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TunesmithError(f"SkyPilot ({sky}) could not read {task_file}: {why}; {INSTALL}") from None
    if "refused" in parsed:
        raise TunesmithError(f"SkyPilot refuses {task_file}: {parsed['refused']}")
    return parsed


def run_sky(args: Sequence[str], sky: Path) -> int:
    """`sky ARGS`, its output straight to the terminal; its exit code."""
    return subprocess.run([str(sky), *args], env=quiet_env()).returncode


def capture_sky(args: Sequence[str], sky: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(sky), *args], env=quiet_env(), capture_output=True, text=True)


def failed(what: str, code: int) -> TunesmithError:
    """A `sky` command that failed: its own output said why; this says what to check."""
    return TunesmithError(f"{what} failed (sky exit {code}; its output above says why): `sky check` shows which clouds "
                          "have credentials, `sky api info` whether its API server runs", exit_code=1)


def job_rows(queue: str, job: str) -> list[str]:
    """The header of `sky jobs queue`'s table and its rows for `job` (a whole word on the line)."""
    lines = queue.splitlines()
    header = next((line for line in lines if line.lstrip().startswith("ID")), None)
    rows = [line for line in lines if re.search(rf"(?<![\w-]){re.escape(job)}(?![\w-])", line)]
    return ([header] if header and rows else []) + rows
