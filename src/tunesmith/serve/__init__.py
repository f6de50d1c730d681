"""Serving a trained run: `tunesmith export` writes it as a folder plain transformers loads;
`tunesmith serve` answers for it over an OpenAI-compatible API (serve_models below)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tunesmith.errors import UsageError

KEY_ENV = "TUNESMITH_API_KEY"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Serving:
    """What the command prints before it serves."""

    url: str  # the API's base URL, e.g. http://127.0.0.1:8000/v1
    models: list[str]
    base: str
    device: str
    key: Optional[str]  # shown once when it was generated; None when the user gave it
    local: bool


def api_key(given: Optional[str]) -> tuple[str, bool]:
    """--api-key, else TUNESMITH_API_KEY, else a new random key: (key, generated)."""
    key = given if given is not None else os.environ.get(KEY_ENV)
    if key is None:
        return "ts-" + secrets.token_urlsafe(24), True
    if len(key.strip()) < 8 or key != key.strip():
        source = "--api-key" if given is not None else KEY_ENV
        raise UsageError(f"{source}: an API key needs at least 8 characters and no surrounding spaces; or give none "
                         f"and tunesmith makes one")
    return key, False


def serve_models(paths: list[Path], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, key: Optional[str] = None,
                 max_waiting: int = 16, on_note: Optional[Callable[[str], None]] = None,
                 on_ready: Optional[Callable[[Serving], None]] = None) -> None:
    """Load the runs at `paths` on their shared base and serve them until Ctrl-C. The port is
    bound and every folder checked before minutes of loading."""
    from tunesmith.net import LOCAL_HOSTS, bind, url_host
    from tunesmith.serve.sources import plan_serving

    secret, generated = api_key(key)
    sock = bind(host, port, example_port=DEFAULT_PORT, running="tunesmith serve")
    try:
        plan = plan_serving(paths)
        from tunesmith.serve.api import build_app
        from tunesmith.serve.engine import Engine

        engine = Engine(plan, on_note)
        app = build_app(engine, secret, max_waiting)
        if on_ready is not None:
            on_ready(Serving(f"http://{url_host(host)}:{sock.getsockname()[1]}/v1", engine.names, plan.base,
                             f"{engine.device.type}, {str(engine.dtype).removeprefix('torch.')}",
                             secret if generated else None, host in LOCAL_HOSTS))
        _run(app, sock)
    finally:
        sock.close()


def _run(app: object, sock: socket.socket) -> None:
    import uvicorn

    # One line per request from tunesmith.serve (never the prompt); uvicorn's own access log
    # would repeat it.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
