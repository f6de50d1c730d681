"""Where a model's config comes from, for planning: an alias with a catalog entry (see
`models.aliases`), a local folder with config.json or the config.json itself, a .gguf file
(its metadata, read without loading weights), or a hub id: its config.json from the local HF
cache, else from the catalog entry of that hub id, else (downloads on) from the hub
(HF_ENDPOINT) into the HF cache. Only that small file is fetched, never the weights, so
planning a 70B model costs a few kilobytes and no GPU.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from tunesmith.catalog.model_configs import catalog_aliases, catalog_entry
from tunesmith.errors import UsageError
from tunesmith.io import read_json, require_file
from tunesmith.models.aliases import find_alias
from tunesmith.models.arch import SUPPORTED, ModelFacts, UnsupportedModel
from tunesmith.models.source import (GGUF_MAGIC, brief, cached_snapshot, hub_cache_dir, hub_endpoint, hub_offline,
                                     hub_reachable, is_hub_id)

CONFIG_FILE = "config.json"


def model_config(source: str) -> tuple[dict[str, Any], str]:
    """(config fields, where they came from) for any model source. UsageError naming the
    file for one that cannot be read; UnsupportedModel for a hub id whose config.json is
    neither cached nor fetched (offline, not found, the hub does not answer)."""
    alias = find_alias(source)
    if alias is not None and alias.catalog:  # read the catalog's config, not the weights
        return catalog_entry(alias.catalog)["config"], f"catalog:{alias.catalog}"
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise UsageError(f"{source}: folder has no config.json (is it a model folder?)")
        return read_config_json(config_file), str(config_file)
    if path.is_file() and path.suffix == ".json":  # a config.json fetched by hand, for planning offline
        return read_config_json(path), str(path)
    if source.endswith(".gguf"):
        require_file(path, "GGUF file")
        return _gguf_config(path), str(path)
    snapshot = cached_snapshot(source) if is_hub_id(source) else None
    if snapshot is not None:
        return read_config_json(snapshot / CONFIG_FILE), str(snapshot / CONFIG_FILE)
    if not is_hub_id(source) or "/" not in source:  # a bare name is more likely a mistyped alias than a hub id
        close = difflib.get_close_matches(source, catalog_aliases(), n=1)
        raise UnsupportedModel(f"{source}: not a catalog alias, a folder with config.json, a config.json, a .gguf "
                               f"file nor a hub id (org/name)" + (f"; did you mean {close[0]}?" if close else "")
                               + f"; {catalog_hint()}")
    known = catalog_alias_of(source)
    if known is not None:  # the catalog holds this hub model's config.json: no need to ask the hub
        return catalog_entry(known)["config"], f"catalog:{known}"
    fetched = fetch_config(source)
    return read_config_json(fetched), str(fetched)


def model_facts(source: str) -> tuple[ModelFacts, str]:
    config, where = model_config(source)
    return ModelFacts.from_config(config, where), where


def catalog_alias_of(repo_id: str) -> str | None:
    """The catalog alias whose hub id is `repo_id`, if any."""
    return next((alias for alias in catalog_aliases() if catalog_entry(alias)["hub_id"] == repo_id), None)


def catalog_hint() -> str:
    return f"catalog aliases: {', '.join(catalog_aliases())}"


# ---------------------------------------------------------------- a hub id's config.json

def fetch_config(repo_id: str) -> Path:
    """Download `repo_id`'s config.json alone into the HF cache, where transformers finds it
    later, and return its path. Every way it can fail is one UnsupportedModel naming the repo
    and what to do instead: downloads off, no network, the hub does not answer in time, no such
    repo (or private, or gated), no config.json."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    endpoint = hub_endpoint()
    if hub_offline():
        raise _not_fetched(repo_id, "downloads are off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)")
    if not hub_reachable(endpoint):  # one bounded connect: without a network the client would wait much longer
        raise _not_fetched(repo_id, f"the hub ({endpoint}) cannot be reached from here")
    timeout = metadata_timeout()
    try:
        # The library's download retries a HEAD that timed out for up to a minute with backoff;
        # one HEAD of our own, without retries, tells a silent hub in `timeout` seconds.
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_FILE, endpoint=endpoint), timeout=timeout)
        return Path(hf_hub_download(repo_id, CONFIG_FILE, cache_dir=hub_cache_dir(), endpoint=endpoint,
                                    etag_timeout=timeout))
    except HfHubHTTPError as e:
        raise _refused(repo_id, endpoint, e) from None
    except HTTPError as e:  # the HTTP client's own errors: timeouts, refused or reset connections
        if "Timeout" in type(e).__name__:
            raise _not_fetched(repo_id, f"the hub ({endpoint}) did not answer within {timeout:g} s "
                                        "(HF_HUB_ETAG_TIMEOUT sets how long to wait)") from None
        raise _not_fetched(repo_id, f"fetching its config.json from {endpoint} failed ({brief(e)})") from None


def metadata_timeout() -> float:
    """Seconds to wait for the hub's answer: huggingface_hub's own setting, read now."""
    from huggingface_hub import constants

    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT)
    except ValueError:
        return float(constants.DEFAULT_ETAG_TIMEOUT)


def _not_fetched(repo_id: str, why: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"{repo_id}: its config.json is not in the local HF cache ({hub_cache_dir()}) and {why}; plan from a "
        f"catalog alias instead ({catalog_hint()}), or fetch the model's config.json where there is a "
        f"network and give its path (--model PATH/config.json, or the folder that holds it)")


def _refused(repo_id: str, endpoint: str, e: Any) -> UnsupportedModel:
    """The hub answered with an error for the repo's config.json: what it means and what to do."""
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    status = _status(e)
    if isinstance(e, GatedRepoError):  # a kind of RepositoryNotFoundError: ask first
        why = (f"{repo_id} is gated on {endpoint}: accept its terms on the model's page, then set HF_TOKEN to a "
               "token of that account")
    elif isinstance(e, RemoteEntryNotFoundError):
        why = f"{repo_id} on {endpoint} has no config.json (is it a transformers model?)"
    elif isinstance(e, RepositoryNotFoundError) or status in (401, 404):
        why = (f"no model {repo_id} on {endpoint} (check the org/name spelling; a private model needs HF_TOKEN set "
               "to a token that can read it)")
    else:
        why = f"{endpoint} answered HTTP {status} for {repo_id}'s config.json; try again later"
    return UnsupportedModel(f"{repo_id}: {why}; or plan from a catalog alias ({catalog_hint()}) or a local "
                            "folder / config.json")


def _status(e: Any) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


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
