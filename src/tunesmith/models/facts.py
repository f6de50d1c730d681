"""Where a model's config comes from, for planning: an alias with a catalog entry (see
`models.aliases`), a local folder with config.json, a .gguf file (its metadata, read without
loading weights), or a hub id whose config.json is already in the local HF cache. Nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.catalog.model_configs import catalog_aliases, catalog_entry
from tunesmith.errors import UsageError
from tunesmith.io import read_json, require_file
from tunesmith.models.aliases import find_alias
from tunesmith.models.arch import SUPPORTED, ModelFacts, UnsupportedModel
from tunesmith.models.source import GGUF_MAGIC, brief, cached_snapshot, is_hub_id


def model_config(source: str) -> tuple[dict[str, Any], str]:
    """(config fields, where they came from) for any model source. UsageError naming the
    file for one that cannot be read; UnsupportedModel for a hub id not on this machine."""
    alias = find_alias(source)
    if alias is not None and alias.catalog:  # read the catalog's config, not the weights
        return catalog_entry(alias.catalog)["config"], f"catalog:{alias.catalog}"
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise UsageError(f"{source}: folder has no config.json (is it a model folder?)")
        return read_config_json(config_file), str(config_file)
    if source.endswith(".gguf"):
        require_file(path, "GGUF file")
        return _gguf_config(path), str(path)
    snapshot = cached_snapshot(source) if is_hub_id(source) else None
    if snapshot is None:
        raise UnsupportedModel(
            f"{source}: not a catalog alias, folder or .gguf file, and its config.json is not in the local "
            f"HF cache (nothing is downloaded); catalog: {', '.join(catalog_aliases())}"
        )
    cached = snapshot / "config.json"
    return read_config_json(cached), str(cached)


def model_facts(source: str) -> tuple[ModelFacts, str]:
    config, where = model_config(source)
    return ModelFacts.from_config(config, where), where


def read_config_json(path: Path) -> Any:
    """A model's config.json as parsed JSON, or one UsageError naming the file, the place and
    what to do (its shape is checked by ModelFacts.from_config)."""
    return read_json(path, "model config", "copy the model's original config.json")




def _gguf_config(path: Path) -> dict[str, Any]:
    """The transformers config a GGUF file describes, from its metadata (no weights read)."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UsageError(f"{path}: not a GGUF file (it does not start with the bytes GGUF); "
                         "give the .gguf file itself, or a model folder with config.json")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError:
        raise UsageError(f"{path}: reading a .gguf file needs the gguf package: pip install gguf") from None
    except ValueError as e:
        if "is not supported" in str(e):  # transformers cannot map this GGUF architecture
            raise UnsupportedModel(f"{path}: {brief(e)}; the planner supports "
                                   f"{', '.join(SUPPORTED)}") from None
        raise _unreadable_gguf(path, e) from None
    # The metadata parser is a third-party reader of a user's file: a truncated or damaged
    # file surfaces as whatever it trips on (struct, index, key errors), never as a bug here.
    except Exception as e:  # noqa: BLE001
        raise _unreadable_gguf(path, e) from None
    return config.to_dict()


def _unreadable_gguf(path: Path, e: Exception) -> UsageError:
    return UsageError(f"{path}: cannot read its GGUF metadata ({type(e).__name__}: {brief(e)}); "
                      "the file may be truncated or damaged: download it again")
