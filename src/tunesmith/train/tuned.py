"""The trained model of a run, for the stages after training (eval, and later export/serve):
the saved adapter (RUN/adapter, RUN/model for full fine-tuning) or any checkpoint's weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.models.encode import ensure_chat_template
from tunesmith.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.source import resolve_source
from tunesmith.train.checkpoint import STEP_NAME, Checkpoint, CorruptCheckpoint, checkpoint_dir, list_checkpoints
from tunesmith.train.checkpoint import load_weights, read_checkpoint


@dataclass
class BaseSource:
    """Where a run's base model is and how to load it here: the tokenizer training used (with
    the chat template it trained on), the device and the dtype."""

    path: str
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype


def base_source(cfg: RunConfig) -> BaseSource:
    return load_base_source(resolve_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code),
                            cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)


def load_base_source(path: str, dtype: str, *, trust_remote_code: bool = False) -> BaseSource:
    """The base at a resolved `path` with the tokenizer training used and model.dtype `dtype`
    resolved for this machine's device."""
    device = pick_device()
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)  # as training did: a base model without one was trained on ChatML
    return BaseSource(path, tokenizer, device, pick_dtype(dtype, device))


def find_checkpoint(run_dir: Path, ref: str) -> Checkpoint:
    """`40`, `step-000040` or a checkpoint folder -> that checkpoint, checked against its hashes."""
    text = ref.strip()
    if text.isdigit():
        folder = checkpoint_dir(run_dir, int(text))
    elif STEP_NAME.match(text) and not Path(text).exists():
        folder = run_dir / "checkpoints" / text
    else:
        folder = Path(text)
    if not (folder / "state.json").is_file():
        steps = [str(int(STEP_NAME.match(p.name).group(1))) for p in list_checkpoints(run_dir)]
        have = f"this run has steps {', '.join(steps)}" if steps else "this run has no checkpoints"
        raise UsageError(f"--checkpoint {ref}: no checkpoint at {folder} ({have}); give a step number or a "
                         f"RUN/checkpoints/step-NNNNNN folder")
    try:
        return read_checkpoint(folder)
    except CorruptCheckpoint as e:
        raise TunesmithError(f"--checkpoint {ref}: checkpoint {e}; pick another step") from None


def lora_config(cfg: RunConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.method.r, lora_alpha=cfg.method.alpha, lora_dropout=cfg.method.dropout,
                      target_modules=cfg.method.target_modules, task_type="CAUSAL_LM")


def load_tuned(cfg: RunConfig, run_dir: Path, base: Any, path: str, *, dtype: torch.dtype, device: torch.device,
               checkpoint: Checkpoint | None = None, adapter_dir: Path | None = None) -> Any:
    """The tuned model. LoRA/QLoRA: `base` wrapped with the adapter (the base answers come from
    the same object with the adapter switched off, so one copy of the weights is in memory),
    RUN/adapter unless `adapter_dir` names another copy. Full fine-tuning: a second model;
    `base` is left as it is."""
    if cfg.method.name == "full":
        if checkpoint is None:
            return _saved_full_model(run_dir, dtype, device)
        tuned = load_model(path, dtype=dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
        load_weights(tuned, checkpoint.weights(), checkpoint.path.name)
        return tuned
    from peft import PeftModel, get_peft_model

    if checkpoint is None:
        adapter = adapter_dir or run_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise TunesmithError(f"{adapter} not found: the run has no trained adapter yet")
        return PeftModel.from_pretrained(base, str(adapter))
    tuned = get_peft_model(base, lora_config(cfg))
    load_weights(tuned, checkpoint.weights(), checkpoint.path.name)
    return tuned


def _saved_full_model(run_dir: Path, dtype: torch.dtype, device: torch.device) -> Any:
    tuned_dir = run_dir / "model"
    if not (tuned_dir / "config.json").is_file():
        raise TunesmithError(f"{tuned_dir} not found: the run has no trained model yet")
    return load_model(str(tuned_dir), dtype=dtype, device=device)
