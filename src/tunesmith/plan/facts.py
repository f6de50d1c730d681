"""Where a model's config comes from, for planning: a catalog alias, a local folder with
config.json, a .gguf file (its metadata, read without loading weights), or a hub id whose
config.json is already in the local HF cache. Nothing is downloaded."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.plan.arch import ModelFacts

# Aliases of models.source that name a catalog entry with the same architecture.
SOURCE_ALIASES = {"smollm2-135m-instruct": "smollm2-135m"}


def catalog_aliases() -> list[str]:
    folder = resources.files("tunesmith.catalog") / "models"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def catalog_entry(alias: str) -> dict[str, Any]:
    path = resources.files("tunesmith.catalog") / "models" / f"{alias}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def model_config(source: str) -> tuple[dict[str, Any], str]:
    """(config fields, where they came from) for any model source."""
    alias = SOURCE_ALIASES.get(source, source)
    if alias in catalog_aliases():
        return catalog_entry(alias)["config"], f"catalog:{alias}"
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UsageError(f"{source}: folder has no config.json (is it a model folder?)")
        return json.loads(config_file.read_text(encoding="utf-8")), str(config_file)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"{source}: GGUF file not found")
        return _gguf_config(path), str(path)
    cached = _cached_hub_config(source)
    if cached is None:
        raise UsageError(
            f"{source}: not a catalog alias, folder or .gguf file, and its config.json is not in the local "
            f"HF cache (nothing is downloaded); catalog: {', '.join(catalog_aliases())}"
        )
    return json.loads(Path(cached).read_text(encoding="utf-8")), cached


def model_facts(source: str) -> tuple[ModelFacts, str]:
    config, where = model_config(source)
    return ModelFacts.from_config(config), where


def _cached_hub_config(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid hub id (a path that does not exist, say)
        return None
    return found if isinstance(found, str) else None


def _gguf_config(path: Path) -> dict[str, Any]:
    """The transformers config a GGUF file describes, from its metadata (no weights read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    return config.to_dict()
