"""Load tokenizer and model with safe defaults: safetensors only, no remote code."""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    # CPU matmuls in bf16 are slower than fp32 on most laptop CPUs; GPUs want bf16.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UsageError(f"model.source: cannot load the tokenizer of {path}: {e}".splitlines()[0]) from None
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
    except OSError as e:
        raise UsageError(f"model.source: cannot load {path}: {e}".splitlines()[0]) from None
    if not quantize_4bit:
        model.to(device)
    return model


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
