"""The OpenAI-compatible HTTP API of `tunesmith serve`, on FastAPI.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions
(each streamed as server-sent events ending `data: [DONE]` when `stream` is true), GET /health.
Every route, /health and unknown paths included, wants `Authorization: Bearer KEY`, compared
in constant time. Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}},
so the official clients raise their usual exceptions. A parameter the server cannot honour
(n > 1, logprobs, tools, penalties) is refused by name rather than silently ignored; fields it
does not know are ignored, as newer clients send more.

The log has one line per request (route, status, model, token counts, seconds) and never
the prompt or the answer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunesmith.serve.engine import Busy, Engine, Job, Result, Sampling, Worker

log = logging.getLogger("tunesmith.serve")

DEFAULT_MAX_TOKENS = 512  # when a request names none: a CPU answers a few tokens a second
MAX_STOPS = 4  # as OpenAI's API


# ---------------------------------------------------------------- requests


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Common(BaseModel):
    """What both completion routes take. Unknown fields are ignored; known ones this server
    cannot honour are refused in `unsupported`."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    presence_penalty: float = 0
    frequency_penalty: float = 0
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Any = None

    def unsupported(self) -> Optional[tuple[str, str]]:
        if self.n != 1:
            return "n", "only n=1 is supported: send the request again for another answer"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported; leave it at 0"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Any = None
    response_format: Optional[dict[str, Any]] = None

    def unsupported(self) -> Optional[tuple[str, str]]:
        if self.tools:
            return "tools", "tools and function calling are not supported"
        if self.response_format and self.response_format.get("type") != "text":
            return "response_format", "only response_format {\"type\": \"text\"} is supported"
        return super().unsupported()


class CompletionRequest(Common):
    prompt: Union[str, list[str]]
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    def unsupported(self) -> Optional[tuple[str, str]]:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            return "prompt", "give one prompt per request"
        if self.echo or self.suffix or (self.best_of or 1) != 1:
            return "echo" if self.echo else "suffix" if self.suffix else "best_of", "echo, suffix and best_of are " \
                                                                                    "not supported"
        return super().unsupported()

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def unauthorized() -> ApiError:
    return ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY` with the key "
                         "`tunesmith serve` printed (or TUNESMITH_API_KEY)", code="invalid_api_key")


# ---------------------------------------------------------------- the app


def build_app(engine: Engine, api_key: str, max_waiting: int) -> FastAPI:
    """The API for `engine`'s models, behind `api_key`, with at most `max_waiting` queued requests."""
    worker = Worker(engine, max_waiting)
    key = api_key.encode("utf-8")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.monotonic()
        request.state.log = {}
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # compare_digest takes the same time wherever the first difference is.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), key):
            response = unauthorized().response()
        else:
            response = await call_next(request)
        fields = " ".join(f"{k}={v}" for k, v in request.state.log.items())
        log.info("%s %s %d %s%.2fs", request.method, request.url.path, response.status_code,
                 f"{fields} " if fields else "", time.monotonic() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> Response:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request body"))
        return ApiError(400, message, param=param).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> Response:
        if e.status_code == 404:
            return ApiError(404, "no such route: see GET /v1/models, POST /v1/chat/completions, POST /v1/completions",
                            code="not_found").response()
        return ApiError(e.status_code, str(e.detail)).response()

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "tunesmith"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": engine.names, "waiting": max(0, worker.pending - 1),
                "max_waiting": max_waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in engine.names]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str) -> dict[str, Any]:
        return model_card(known_model(name))

    def known_model(name: str) -> str:
        if name not in engine.names:
            raise ApiError(404, f"model {name!r} does not exist here; this server has {', '.join(engine.names)}",
                           param="model", code="model_not_found")
        return name

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest) -> Response:
        try:
            prompt = engine.chat_prompt([m.plain() for m in body.messages])
        except Exception as e:  # noqa: BLE001 - a template's own check (e.g. roles must alternate)
            raise ApiError(400, f"messages: the model's chat template refused them ({e})", param="messages") from None
        return await complete(request, body, prompt, chat=True,
                              max_tokens=body.max_completion_tokens or body.max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await complete(request, body, engine.text_prompt(body.text()), chat=False, max_tokens=body.max_tokens)

    async def complete(request: Request, body: Common, prompt: list[int], *, chat: bool,
                       max_tokens: Optional[int]) -> Response:
        name = known_model(body.model)
        problem = body.unsupported()
        if problem:
            raise ApiError(400, problem[1], param=problem[0], code="unsupported_parameter")
        stops = body.stops()
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} stop strings", param="stop")
        sampling = Sampling(max_tokens=fit_budget(engine, prompt, max_tokens), temperature=body.temperature,
                            top_p=body.top_p, stop=stops, seed=body.seed)
        request.state.log.update(model=name, prompt_tokens=len(prompt))
        answer = Answer(chat=chat, model=name)
        job = answer.job(asyncio.get_running_loop(), name, prompt, sampling, streaming=body.stream)
        try:
            worker.submit(job)
        except Busy as e:
            raise ApiError(429, f"the server is busy: {max_waiting} requests are already waiting; retry in "
                                f"{e.retry_after} s", kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(answer.events(job, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await answer.finished()
        request.state.log.update(completion_tokens=result.completion_tokens)
        return JSONResponse(answer.whole(result))

    return app


def fit_budget(engine: Engine, prompt: list[int], asked: Optional[int]) -> int:
    """max_tokens as asked (default DEFAULT_MAX_TOKENS), refused when the prompt leaves no room
    in the model's context, and cut to what the context has left."""
    room = engine.context - len(prompt) if engine.context else None
    if room is not None and room < 1:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens; this model's context is {engine.context} "
                            f"tokens: shorten the messages", param="messages", code="context_length_exceeded")
    if room is not None and asked is not None and asked > room:
        raise ApiError(400, f"max_tokens {asked} + the prompt's {len(prompt)} tokens exceed this model's context of "
                            f"{engine.context} tokens: ask for at most {room}", param="max_tokens",
                       code="context_length_exceeded")
    budget = asked or DEFAULT_MAX_TOKENS
    return min(budget, room) if room is not None else budget


class Answer:
    """One request's answer, in OpenAI's chat or text-completion shape, whole or as SSE events."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.events_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.done: asyncio.Future[Result] | None = None

    def job(self, loop: asyncio.AbstractEventLoop, name: str, prompt: list[int], sampling: Sampling, *,
            streaming: bool) -> Job:
        self.done = loop.create_future()
        done = self.done

        def on_text(delta: str) -> None:
            loop.call_soon_threadsafe(self.events_queue.put_nowait, ("text", delta))

        def settle(result: Optional[Result], error: Optional[BaseException]) -> None:
            if not done.done():
                done.set_exception(error) if error else done.set_result(result)  # type: ignore[arg-type]

        def on_done(result: Optional[Result], error: Optional[BaseException]) -> None:
            loop.call_soon_threadsafe(settle, result, error)
            loop.call_soon_threadsafe(self.events_queue.put_nowait, ("done", None))

        return Job(name, prompt, sampling, on_text if streaming else None, on_done)

    async def finished(self) -> Result:
        assert self.done is not None
        try:
            return await self.done
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the worker met, reported in OpenAI's shape
            raise generation_failed(e) from None

    def whole(self, result: Result) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "finish_reason": result.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
        return {**self._head(self.object), "choices": [choice], "usage": usage(result)}

    async def events(self, job: Job, include_usage: bool) -> AsyncIterator[str]:
        chunk = self.object + ".chunk" if self.chat else self.object
        try:
            if self.chat:
                yield sse({**self._head(chunk), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                            "finish_reason": None, "logprobs": None}]})
            while True:
                kind, value = await self.events_queue.get()
                if kind == "done":
                    break
                yield sse({**self._head(chunk), "choices": [self._delta(value, None)]})
            try:
                result = await self.finished()
            except ApiError as e:
                yield sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
                yield "data: [DONE]\n\n"
                return
            yield sse({**self._head(chunk), "choices": [self._delta("", result.finish_reason)]})
            if include_usage:
                yield sse({**self._head(chunk), "choices": [], "usage": usage(result)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client went away: the worker stops generating for it

    def _delta(self, text: str, finish: Optional[str]) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "delta": {"content": text} if text or finish is None else {},
                    "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def generation_failed(e: BaseException) -> ApiError:
    from tunesmith.errors import memory_kind

    kind = memory_kind(e)
    if kind:
        return ApiError(503, f"out of {kind} memory while generating: ask for fewer max_tokens or a shorter prompt, "
                             f"or serve fewer adapters", kind="server_error", code="out_of_memory",
                        headers={"Retry-After": "5"})
    log.exception("generation failed")
    return ApiError(500, f"generation failed ({type(e).__name__}); the server log has the details",
                    kind="server_error")
