"""`tunesmith export RUN --out DIR`: the run's trained model as a folder plain transformers loads.

LoRA: the adapter merged into the base (`merge_and_unload`), saved as sharded safetensors.
QLoRA: merged into the 16-bit base; the adapter was trained against the 4-bit weights, so
greedy answers can differ from those of the trained model, and the check counts how many do.
Full fine-tuning: RUN/model re-saved through transformers. --adapter-only: the adapter
folder, no merge. Merged and full exports carry the run's model card (README.md) for weights
that load with plain transformers.

RUN may also be an adapter folder alone (copied from a run, or written by --adapter-only) on
a machine that never saw the run: its tunesmith.json names the base, and with no held-out rows
the check asks the first prompts of the general set (eval/general_set.jsonl).

Every export carries the tokenizer with the chat template the model was trained with, a
generation_config.json whose eos_token_id is the end-of-turn token training taught, and
DIR/export.json: how many greedy answers of the folder, loaded back the way a user loads it,
equal those of the run's model on the first held-out prompts. DIR appears whole or not at
all: a LoRA export whose answers differ is an error and leaves nothing behind.
--gguf f16|q8_0 adds DIR/<run>-<type>.gguf, written and checked by serve/gguf.py inside the
same atomic fill, with its own record under "gguf" in export.json.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tunesmith.config import RunConfig, build_config, load_run_config
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.eval.cases import held_out_cases
from tunesmith.eval.general import load_general_set
from tunesmith.eval.generate import answer_budget, generate_greedy
from tunesmith.io import check_output_dir, file_sha256, write_dir_atomic, write_json_atomic, write_text_atomic
from tunesmith.models.card import MANIFEST, adapter_origin, exported_card
from tunesmith.models.encode import prompt_ids
from tunesmith.models.generation import stop_ids
from tunesmith.models.load import load_model
from tunesmith.serve import gguf
from tunesmith.train.tuned import base_source, load_tuned

MARKER = "export.json"
PORTABLE_FILES = ("adapter_config.json", "tunesmith.json", "README.md")  # also says which run an existing DIR was exported from
CHECK_PROMPTS = 8
# Shards small enough for an upload that resumes per file and for a 32-bit loader; the
# index file lets a loader read one shard at a time.
MAX_SHARD = "2GB"


@dataclass
class Loaded:
    """What the export and its check share: the run's config, where the base is, the tokenizer
    training used, and the check's prompts."""

    cfg: RunConfig
    run_dir: Path  # the run folder, or the adapter folder given alone
    adapter_dir: Path  # RUN/adapter (RUN/model for full fine-tuning), or the adapter folder given
    from_run: bool  # False: an adapter folder alone, no run files beside it
    path: str
    tokenizer: Any
    messages: list[list[dict[str, str]]]
    max_new_tokens: int
    device: torch.device
    dtype: torch.dtype


def export_run(run_dir: str | Path, out_dir: str | Path, *, adapter_only: bool = False, check: int = CHECK_PROMPTS,
               gguf_type: str | None = None, on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write DIR (atomically) and return what DIR/export.json says."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    gguf.check_type(gguf_type, adapter_only=adapter_only)
    cfg = export_config(run_dir)
    check_target(run_dir, out_dir)
    if adapter_only and cfg.method.name == "full":
        raise UsageError(f"--adapter-only: {run_dir} was trained with method full and has no adapter; "
                         f"export it without --adapter-only")
    loaded = prepare(cfg, run_dir, check)
    if gguf_type:  # refused before the merge, not after it
        gguf.check_exportable(_base_config(loaded), loaded.tokenizer)
    note = on_note or (lambda _text: None)
    if cfg.method.name == "qlora" and not adapter_only:
        note("QLoRA: the adapter is merged into the 16-bit base; it was trained against the 4-bit weights, "
             "so greedy answers can differ from the trained model's (the check counts them)")

    record: dict[str, Any] = {"run": str(run_dir.resolve()), "method": cfg.method.name}

    def fill(folder: Path) -> None:
        if adapter_only:
            result, reference = _export_adapter(loaded, folder)
        elif cfg.method.name == "full":
            result, reference = _export_full(loaded, folder)
        else:
            result, reference = _export_merged(loaded, folder, note)
        record.update(result)
        record.update({"base": cfg.model.source, "dtype": str(loaded.dtype).removeprefix("torch.")})
        if record["identical"] != record["checked"] and cfg.method.name != "qlora":
            raise TunesmithError(f"export check failed: greedy answers of the exported folder equal those of "
                                 f"{record['against']} on {record['identical']} of {record['checked']} held-out "
                                 f"prompts; nothing was written to {out_dir} (please report this: it is a bug)")
        if gguf_type:
            record["gguf"] = _export_gguf(loaded, folder, gguf_type, reference)
        write_json_atomic(folder / MARKER, record)

    write_dir_atomic(out_dir, fill)
    return record


def check_target(run_dir: Path, out_dir: Path) -> None:
    """DIR must be new, empty, or an earlier export of this same run (which it replaces)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and exported_from(out_dir) != str(run_dir.resolve()):
        raise UsageError(f"--out {out_dir}: is not empty and is not an earlier export of {run_dir} (no {MARKER} "
                         f"naming that run): choose a new or empty folder; export replaces only its own exports")
    check_output_dir(out_dir, "--out")


def exported_from(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / MARKER).read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def export_config(path: Path) -> RunConfig:
    """The run's config; for an adapter folder alone, the defaults with the base and the method
    its tunesmith.json names (PEFT's adapter_config.json holds the rest)."""
    if (path / "config.yaml").is_file() or not (path / "adapter_config.json").is_file():
        return load_run_config(path)
    base, method, _run = adapter_origin(path)
    return build_config({"model": {"source": base}, "method": {"name": method}}, where=str(path / MANIFEST))


def prepare(cfg: RunConfig, run_dir: Path, check: int) -> Loaded:
    src = base_source(cfg)
    from_run = (run_dir / "config.yaml").is_file()
    if from_run:
        cases = held_out_cases(run_dir, cfg)[:check] if check else []
        messages = [c.messages for c in cases]
        references = [c.reference for c in cases]
    else:
        messages = [[{"role": "user", "content": item["prompt"]}] for item in load_general_set()[:check]]
        references = []
    max_new = answer_budget(src.tokenizer, references, cfg.eval.max_new_tokens)
    weights = run_dir if not from_run else run_dir / ("model" if cfg.method.name == "full" else "adapter")
    return Loaded(cfg, run_dir, weights, from_run, src.path, src.tokenizer, messages, max_new, src.device, src.dtype)


# ---------------------------------------------------------------- the three kinds of export


def _export_merged(loaded: Loaded, folder: Path, note: Callable[[str], None]) -> tuple[dict[str, Any], list[str]]:
    cfg = loaded.cfg
    if cfg.method.name == "qlora" and loaded.device.type == "cuda":
        # The reference is the model as trained: the adapter on the 4-bit base. It is freed
        # before the 16-bit base is loaded, so the two never share the GPU.
        base4 = _base(loaded, quantize_4bit=True)
        reference = _answers(loaded, load_tuned(cfg, loaded.run_dir, base4, loaded.path, dtype=loaded.dtype,
                                                device=loaded.device, adapter_dir=loaded.adapter_dir))
        against = "the 4-bit base + adapter"
        del base4
        _free()
        tuned = load_tuned(cfg, loaded.run_dir, _base(loaded), loaded.path, dtype=loaded.dtype, device=loaded.device,
                           adapter_dir=loaded.adapter_dir)
    else:
        tuned = load_tuned(cfg, loaded.run_dir, _base(loaded), loaded.path, dtype=loaded.dtype, device=loaded.device,
                           adapter_dir=loaded.adapter_dir)
        reference = _answers(loaded, tuned)
        against = "base + adapter"
        if cfg.method.name == "qlora":
            note("no CUDA GPU: the check compares with the adapter on the 16-bit base, not on the 4-bit weights "
                 "it was trained with")
    merged = tuned.merge_and_unload()
    del tuned
    _save_model(loaded, merged, folder)
    del merged
    _free()
    return {"merged": True, **_check_folder(loaded, folder, reference), "against": against}, reference


def _export_full(loaded: Loaded, folder: Path) -> tuple[dict[str, Any], list[str]]:
    tuned = load_tuned(loaded.cfg, loaded.run_dir, None, loaded.path, dtype=loaded.dtype, device=loaded.device)
    reference = _answers(loaded, tuned)
    _save_model(loaded, tuned, folder)
    del tuned
    _free()
    return {"merged": False, **_check_folder(loaded, folder, reference), "against": "RUN/model"}, reference


def _export_adapter(loaded: Loaded, folder: Path) -> tuple[dict[str, Any], list[str]]:
    from peft import PeftModel

    tuned = load_tuned(loaded.cfg, loaded.run_dir, _base(loaded), loaded.path, dtype=loaded.dtype,
                       device=loaded.device, adapter_dir=loaded.adapter_dir)
    reference = _answers(loaded, tuned)
    tuned.save_pretrained(folder, safe_serialization=True)
    # peft writes the base's local cache path and an empty card: the run's adapter folder has the
    # portable config (the base as the user named it), its record and the model card.
    for name in PORTABLE_FILES:
        if (loaded.adapter_dir / name).is_file():
            shutil.copy2(loaded.adapter_dir / name, folder / name)
    generation = copy.deepcopy(tuned.base_model.model.generation_config)
    generation.eos_token_id = stop_ids(tuned, loaded.tokenizer)
    generation.pad_token_id = loaded.tokenizer.pad_token_id
    generation.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    base = tuned.unload()  # the base without the adapter layers (nothing merged): reused for the check
    del tuned
    checked = PeftModel.from_pretrained(base, str(folder))
    tokenizer = _saved_tokenizer(loaded, folder)
    said = _answers(loaded, checked, tokenizer)
    del checked, base
    _free()
    return {"merged": False, **_count(reference, said), "against": "base + adapter"}, reference


def _export_gguf(loaded: Loaded, folder: Path, kind: str, reference: list[str]) -> dict[str, Any]:
    """DIR/<run>-<type>.gguf from the merged folder just written, loaded back and checked
    (see serve/gguf.py for what must hold exactly and what is only counted)."""
    # Written and checked in a folder of its own: beside the merged folder's config and tokenizer
    # files, transformers would read those instead of the GGUF's metadata.
    alone = folder / ".gguf-check"
    alone.mkdir()
    path = alone / gguf.gguf_name(loaded.run_dir, kind)
    gguf.write_gguf(folder, path, kind, gguf.plan_gguf(folder, loaded.tokenizer), loaded.run_dir.resolve().name)
    record: dict[str, Any] = {"file": path.name, "type": kind, "bytes": path.stat().st_size, "checked": 0,
                              "identical": 0}
    tokenizer = gguf.load_gguf_tokenizer(path)
    gguf.check_tokenizer(tokenizer, loaded.tokenizer, [prompt_ids(loaded.tokenizer, m) for m in loaded.messages],
                         [prompt_ids(tokenizer, m) for m in loaded.messages], path)
    if loaded.messages:
        model = gguf.load_gguf_model(path, loaded.dtype, loaded.device)
        record.update(_count(reference, _answers(loaded, model, tokenizer)))
        del model
        _free()
    record["sha256"] = file_sha256(path)
    path.rename(folder / path.name)
    alone.rmdir()
    return record


def _base_config(loaded: Loaded) -> dict[str, Any]:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(loaded.path, trust_remote_code=loaded.cfg.model.trust_remote_code).to_dict()


# ---------------------------------------------------------------- helpers


def _base(loaded: Loaded, quantize_4bit: bool = False) -> Any:
    return load_model(loaded.path, dtype=loaded.dtype, device=loaded.device, quantize_4bit=quantize_4bit,
                      trust_remote_code=loaded.cfg.model.trust_remote_code)


def _save_model(loaded: Loaded, model: Any, folder: Path) -> None:
    """Weights (safetensors: transformers 5 writes nothing else), config, the generation config
    that stops at the trained end-of-turn token, and the tokenizer with its chat template."""
    model.generation_config.eos_token_id = stop_ids(model, loaded.tokenizer)
    model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    model.save_pretrained(folder, max_shard_size=MAX_SHARD)
    loaded.tokenizer.save_pretrained(folder)
    # Where the weights came from (the base as named, its file hashes, the review), and the run's
    # card rewritten for weights that load without peft. An adapter folder alone has no run files
    # to build a card from: only its record travels.
    if (loaded.adapter_dir / MANIFEST).is_file():
        shutil.copy2(loaded.adapter_dir / MANIFEST, folder / MANIFEST)
    if loaded.from_run:
        write_text_atomic(folder / "README.md", exported_card(loaded.run_dir))


def _check_folder(loaded: Loaded, folder: Path, reference: list[str]) -> dict[str, Any]:
    """Load DIR the way a user would (plain transformers, no peft) and answer the same prompts."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto").to(loaded.device)
    if model.dtype != loaded.dtype:
        raise TunesmithError(f"export check failed: {folder} loads as {model.dtype}, the run's model is "
                             f"{loaded.dtype} (please report this: it is a bug)")
    said = _answers(loaded, model, _saved_tokenizer(loaded, folder))
    del model
    _free()
    return _count(reference, said)


def _saved_tokenizer(loaded: Loaded, folder: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.chat_template != loaded.tokenizer.chat_template:
        raise TunesmithError(f"export check failed: the tokenizer saved in {folder} lost the chat template the "
                             f"model was trained with (please report this: it is a bug)")
    return tokenizer


def _answers(loaded: Loaded, model: Any, tokenizer: Any = None) -> list[str]:
    tokenizer = tokenizer or loaded.tokenizer
    if not loaded.messages:
        return []
    prompts = [prompt_ids(tokenizer, messages) for messages in loaded.messages]
    return generate_greedy(model, tokenizer, prompts, max_new_tokens=loaded.max_new_tokens,
                           batch_size=loaded.cfg.eval.batch_size)


def _count(reference: list[str], said: list[str]) -> dict[str, int]:
    return {"checked": len(reference), "identical": sum(a == b for a, b in zip(reference, said))}


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
