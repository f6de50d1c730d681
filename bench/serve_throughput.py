"""How fast `tunesmith serve` answers, against transformers' own `generate` in the same process.

    python bench/serve_throughput.py [--tokens 64] [--repeats 3] [--out FILE]

The model is the demo's (smollm2-135m-instruct, fp32, CPU) with a LoRA adapter (r=16 on
q/k/v/o/gate/up/down, B initialised non-zero so the adapter changes every answer). Three ways
to greedy-decode the same prompt to exactly --tokens new tokens (EOS ignored):

- `hf_generate`: `PeftModel.generate(do_sample=False)`: the baseline;
- `engine`: tunesmith's token loop (serve/engine.py), no HTTP;
- `http`: the same through the real server on 127.0.0.1 and the official openai client,
  streamed, with the time to the first token.

Each is run once to warm up, then the three take turns --repeats times (so a change in the
machine's load hits all three alike), each in a worker thread as the server runs it; the
median counts. JSON on stdout: tokens/s of each and the ratios to hf_generate.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

PROMPT = [{"role": "user", "content": "Turn the customer message into JSON (keys: name, city, item, quantity, "
                                      "color).\n\nHi, it's Ana Ruiz from Lima. Two red mugs, please."}]
KEY = "bench-key-0123456789"


def write_adapter(folder: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.load import load_model
    from tunesmith.models.source import resolve_source

    base = load_model(resolve_source("smollm2-135m-instruct"), dtype=torch.float32, device=torch.device("cpu"))
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder)
    (folder / "tunesmith.json").write_text(json.dumps({"base": {"source": "smollm2-135m-instruct"},
                                                       "method": {"name": "lora"}, "run": "bench"}))


def in_thread(fn) -> float:
    """Seconds `fn` takes in a thread of its own: the server generates in one."""
    took: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        fn()
        took.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return took[0]


def take_turns(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each fn: one warm-up each, then round after round."""
    for fn in fns.values():
        in_thread(fn)
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(in_thread(fn))
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from tunesmith.serve.engine import Engine, Sampling
    from tunesmith.serve.sources import plan_serving

    n = args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "bench"
        write_adapter(adapter)
        engine = Engine(plan_serving([adapter]))
        engine.stop_ids = []  # exactly n tokens each way: no early EOS
        prompt = engine.chat_prompt(PROMPT)
        model = engine.models["bench"]
        model.set_adapter("bench")
        ids = torch.tensor([prompt])

        def hf() -> None:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
            assert out.shape[1] - ids.shape[1] == n

        def ours() -> None:
            assert engine.generate("bench", prompt, Sampling(max_tokens=n, temperature=0)).completion_tokens == n

        with serving(engine) as client:
            firsts: list[float] = []

            def streamed() -> None:
                started = time.perf_counter()
                first = None
                for chunk in client.chat.completions.create(model="bench", messages=PROMPT, temperature=0,
                                                            max_tokens=n, stream=True):
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
                firsts.append(first or 0.0)

            median = take_turns({"hf": hf, "engine": ours, "http": streamed}, args.repeats)
        hf_s, engine_s, http_s = median["hf"], median["engine"], median["http"]
        first_s = statistics.median(firsts[1:])

    result = {
        "model": "smollm2-135m-instruct + LoRA r16 (fp32, CPU)", "new_tokens": n, "prompt_tokens": len(prompt),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "tokens_per_s": {"hf_generate": round(n / hf_s, 2), "engine": round(n / engine_s, 2),
                         "http": round(n / http_s, 2)},
        "engine_vs_hf_generate": round(hf_s / engine_s, 3),
        "http_vs_hf_generate": round(hf_s / http_s, 3),
        "http_first_token_s": round(first_s, 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


@contextmanager
def serving(engine):
    """The real server on 127.0.0.1 in a thread, and an openai client for it."""
    import uvicorn
    from openai import OpenAI

    from tunesmith.serve.api import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(engine, KEY, 4), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key=KEY, max_retries=0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
