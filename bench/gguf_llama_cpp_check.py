"""Does llama.cpp read an exported GGUF as transformers reads the merged folder?

    pip install llama-cpp-python   # builds llama.cpp; not a tunesmith dependency
    tunesmith export RUN --out DIR --gguf f16
    python bench/gguf_llama_cpp_check.py DIR [--prompt TEXT]

llama.cpp is the consumer the file is for, so this checks what the export's own check
(transformers' GGUF loader) cannot: that llama.cpp tokenizes the chat prompt to the same ids,
knows the same EOS, and computes the same logits as the merged folder with its 2-D weights
rounded to f16 (what an f16 file holds). JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path, help="a folder written by `tunesmith export --gguf f16`")
    parser.add_argument("--prompt", default="Hi, Ann here, send 3 mugs.")
    args = parser.parse_args()

    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((args.folder / "export.json").read_text())
    gguf = args.folder / record["gguf"]["file"]
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2 and record["gguf"]["type"] == "f16":
                weight.copy_(weight.half().float())
    text = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                         add_generation_prompt=True)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, logits_all=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    expected_ids = tokenizer.encode(text, add_special_tokens=False)
    llm.eval(ids)
    with torch.no_grad():
        expected = model(torch.tensor([expected_ids])).logits[0]
    same = ids == expected_ids
    diff = (torch.tensor(llm.scores[: len(ids)]) - expected).abs().max().item() if same else None
    print(json.dumps({"file": gguf.name, "type": record["gguf"]["type"], "prompt_ids_equal": same,
                      "eos_equal": llm.token_eos() == tokenizer.eos_token_id, "max_logit_diff": diff,
                      "same_argmax": bool(same and torch.equal(torch.tensor(llm.scores[: len(ids)]).argmax(-1),
                                                                expected.argmax(-1)))}, indent=2))


if __name__ == "__main__":
    main()
