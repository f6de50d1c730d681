"""What `tunesmith serve PATH [PATH …]` serves, found from the folders alone.

Each PATH is one of:
- a run folder (RUN/config.yaml): its adapter (RUN/adapter) or, for a full fine-tune, RUN/model;
- an adapter folder copied from a run or written by `tunesmith export --adapter-only`
  (adapter_config.json): the base is the one its tunesmith.json names, so it serves on a
  machine that never saw the run folder.
A merged export is a plain transformers folder: vLLM or any other server serves it alone
(`tunesmith deploy`), without the base this server keeps in memory.

Every adapter must sit on the same base (compared as resolved here, after aliases and GGUF
conversion): one copy of the base is in memory and each adapter is chosen per request.
Nothing is loaded here, so every mistake is found before minutes of loading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunesmith.config import load_run_config
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.models.card import adapter_origin
from tunesmith.models.source import resolve_source

BASE_NAME = "base"  # the base model's name in /v1/models
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Source:
    """One model to serve: an adapter on the shared base, or a whole model of its own."""

    name: str  # the `model` a request names: the run folder's name
    given: Path  # the PATH as given, for messages
    kind: Literal["adapter", "model"]
    folder: Path  # the adapter folder, or the model folder
    base: str  # the base as the user named it when training (alias, hub id, path)
    method: str  # lora | qlora | full
    dtype: str  # the run's model.dtype ("auto" where there is no run config)
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything to load: the base (resolved to a local folder or hub id) and the sources."""

    base: str  # as named
    base_path: str  # as resolved here
    dtype: str
    trust_remote_code: bool
    sources: list[Source]

    @property
    def names(self) -> list[str]:
        return [BASE_NAME] + [s.name for s in self.sources]


def plan_serving(paths: list[Path]) -> Plan:
    """Find every PATH's model and the one base they share, or one error naming the PATH at fault."""
    if not paths:
        raise UsageError("give at least one run folder (or adapter folder) to serve")
    sources = [find_source(Path(p)) for p in paths]
    _check_names(sources)
    first = sources[0]
    resolved = {s.name: resolve_source(s.base, trust_remote_code=s.trust_remote_code) for s in sources}
    for s in sources[1:]:
        if resolved[s.name] != resolved[first.name]:
            raise UsageError(f"{s.given}: was trained on {s.base}, {first.given} on {first.base}; one server "
                             f"serves adapters of one base: start a `tunesmith serve` per base")
    return Plan(first.base, resolved[first.name], first.dtype, any(s.trust_remote_code for s in sources), sources)


def find_source(path: Path) -> Source:
    if not path.exists():
        raise UsageError(f"{path}: not found; give a run folder (the --out of `tunesmith train`)")
    if (path / "config.yaml").is_file():
        return _run_source(path)
    if (path / "adapter_config.json").is_file():
        return _adapter_source(path, path.name)
    raise UsageError(f"{path}: neither a run folder (no config.yaml) nor an adapter folder (no adapter_config.json); "
                     f"a merged export is served by vLLM: see `tunesmith deploy`")


def _run_source(run_dir: Path) -> Source:
    cfg = load_run_config(run_dir)
    name = run_dir.resolve().name
    trust = cfg.model.trust_remote_code
    if cfg.method.name == "full":
        folder = run_dir / "model"
        if not (folder / "config.json").is_file():
            raise TunesmithError(f"{folder} not found: the run has no trained model yet (did training finish?)")
        return Source(name, run_dir, "model", folder, cfg.model.source, "full", cfg.model.dtype, trust)
    folder = run_dir / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise TunesmithError(f"{folder} not found: the run has no trained adapter yet (did training finish?)")
    return Source(name, run_dir, "adapter", folder, cfg.model.source, cfg.method.name, cfg.model.dtype, trust)


def _adapter_source(folder: Path, fallback_name: str) -> Source:
    base, method, run = adapter_origin(folder)
    return Source(str(run or fallback_name), folder, "adapter", folder, base, method, "auto")


def _check_names(sources: list[Source]) -> None:
    seen: dict[str, Path] = {}
    for s in sources:
        if not NAME.fullmatch(s.name) or s.name == BASE_NAME:
            raise UsageError(f"{s.given}: serves under the name {s.name!r}, which a request cannot use (letters, "
                             f"digits, '.', '_' or '-', not {BASE_NAME!r}); rename the run folder")
        if s.name in seen:
            raise UsageError(f"{s.given} and {seen[s.name]}: both would serve as {s.name!r}; rename one folder")
        seen[s.name] = s.given
