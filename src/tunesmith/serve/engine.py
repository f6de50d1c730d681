"""The models `tunesmith serve` answers with, and the one worker thread that runs them.

One copy of the base is in memory. Each LoRA/QLoRA adapter is loaded on it under its run's
name (peft's multi-adapter model) and chosen per request; "base" is the same weights with
the adapters switched off. A full fine-tune is a second model.

Generation is a plain token loop with the KV cache: greedy at temperature 0 (the same
forward passes as `generate(do_sample=False)`, so the answers equal what `tunesmith eval`
recorded), otherwise temperature and top-p sampling from a per-request generator, so a
`seed` reproduces an answer. It stops at the end-of-turn token training taught, at a stop
string (not returned, as in OpenAI's API) or at max_tokens.

The model is not thread-safe (the active adapter is global state), so one worker thread
runs one request at a time; requests wait in a bounded queue, and beyond it are refused
at once (`Busy`) instead of piling up until clients time out.
"""

from __future__ import annotations

import inspect
import math
import queue
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from tunesmith.models.encode import prompt_ids
from tunesmith.models.generation import stop_ids
from tunesmith.models.load import load_model
from tunesmith.serve.sources import BASE_NAME, Plan, Source
from tunesmith.train.tuned import load_base_source


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class Engine:
    """The loaded models and the tokenizer training used; `generate` is called from one thread."""

    def __init__(self, plan: Plan, on_note: Callable[[str], None] | None = None) -> None:
        note = on_note or (lambda _text: None)
        self.plan = plan
        src = load_base_source(plan.base_path, plan.dtype, trust_remote_code=plan.trust_remote_code)
        self.device, self.dtype, self.tokenizer = src.device, src.dtype, src.tokenizer
        base = load_model(plan.base_path, dtype=self.dtype, device=self.device,
                          trust_remote_code=plan.trust_remote_code)
        self.context = int(getattr(base.config, "max_position_embeddings", 0) or 0) or None
        self.stop_ids = stop_ids(base, self.tokenizer)
        self.cache_arg = cache_argument(base)
        if any(s.method == "qlora" for s in plan.sources):
            note(f"QLoRA adapters are served on the {str(self.dtype).removeprefix('torch.')} base, not on the 4-bit "
                 f"weights they were trained with: answers can differ a little from the trained model's")
        self.models: dict[str, Any] = {}
        self.base = _with_adapters(base, [s for s in plan.sources if s.kind == "adapter"])
        for s in plan.sources:
            self.models[s.name] = self.base if s.kind == "adapter" else self._whole_model(s)
        self.models[BASE_NAME] = self.base
        for model in self.models.values():
            model.eval()

    @property
    def names(self) -> list[str]:
        return self.plan.names

    def _whole_model(self, source: Source) -> Any:
        return load_model(str(source.folder), dtype=self.dtype, device=self.device,
                          trust_remote_code=source.trust_remote_code)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's tokens as eval builds them: the chat template training used, then the
        generation prompt."""
        return prompt_ids(self.tokenizer, messages)

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]  # with BOS where the tokenizer adds one, as vLLM does

    @contextmanager
    def selected(self, name: str) -> Iterator[Any]:
        """The model that answers as `name`, with the right adapter (or none) switched on."""
        model = self.models[name]
        if name == BASE_NAME and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield model
            return
        if hasattr(model, "set_adapter") and name in getattr(model, "peft_config", {}):
            model.set_adapter(name)
        yield model

    @torch.no_grad()
    def generate(self, name: str, prompt: list[int], sampling: Sampling,
                 on_text: Callable[[str], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> Result:
        """Answer `prompt` as model `name`; `on_text` gets the text as it grows (never a part of a
        stop string, never half a character)."""
        text = StopText(self.tokenizer, sampling.stop)
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        emit = on_text or (lambda _delta: None)
        produced = 0
        finish = "length"
        with self.selected(name) as model:
            ids = torch.tensor([prompt], device=self.device)
            cache: dict[str, Any] = {}
            for _ in range(sampling.max_tokens):
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache)
                cache = {self.cache_arg: getattr(out, self.cache_arg)}
                token = pick_token(out.logits[0, -1], sampling, generator)
                produced += 1
                if token in self.stop_ids:
                    finish = "stop"
                    break
                delta, stopped = text.add(token)
                if delta:
                    emit(delta)
                if stopped:
                    finish = "stop"
                    break
                if cancelled():
                    break
                ids = torch.tensor([[token]], device=self.device)
        rest = text.flush()
        if rest:
            emit(rest)
        return Result(text.final(), finish, len(prompt), produced)


def cache_argument(model: Any) -> str:
    """The KV cache's keyword: transformers 5.24 renamed `past_key_values` to `cache` (the old
    name warns, and goes in 5.40); older 5.x releases know only the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _with_adapters(base: Any, adapters: list[Source]) -> Any:
    """The base wrapped with every adapter, each under its source's name; the base itself when
    there is none."""
    if not adapters:
        return base
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapters[0].folder), adapter_name=adapters[0].name)
    for source in adapters[1:]:
        model.load_adapter(str(source.folder), adapter_name=source.name)
    return model


def pick_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Greedy at temperature 0 (argmax, as transformers' greedy search); otherwise a draw from
    the temperature-scaled distribution cut to the smallest set of tokens whose probability
    reaches top_p (the most likely token is always kept)."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # the mass of the tokens ranked above each one
        keep = before < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class StopText:
    """The answer's text as tokens arrive: what is safe to send now, and where a stop string
    cut it. Text that could still become a stop string, and a character whose bytes have not
    all arrived, are held back until the next token decides."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.cut: int | None = None

    def add(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text that can be sent now, whether a stop string was reached)."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hit = self._first_stop()
        if hit is not None:
            self.cut = hit
            return self._send(hit), True
        return self._send(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._send(self.cut if self.cut is not None else len(self.text))

    def final(self) -> str:
        return self.text[: self.cut] if self.cut is not None else self.text

    def _send(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent : upto]
        self.sent = upto
        return delta

    def _first_stop(self) -> int | None:
        longest = max((len(s) for s in self.stops), default=0)
        start = max(0, self.sent - longest)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        if self.text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return 1
        tail = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), tail, -1):
                if self.text.endswith(stop[:k]):
                    tail = k
                    break
        return tail


# ---------------------------------------------------------------- the worker and its queue


class Busy(Exception):
    """The queue is full: refuse now (429) rather than let the request wait for minutes."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    name: str
    prompt: list[int]
    sampling: Sampling
    on_text: Callable[[str], None] | None
    on_done: Callable[[Result | None, BaseException | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Worker:
    """One thread that runs jobs in arrival order; at most `max_waiting` wait behind the one
    that runs."""

    def __init__(self, engine: Engine, max_waiting: int) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.lock = threading.Lock()
        self.pending = 0  # waiting + running
        self.seconds = 1.0  # a running average of a job's time, for Retry-After
        threading.Thread(target=self._run, name="tunesmith-serve", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.pending > self.max_waiting:
                raise Busy(max(1, min(120, math.ceil(self.seconds * self.pending))))
            self.pending += 1
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            started = time.monotonic()
            try:
                if job.cancelled.is_set():
                    result = None
                else:
                    result = self.engine.generate(job.name, job.prompt, job.sampling, job.on_text,
                                                  job.cancelled.is_set)
            except BaseException as e:  # noqa: BLE001 - reported to the request; the server stays up
                job.on_done(None, e)
            else:
                job.on_done(result, None)
            finally:
                with self.lock:
                    self.pending -= 1
                    self.seconds = 0.8 * self.seconds + 0.2 * (time.monotonic() - started)
