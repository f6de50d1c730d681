"""Load tokenizer and model with safe defaults: safetensors only, no remote code.

What transformers raises for a folder it cannot load (OSError, ValueError, a JSON error,
huggingface_hub's config validation, safetensors' header error) becomes one UsageError that
names the folder and what to do; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from tunesmith.errors import UsageError
from tunesmith.models.source import brief, has_tokenizer, refetch_hint, weights_problem

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    # A CPU stays fp32 unless asked: bf16 is faster only where the CPU has native bf16
    # (the pre-flight's bf16 item), and fp32 gives the same numbers on every machine.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as e:
        raise UsageError(_tokenizer_problem(path, e)) from None
    if tokenizer.pad_token_id is None:
        # Padding positions are never trained or attended to, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantize_4bit: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if quantize_4bit:
        kwargs["quantization_config"] = _nf4_config(dtype, device)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as e:
        raise UsageError(f"{path}: a .safetensors weights file is damaged or incomplete ({brief(e)}); "
                         f"{refetch_hint(Path(path), 'the weights')}") from None
    except (OSError, ValueError, KeyError, StrictDataclassError) as e:
        raise UsageError(_model_problem(path, e)) from None
    if not quantize_4bit:
        model.to(device)
    return model


def _tokenizer_problem(path: str, e: Exception) -> str:
    folder = Path(path)
    if folder.is_dir() and not has_tokenizer(folder):
        return f"{path}: has no tokenizer files (tokenizer.json, tokenizer_config.json, ...); " \
               f"{refetch_hint(folder, 'them')}"
    return f"{path}: cannot load the tokenizer ({brief(e)}); {_fix(folder, 'the tokenizer files')}"


def _model_problem(path: str, e: Exception) -> str:
    folder = Path(path)
    problem = weights_problem(folder) if folder.is_dir() else None
    if problem:
        return f"{path}: {problem}"
    return f"{path}: cannot load the model ({brief(e)}); {_fix(folder, 'the model files')}"


def _fix(folder: Path, what: str) -> str:
    if folder.is_dir():
        return refetch_hint(folder, what)
    return "check the hub id (a private or gated model needs `hf auth login` first)"


def _nf4_config(dtype: torch.dtype, device: torch.device) -> Any:
    if device.type != "cuda":
        raise UsageError("method.name = 'qlora' needs a CUDA GPU; on CPU use method.name=lora")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError("method.name = 'qlora' needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
