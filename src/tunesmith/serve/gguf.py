"""`export --gguf f16|q8_0`: the merged model as one GGUF file for llama.cpp and Ollama, and its check.

`write_gguf` reads the merged folder export has just written (safetensors shards, config,
tokenizer, generation config) and streams it, one tensor at a time, into DIR/<name>-<type>.gguf
with the `gguf` package's writer: llama.cpp's metadata keys, its tensor names (gguf's own name
map), its layout for the rotary heads of llama-family q/k projections, and the byte-level BPE
tokenizer with the chat template the model was trained with.

`check_gguf` loads the file back through transformers' GGUF loader, model and tokenizer from the
.gguf alone, and answers the held-out prompts export already checks. What must hold exactly, or
the export fails and leaves nothing: the chat template round-trips, the GGUF's tokenizer encodes
every check prompt to the same ids as the run's tokenizer, and its EOS is the trained end-of-turn
token. What is counted, not enforced: how many greedy answers equal the merged folder's; f16 and
q8_0 round the weights, so an answer may legitimately change where two tokens were nearly tied.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from tunesmith.errors import TunesmithError, UsageError

TYPES = ("f16", "q8_0")
# transformers class -> llama.cpp architecture. Mistral is a llama in llama.cpp's eyes (same
# tensors, same rotary layout); Qwen2 adds q/k/v biases and rotates halves (no row permutation).
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
PERMUTES_ROTARY_ROWS = {"llama"}
FILE_TYPE = {"f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16 / _Q8_0: what `general.file_type` says

# llama.cpp names the pre-tokenizer (how text is split before BPE merges) instead of storing it.
# The two regexes are those of Llama 3 and Qwen2's tokenizer.json files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}

# llama.cpp's token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class Plan:
    """What the file will say, settled before anything is written (every refusal happens here)."""

    arch: str
    config: Any  # transformers PretrainedConfig of the merged folder
    tokenizer: Any
    eos_id: int
    pre: str


def gguf_name(run_dir: Path, kind: str) -> str:
    """<run folder's name>-<type>.gguf (resolved: `export .` names the folder, not "")."""
    return f"{run_dir.resolve().name}-{kind}.gguf"


def check_type(kind: str | None, *, adapter_only: bool) -> None:
    """The --gguf value and its company, checked before any model is loaded."""
    if kind is None:
        return
    if kind not in TYPES:
        raise UsageError(f"--gguf {kind}: not a GGUF type tunesmith writes; use one of {', '.join(TYPES)} "
                         f"(f16: 16-bit weights; q8_0: 8-bit, about half the size)")
    if adapter_only:
        raise UsageError("--gguf with --adapter-only: a GGUF file holds a whole model, not an adapter; "
                         "drop --adapter-only to write the merged model and its GGUF")


def check_architecture(config: dict[str, Any], where: str) -> str:
    """The llama.cpp architecture for a config.json, or one UsageError naming those supported."""
    names = config.get("architectures") or []
    arch = ARCHITECTURES.get(names[0]) if names else None
    if arch is None:
        raise UsageError(f"--gguf: {where} is a {names[0] if names else 'model of unknown architecture'}; tunesmith "
                         f"writes GGUF for {', '.join(ARCHITECTURES)} only; export without --gguf and convert the "
                         f"folder with llama.cpp's convert_hf_to_gguf.py")
    scaling = _rope(config)
    if scaling.get("rope_type", "default") != "default":
        raise UsageError(f"--gguf: {where} uses {scaling['rope_type']} rotary scaling, which tunesmith does not write "
                         f"into GGUF yet; export without --gguf and convert the folder with llama.cpp's "
                         f"convert_hf_to_gguf.py")
    return arch


def check_exportable(config: dict[str, Any], tokenizer: Any) -> str:
    """Every refusal that needs only the base's config and the run's tokenizer: run before the
    merge, so a model tunesmith cannot write as GGUF costs nothing. Returns the llama.cpp
    architecture."""
    arch = check_architecture(config, "the base model")
    _pre_name(tokenizer)
    if not isinstance(tokenizer.chat_template, str) or not tokenizer.chat_template:
        raise UsageError("--gguf: the run's tokenizer has no single chat template to write into the GGUF file")
    return arch


def plan_gguf(folder: Path, tokenizer: Any) -> Plan:
    from transformers import AutoConfig

    arch = check_exportable(json.loads((folder / "config.json").read_text(encoding="utf-8")), tokenizer)
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    stops = generation.get("eos_token_id")
    stops = stops if isinstance(stops, list) else [stops]
    # The end-of-turn token training taught is the tokenizer's EOS, and export's generation
    # config names it; a GGUF has room for one EOS, and llama.cpp stops there.
    if tokenizer.eos_token_id not in stops:
        raise TunesmithError(f"--gguf: the exported generation_config.json stops at {stops}, not at the trained "
                             f"end-of-turn token {tokenizer.eos_token_id} (please report this: it is a bug)")
    return Plan(arch, AutoConfig.from_pretrained(str(folder)), tokenizer, tokenizer.eos_token_id, _pre_name(tokenizer))


# ---------------------------------------------------------------- writing


def write_gguf(folder: Path, path: Path, kind: str, plan: Plan, name: str) -> None:
    """Stream the merged folder's tensors into `path`: header, metadata and tensor table first
    (sizes are known from shapes alone), then one tensor at a time, so a 7B model never sits
    in memory twice."""
    import gguf

    writer = gguf.GGUFWriter(str(path), plan.arch)
    _add_model_metadata(writer, plan, kind, name)
    _add_tokenizer(writer, plan)
    tensors = list(_named_tensors(folder, plan))
    for gguf_key, _hf_key, shape, _read in tensors:
        qtype = _tensor_type(kind, shape)
        block, size = gguf.GGML_QUANT_SIZES[qtype]  # (1, 4) for F32, (1, 2) for F16, (32, 34) for Q8_0
        # The writer takes a quantised tensor's shape in bytes per row, as its data will have it.
        stored = (gguf.quant_shape_to_byte_shape(shape, qtype), np.uint8) if block > 1 else (shape, np.float32)
        writer.add_tensor_info(gguf_key, stored[0], np.dtype(stored[1]), int(np.prod(shape)) // block * size,
                               raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _gguf_key, hf_key, shape, read in tensors:
        writer.write_tensor_data(_encode(_for_llama_cpp(read(), hf_key, plan), _tensor_type(kind, shape)))
    writer.close()


def _add_model_metadata(writer: Any, plan: Plan, kind: str, name: str) -> None:
    c = plan.config
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(FILE_TYPE[kind])
    writer.add_quantization_version(2)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(_rope(c.to_dict())["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // heads:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer(writer: Any, plan: Plan) -> None:
    tok = plan.tokenizer
    tokens, types = _vocabulary(tok, plan.config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(plan.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tok))
    bos = tok.bos_token_id if tok.bos_token_id is not None else getattr(plan.config, "bos_token_id", None)
    if bos is not None:
        writer.add_bos_token_id(int(bos))
    writer.add_eos_token_id(plan.eos_id)
    writer.add_eot_token_id(plan.eos_id)
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(tok.unk_token_id)
    plain, marked = tok.encode("a", add_special_tokens=False), tok.encode("a")
    writer.add_add_bos_token(len(marked) > len(plain) and marked[0] == bos)
    writer.add_add_eos_token(len(marked) > len(plain) and marked[-1] == tok.eos_token_id)
    writer.add_chat_template(tok.chat_template)


def _vocabulary(tok: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id up to the embedding's row count: the tokenizer's tokens, then placeholders where
    the model has more rows than the tokenizer has tokens (Qwen2.5 pads to a multiple of 128)."""
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if len(by_id) > vocab_size or max(by_id) >= vocab_size:
        raise TunesmithError(f"--gguf: the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} "
                             f"embedding rows (please report this: it is a bug)")
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def _backend(tok: Any) -> dict[str, Any]:
    return json.loads(tok.backend_tokenizer.to_str())


def _merges(tok: Any) -> list[str]:
    merges = _backend(tok)["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _pre_name(tok: Any) -> str:
    """llama.cpp's name for how this tokenizer splits text, or one UsageError."""
    spec = _backend(tok)
    model, pre = spec.get("model", {}), spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _byte_level(pre):
        raise UsageError("--gguf: tunesmith writes byte-level BPE tokenizers (Llama 3, SmolLM2, Qwen2) only; this "
                         "run's is a sentencepiece-style one: export without --gguf and convert the folder with "
                         "llama.cpp's convert_hf_to_gguf.py")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = SPLIT_NAMES.get(steps[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise UsageError("--gguf: the run's tokenizer splits text in a way tunesmith cannot name for llama.cpp; "
                     "export without --gguf and convert the folder with llama.cpp's convert_hf_to_gguf.py")


def _byte_level(pre: dict[str, Any]) -> bool:
    return pre.get("type") == "ByteLevel" or any(s.get("type") == "ByteLevel" for s in pre.get("pretokenizers", []))


def _named_tensors(folder: Path, plan: Plan) -> Iterator[tuple[str, str, tuple[int, ...], Callable[[], torch.Tensor]]]:
    """(gguf name, transformers name, shape, reader) for every tensor llama.cpp wants, in file order."""
    import gguf
    from safetensors import safe_open

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == plan.arch)
    names = gguf.get_tensor_name_map(arch, plan.config.num_hidden_layers)
    tied = bool(getattr(plan.config, "tie_word_embeddings", False))
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        for key, shape in shapes.items():
            if tied and key == "lm_head.weight":
                continue  # llama.cpp reuses token_embd when there is no output.weight
            mapped = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise TunesmithError(f"--gguf: no llama.cpp name for tensor {key} of {shard.name} (please report "
                                     f"this: it is a bug)")
            yield mapped, key, shape, _reader(shard, key)


def _reader(shard: Path, key: str) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as f:
            return f.get_tensor(key)

    return read


def _for_llama_cpp(tensor: torch.Tensor, key: str, plan: Plan) -> np.ndarray:
    """float32 numpy, with llama.cpp's row order for the rotary heads of q and k."""
    tensor = tensor.float()
    if plan.arch in PERMUTES_ROTARY_ROWS:
        c = plan.config
        if key.endswith("self_attn.q_proj.weight"):
            tensor = interleave_rotary_rows(tensor, c.num_attention_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            tensor = interleave_rotary_rows(tensor, c.num_key_value_heads or c.num_attention_heads)
    return tensor.contiguous().numpy()


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates the two halves of each head (x[:d/2], x[d/2:]); llama.cpp's llama
    rotates adjacent pairs (x[0], x[1]). Reorder each head's output rows half-major -> pair-major
    so llama.cpp's rotation acts on the same pairs; transformers' GGUF loader undoes it."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tensor_type(kind: str, shape: tuple[int, ...]) -> Any:
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return q.F32  # norms and biases: tiny, and llama.cpp keeps them 32-bit
    if kind == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return q.Q8_0
    return q.F16  # f16, and rows Q8_0's 32-wide blocks do not divide (llama.cpp does the same)


def _encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(array, qtype)


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rotary settings in `rope_parameters`; older configs in rope_theta/rope_scaling."""
    rope = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    rope.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


# ---------------------------------------------------------------- loading it back


# The file's folder holds the merged model too: `gguf_file` makes transformers read only the file.


def load_gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf_model(path: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """De-quantised to `dtype` (the run's): the check compares the file's weights, not a 16-bit
    CPU matmul."""
    from transformers import AutoModelForCausalLM

    # The loader draws its own tqdm bar on stderr, outside transformers' progress-bar switch.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.to(device)


def check_tokenizer(loaded: Any, trained: Any, prompts: list[list[int]], encoded: list[list[int]], path: Path) -> None:
    """The exact part of the check: same chat template, same ids for every check prompt, same EOS."""
    problem = None
    if loaded.chat_template != trained.chat_template:
        problem = "its chat template differs from the one the model was trained with"
    elif loaded.eos_token_id != trained.eos_token_id:
        problem = (f"its EOS is token {loaded.eos_token_id}, not the trained end-of-turn token "
                   f"{trained.eos_token_id}")
    else:
        for n, (want, got) in enumerate(zip(prompts, encoded), 1):
            if want != got:
                problem = f"its tokenizer encodes check prompt {n} to other ids than the run's tokenizer does"
                break
    if problem:
        raise TunesmithError(f"--gguf check failed: {path.name} loaded back through transformers: {problem}; "
                             f"nothing was written (please report this: it is a bug)")
