"""An LLM judge for `tunesmith review --judge`: any OpenAI-compatible endpoint compares the
base and tuned answers of each evaluated example, the way MT-Bench's pairwise judge does.

Each item is judged twice, once with the base answer as A and once with the tuned answer
as A: judges favour a position, and asking both ways turns that bias into a tie instead of
a win. Only when both orders pick the same model does it win. The result is a list of
votes in the same dict form as the human votes, so `stats.summarise_votes` reports on them
unchanged.

Every raw judgement is appended to a cache (RUN/review/judge.jsonl) as soon as it arrives,
keyed by (model, line, order, hash of the request): an interrupted run resumes where it
stopped, and a finished one costs nothing to summarise again. The `openai` client is the
optional extra `judge`; it is imported only here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import urlsplit

from tunesmith.errors import TunesmithError, UsageError

JUDGE_EXTRA = "the LLM judge needs the optional extra: pip install 'tunesmith[judge]'"
# Local servers (vLLM, llama.cpp, Ollama) ignore the key, but the client refuses to start
# without one.
DUMMY_KEY = "no-key"
MAX_TOKENS = 1024  # an explanation and a verdict; MT-Bench's judge answers fit in far less
TIMEOUT_S = 120.0  # per request: a 1024-token answer from a busy local server takes a while
MAX_RETRIES = 2  # the client's own retries: connection errors, 408, 409, 429 and 5xx, with backoff
CONCURRENCY = 4  # requests in flight: a hosted API answers several at once, a local one queues them

# The two orders an item is judged in: which model's answer is shown as A, which as B.
ORDERS = {"base_first": ("base", "tuned"), "tuned_first": ("tuned", "base")}

# After MT-Bench's pairwise judge with a reference answer (FastChat `judge_prompts.jsonl`,
# "pair-math-v1"), widened from correctness to the content and form a fine-tune aims at.
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the conversation displayed below. You will be given a reference answer, assistant A's "
    "answer and assistant B's answer. The reference answer shows what a good answer contains and how it is "
    "written; an answer need not copy it word for word. Your job is to decide which assistant's answer is "
    "better: more correct, more helpful, and closer to the reference in content and format. Begin your "
    "evaluation by comparing both assistants' answers with the reference answer and point out any mistakes. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Be as "
    "objective as possible. After providing your explanation, output your final verdict by strictly "
    'following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" '
    "for a tie."
)
USER_TEMPLATE = (
    "[The Start of the Conversation]\n{conversation}\n[The End of the Conversation]\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)


# ---------------------------------------------------------------- judging

def judge_items(items: list[dict], *, url: str, model: str, api_key: str | None, cache: Path,
                on_progress: Callable[[int, int], None] | None = None, concurrency: int = CONCURRENCY,
                timeout: float = TIMEOUT_S, max_retries: int = MAX_RETRIES) -> list[dict]:
    """One vote per item by the judge `model` at `url`, in the order of `items`.

    `items`: outputs.jsonl rows (line, prompt, reference, base, tuned). `url`: the API root
    (http://host:port/v1); a bare http://host:port gets /v1, a pasted .../chat/completions
    loses it. `api_key`: None takes TUNESMITH_JUDGE_API_KEY, then OPENAI_API_KEY, then a
    dummy for local servers that need none. `cache`: RUN/review/judge.jsonl, read first and
    appended to after every judgement. `on_progress(done, total)` counts judgements (two per
    item), cached ones as done from the start.

    A vote: rater "judge:<model>", tuned_side "A", choice "A" (tuned won both orders), "B"
    (base won both) or "tie" (a tie, a disagreement between the orders, or a judgement
    without a verdict, which counts as a tie for its order and is kept in the cache with
    verdict null; `unparsed_judgements` counts them). score None, comment "", at: when the later of
    the two judgements was made.

    An endpoint that cannot be reached, refuses the key, answers 404 or answers something
    that is not a chat completion is one TunesmithError naming the URL and what to check.
    """
    root = api_root(url)
    lines = [_line(item) for item in items]
    requests = _requests(items)
    keys = {request: (model, *request, _request_hash(messages)) for request, messages in requests.items()}
    cached = read_cache(cache, model)
    todo = [request for request, key in keys.items() if key not in cached]
    done, total = len(requests) - len(todo), len(requests)
    if on_progress:
        on_progress(done, total)
    if todo:
        client = _client(root, api_key, timeout=timeout, max_retries=max_retries)
        lock = threading.Lock()
        with _CacheAppender(cache) as append:

            def judge_one(request: tuple[int, str]) -> None:
                nonlocal done
                row = _cache_row(keys[request], _ask(client, root, model, requests[request]))
                with lock:
                    append(row)
                    cached[keys[request]] = row
                    done += 1
                    if on_progress:
                        on_progress(done, total)

            # The first request alone: a wrong URL or key fails once, fast, not once per worker.
            judge_one(todo[0])
            _run_all(judge_one, todo[1:], concurrency)
    return [_vote(model, line, cached[keys[(line, "base_first")]], cached[keys[(line, "tuned_first")]])
            for line in lines]


def _requests(items: list[dict]) -> dict[tuple[int, str], list[dict[str, str]]]:
    """The chat messages for every (line, order) the items need judged."""
    return {(_line(item), order): _messages(item, order) for item in items for order in ORDERS}


def _run_all(work: Callable[[Any], None], jobs: list, concurrency: int) -> None:
    """`work` on every job with `concurrency` threads; the first error stops the rest (the
    requests already in flight finish, and land in the cache) and is raised."""
    if not jobs:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="tunesmith-judge")
    try:
        futures: list[Future] = [pool.submit(work, job) for job in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception()), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _line(item: dict) -> int:
    line = item.get("line")
    if not isinstance(line, int) or isinstance(line, bool):
        raise TunesmithError(f"outputs.jsonl: a row has line {line!r}, not a number; run `tunesmith eval` again "
                             f"to rewrite RUN/eval/outputs.jsonl")
    return line


def _messages(item: dict, order: str) -> list[dict[str, str]]:
    """The chat messages that ask for one judgement of `item` with the models in `order`."""
    first, second = ORDERS[order]
    fields = {}
    for name in ("reference", "base", "tuned"):
        value = item.get(name)
        if not isinstance(value, str):
            raise TunesmithError(f"outputs.jsonl line {item['line']}: field {name!r} is "
                                 f"{'missing' if value is None else type(value).__name__}, expected text; "
                                 f"run `tunesmith eval` again to rewrite RUN/eval/outputs.jsonl")
        fields[name] = value
    user = USER_TEMPLATE.format(conversation=render_conversation(item.get("prompt")), reference=fields["reference"],
                                answer_a=fields[first], answer_b=fields[second])
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def render_conversation(prompt: Any) -> str:
    """The turns before the answer as plain text: a lone user turn as its text, several
    turns as "Role: text" paragraphs (the judge must see a system prompt too)."""
    if isinstance(prompt, str):
        return prompt
    turns = [t for t in prompt or [] if isinstance(t, dict)]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return str(turns[0].get("content", ""))
    return "\n\n".join(f"{str(t.get('role', 'user')).capitalize()}: {t.get('content', '')}" for t in turns)


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "C" from the judge's last [[A]] / [[B]] / [[C]]; None when it gave none.
    The last one counts: judges often quote the format, or weigh both, before deciding."""
    found = _VERDICT.findall(text)
    return found[-1].upper() if found else None


def _winner(order: str, verdict: str | None) -> str:
    """"base", "tuned" or "tie" for one judgement; no verdict is a tie for that order."""
    if verdict in ("A", "B"):
        return ORDERS[order][0 if verdict == "A" else 1]
    return "tie"


def _vote(model: str, line: int, base_first: dict, tuned_first: dict) -> dict:
    winners = {base_first["winner"], tuned_first["winner"]}
    combined = winners.pop() if len(winners) == 1 else "tie"
    return {"rater": f"judge:{model}", "item": line, "choice": {"tuned": "A", "base": "B"}.get(combined, "tie"),
            "tuned_side": "A", "score": None, "comment": "", "at": max(base_first["at"], tuned_first["at"])}


# ---------------------------------------------------------------- the cache

def _request_hash(messages: list[dict[str, str]]) -> str:
    # The whole request, not only the two answers: a changed reference, prompt or judging
    # instruction is a different question and must be asked again.
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _cache_row(key: tuple[str, int, str, str], text: str) -> dict:
    model, line, order, request_hash = key
    verdict = parse_verdict(text)
    return {"model": model, "line": line, "order": order, "request_sha256": request_hash, "verdict": verdict,
            "winner": _winner(order, verdict), "judgement": text, "at": _now()}


def read_cache(cache: Path, model: str) -> dict[tuple[str, int, str, str], dict]:
    """The judgements `model` already made, by (model, line, order, request_sha256). A line
    that is not a complete JSON object (a write cut short by a crash) is skipped: that
    judgement is asked again."""
    rows: dict[tuple[str, int, str, str], dict] = {}
    if not cache.exists():
        return rows
    for text in cache.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(text)
            if (row["model"] == model and row["winner"] in ("base", "tuned", "tie")
                    and isinstance(row["at"], str)):
                rows[(row["model"], row["line"], row["order"], row["request_sha256"])] = row
        except (ValueError, TypeError, KeyError):
            continue
    return rows


def unparsed_judgements(items: list[dict], *, model: str, cache: Path) -> int:
    """How many of the judgements behind these items' votes gave no [[A]]/[[B]]/[[C]] verdict
    (each counted as a tie for its order): worth a line beside the judge's win rate. Reads
    the cache only; call it after `judge_items` with the same items."""
    cached = read_cache(cache, model)
    rows = [cached.get((model, *request, _request_hash(messages))) for request, messages in _requests(items).items()]
    return sum(1 for row in rows if row is not None and row.get("verdict") is None)


class _CacheAppender:
    """Appends rows to the cache, one fsynced line each, so what was paid for survives a crash.
    A cache whose last line was cut short gets a newline first, so the new row stands alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None

    def __enter__(self) -> Callable[[dict], None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+b")
        if self.file.seek(0, os.SEEK_END) > 0:
            self.file.seek(-1, os.SEEK_END)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")
        return self.append

    def append(self, row: dict) -> None:
        assert self.file is not None
        self.file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- the endpoint

def api_root(url: str) -> str:
    """The base URL the client wants (ending in the API root, usually /v1), from what a user
    may type: a bare http://host:port gets /v1, a trailing /chat/completions or / goes."""
    root = url.strip().rstrip("/")
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"judge URL {url!r}: not an http(s) URL; give the API root of an OpenAI-compatible "
                         f"server, e.g. http://127.0.0.1:8000/v1")
    root = root.removesuffix("/chat/completions")
    if urlsplit(root).path in ("", "/"):
        root += "/v1"
    return root


def resolve_api_key(api_key: str | None, root: str) -> str:
    """The argument, else TUNESMITH_JUDGE_API_KEY, else OPENAI_API_KEY but only for OpenAI's own
    API (a key for one service must not be sent to whatever URL --judge names), else a dummy
    that local endpoints without keys accept."""
    if api_key:
        return api_key
    if os.environ.get("TUNESMITH_JUDGE_API_KEY"):
        return os.environ["TUNESMITH_JUDGE_API_KEY"]
    if os.environ.get("OPENAI_API_KEY") and urlsplit(root).hostname == "api.openai.com":
        return os.environ["OPENAI_API_KEY"]
    return DUMMY_KEY


def _client(root: str, api_key: str | None, *, timeout: float, max_retries: int) -> Any:
    try:
        import openai
    except ImportError:
        raise UsageError(JUDGE_EXTRA) from None
    return openai.OpenAI(base_url=root, api_key=resolve_api_key(api_key, root), timeout=timeout, max_retries=max_retries)


def _ask(client: Any, root: str, model: str, messages: list[dict[str, str]]) -> str:
    """The judge's answer text; "" when it sent an empty message (no verdict: a tie)."""
    import openai

    try:
        completion = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                    max_tokens=MAX_TOKENS)
    except openai.APIError as e:
        raise _endpoint_error(e, root, model, client) from None
    choices = getattr(completion, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    if message is None:
        raise TunesmithError(f"{root}/chat/completions answered with something that is not an OpenAI chat "
                             f"completion ({_preview(completion)}): check that the URL is the API root of an "
                             f"OpenAI-compatible server (it usually ends in /v1)")
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


def _endpoint_error(e: Exception, root: str, model: str, client: Any) -> TunesmithError:
    import openai

    where = f"judge endpoint {root}"
    detail = _preview(_server_message(e))
    if isinstance(e, openai.APITimeoutError):
        return TunesmithError(f"{where}: no answer within {client.timeout} s (tried {client.max_retries + 1} "
                              f"times): check that the server is up and not overloaded")
    if isinstance(e, openai.APIConnectionError):
        cause = _preview(str(e.__cause__ or e))
        return TunesmithError(f"{where}: cannot connect ({cause}): check the URL, the port and that the "
                              f"server is running")
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return TunesmithError(f"{where}: the API key was refused (HTTP {e.status_code}: {detail}): set the right "
                              f"key in TUNESMITH_JUDGE_API_KEY or OPENAI_API_KEY")
    if isinstance(e, openai.NotFoundError):
        return TunesmithError(f"{where}: HTTP 404 for /chat/completions ({detail}): check that the URL is the "
                              f"API root (it usually ends in /v1) and that the server serves model {model!r}")
    if isinstance(e, openai.RateLimitError):
        return TunesmithError(f"{where}: still rate-limited (HTTP 429) after {client.max_retries} retries "
                              f"({detail}): wait and run again; the judgements so far are cached")
    if isinstance(e, openai.APIStatusError):
        return TunesmithError(f"{where}: HTTP {e.status_code} ({detail}): check the model name {model!r} and "
                              f"the server's log")
    return TunesmithError(f"{where}: the answer could not be read ({detail}): check that the URL is the API "
                          f"root of an OpenAI-compatible server (it usually ends in /v1)")


def _server_message(e: Exception) -> str:
    """What the server said, from OpenAI's {"error": {"message": ...}} when it used that shape,
    without the client's "Error code: 404 - " prefix (the message names the status already)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return re.sub(r"^Error code: \d+ - ", "", getattr(e, "message", None) or str(e))


def _preview(value: Any, limit: int = 160) -> str:
    """A value as one short line, for an error message (a parsed response as its JSON)."""
    if hasattr(value, "model_dump"):
        value = json.dumps(value.model_dump(exclude_none=True), ensure_ascii=False)
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
