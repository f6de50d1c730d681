"""This tunesmith for the cloud machine: a wheel built from the checkout it runs from (the
code that planned the run is the code that trains it), or, for an installed release, that
release from the package index; and the versions of the training libraries installed here,
as pip constraints, so the cloud machine computes what this one tested."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Sequence

from tunesmith.errors import TunesmithError

PINNED_NOTE = "# The versions installed where this run was launched (pip -c): training computes what they compute.\n"


def source_tree() -> Path | None:
    """The checkout tunesmith runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tunesmith"' in pyproject.read_text(encoding="utf-8", errors="replace"):
        return root
    return None


def build_wheel(tree: Path, dest: Path) -> Path:
    """A wheel of `tree` in `dest` (replacing an older one there). Built with the build tools
    installed here, without reaching the index."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                               "--wheel-dir", tmp, str(tree)], capture_output=True, text=True)
        built = sorted(Path(tmp).glob("tunesmith-*.whl"))
        if done.returncode != 0 or not built:
            why = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise TunesmithError(f"building a wheel of {tree} failed: {why}; `pip install setuptools wheel` "
                                 "in tunesmith's environment, or install a released tunesmith")
        for old in dest.glob("tunesmith-*.whl"):
            old.unlink()
        wheel = dest / built[0].name
        built[0].replace(wheel)  # same folder: an atomic rename
    return wheel


def tree_commit(tree: Path) -> str | None:
    """The checkout's commit, with "+changes" when files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def constraints(packages: Sequence[str]) -> str:
    """pip constraints pinning each installed package to its version here (torch without its
    local tag: "2.13.0+cpu" here is "2.13.0", a CUDA build, on a Linux GPU machine)."""
    lines = []
    for name in packages:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        lines.append(f"{name}=={version.split('+')[0]}")
    return "\n".join(lines) + "\n"
