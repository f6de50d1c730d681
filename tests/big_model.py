"""A model folder that passes every file check but holds no real weights: Llama-3.1-70B's
config, the tiny test tokenizer, and a placeholder safetensors file. For tests of what
happens before (pre-flight) or instead of (out of memory) loading a model this size."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import build_tokenizer


def write_big_model_folder(folder: Path, alias: str = "llama-3.1-70b") -> Path:
    from safetensors.torch import save_file
    import torch

    from tunesmith.catalog.model_configs import catalog_entry

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(catalog_entry(alias)["config"]), encoding="utf-8")
    build_tokenizer().save_pretrained(folder)
    save_file({"placeholder": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder
