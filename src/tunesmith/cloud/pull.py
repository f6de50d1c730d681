"""`tunesmith pull RUN`: the run folder from its bucket back into RUN. From S3 with the aws CLI,
from Google Cloud Storage with gcloud, or from any folder (a bucket mounted here, a copy):
files that differ are copied whole, each through a temporary name, so RUN never holds a
torn file. The checkpoints stay in the bucket unless asked for (they can be large)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError, UsageError

LOCAL_ONLY = "launch"  # RUN/launch is this machine's: never overwritten from the bucket
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Pulled:
    source: str
    copied: int | None  # files; None when a cloud CLI copied them (it reports its own)
    total_bytes: int


def pull(run_dir: Path, source: str, *, checkpoints: bool = False, tool_dirs: tuple[Path, ...] = ()) -> Pulled:
    """Bring `source` (the bucket folder, or a local folder) into `run_dir`. `tool_dirs`:
    where else to look for the aws / gcloud commands (SkyPilot's environment installs them)."""
    if source.startswith(("s3://", "gs://")):
        command = sync_command(source, run_dir, checkpoints=checkpoints, tool_dirs=tool_dirs)
        run_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            raise TunesmithError(f"`{' '.join(command[:3])} …` failed (exit {done.returncode}; its output above says "
                                 f"why): check the bucket's name and your credentials for it", exit_code=1)
        return Pulled(source, None, tree_bytes(run_dir))
    if "://" in source:
        raise UsageError(f"pulling from {source.split('://')[0]}:// is not wired in (S3, GCS and local folders are): "
                         f"mount or copy {source} here and give that folder with --from FOLDER")
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--from {source}: not a folder; give the run folder's copy (a mounted bucket, a download)")
    run_dir.mkdir(parents=True, exist_ok=True)
    copied = copy_changed(folder, run_dir, skip={LOCAL_ONLY} | (set() if checkpoints else {CHECKPOINTS}))
    return Pulled(source, copied, tree_bytes(run_dir))


def sync_command(source: str, dest: Path, *, checkpoints: bool, tool_dirs: tuple[Path, ...] = ()) -> list[str]:
    """The cloud CLI's sync of `source` into `dest`, leaving out RUN/launch and (unless asked)
    the checkpoints."""
    if source.startswith("s3://"):
        skip = [LOCAL_ONLY] + ([] if checkpoints else [CHECKPOINTS])
        excludes = [arg for name in skip for arg in ("--exclude", f"{name}/*")]
        return [tool("aws", tool_dirs), "s3", "sync", source, str(dest), *excludes]
    skip_pattern = f"^({LOCAL_ONLY}|{CHECKPOINTS})/" if not checkpoints else f"^{LOCAL_ONLY}/"
    return [tool("gcloud", tool_dirs), "storage", "rsync", "--recursive", "--exclude", skip_pattern, source, str(dest)]


def tool(name: str, tool_dirs: tuple[Path, ...]) -> str:
    found = shutil.which(name) or next((str(d / name) for d in tool_dirs if (d / name).is_file()), None)
    if found is None:
        how = {"aws": "pip install awscli (SkyPilot's aws extra has it)",
               "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"}[name]
        raise UsageError(f"pulling from this bucket needs the `{name}` command, which is not installed here: {how}; "
                         "or mount the bucket and give its folder with --from FOLDER")
    return found


def copy_changed(src: Path, dest: Path, *, skip: set[str]) -> int:
    """Copy each file of `src` whose size or modification time differs from its copy in
    `dest` (top-level names in `skip` left out); the number copied."""
    copied = 0
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if relative.parts[0] in skip or not path.is_file() or path.is_symlink():
            continue
        target = dest / relative
        if target.is_file() and same_file(path, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as data, tempfile.NamedTemporaryFile(
                dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            shutil.copyfileobj(data, tmp)
        shutil.copystat(path, tmp.name)
        os.replace(tmp.name, target)
        copied += 1
    return copied


def same_file(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and int(sa.st_mtime) == int(sb.st_mtime)


def tree_bytes(path: Path) -> int:
    """The bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
