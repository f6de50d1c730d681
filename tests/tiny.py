"""A tiny random Llama and a small byte-level BPE tokenizer, built locally: no downloads.

Shape follows torchtune's MODEL_TEST_CONFIGS: 2 layers, width 64, GQA, tied embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Extract the order as JSON with keys name, city, item, quantity, color.",
    'Hi, this is Maria Lopez from Porto. Please send 3 blue kettles. {"name": "Maria Lopez"}',
    "The quick brown fox jumps over the lazy dog 0123456789 {}[]:,\"'",
    "system user assistant You are a helpful assistant. What is two plus two? Four.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tunesmith.models.encode import CHATML

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_tiny_model(folder: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def order_rows(n: int) -> list[dict]:
    """Small instruction/response rows in the demo's shape."""
    names = ["Ann", "Bob", "Cleo", "Dan", "Eve"]
    items = ["kettles", "mugs", "lamps", "chairs", "rugs", "clocks", "vases"]
    rows = []
    for i in range(n):  # every row distinct, and not a near-duplicate of another
        name, item, qty = names[i % len(names)], items[i % len(items)], i + 1
        rows.append({
            "instruction": "Extract the order as JSON.",
            "input": f"Hi, {name} here, send {qty} {item}.",
            "response": json.dumps({"name": name, "item": item, "quantity": qty}),
        })
    return rows
