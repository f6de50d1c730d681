"""Blind pairwise review: domain experts compare the two answers of each evaluated example.

`tunesmith review RUN --raters alice,bob` snapshots RUN/eval/outputs.jsonl into
RUN/review/votes.db (store.py), gives each rater a secret link, listed in
RUN/review/raters.json (0600), and serves the page (app.py) until Ctrl-C. Votes are written
as they come; store.read_votes and store.read_items read them back for statistics.

This module imports no web framework: the statistics import the store without paying for
FastAPI and uvicorn.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tunesmith.eval.review.store import Rater, prepare_review, read_items, read_votes, review_dir
from tunesmith.net import LOCAL_HOSTS, bind, url_host

__all__ = ["ReviewLinks", "read_items", "read_votes", "serve_review", "write_links"]



@dataclass(frozen=True)
class ReviewLinks:
    """What the command prints before serving."""

    links: list[tuple[str, str]]  # (rater, url), in the order the raters were added
    raters_file: Path
    local: bool  # True: only this machine can open the links


def serve_review(run_dir: Path, raters: Optional[list[str]], host: str = "127.0.0.1", port: int = 8700,
                 on_ready: Optional[Callable[[ReviewLinks], None]] = None) -> int:
    """Start or continue the review of RUN with these raters (None: those it already has),
    write raters.json, call `on_ready` with the links, and serve in the foreground until
    Ctrl-C. Returns the number of votes stored when it stopped.

    The port is bound before anything is written, so a port in use costs nothing; port 0
    takes a free one (the links say which)."""
    sock = bind(host, port, example_port=8700, running="this review")
    try:
        everyone = prepare_review(Path(run_dir), raters)
        links = write_links(Path(run_dir), everyone, host, sock.getsockname()[1])
        if on_ready is not None:
            on_ready(links)
        _serve(Path(run_dir), sock)
    finally:
        sock.close()
    return len(read_votes(Path(run_dir)))


def write_links(run_dir: Path, raters: list[Rater], host: str, port: int) -> ReviewLinks:
    """RUN/review/raters.json: [{"name", "token", "url"}], readable only by its owner, since a
    link is all it takes to vote as that rater."""
    from tunesmith.io import write_json_atomic

    base_url = f"http://{url_host(host)}:{port}"
    rows = [{"name": r.name, "token": r.token, "url": f"{base_url}/r/{r.token}"} for r in raters]
    path = review_dir(run_dir) / "raters.json"
    write_json_atomic(path, rows, private=True)
    return ReviewLinks(links=[(row["name"], row["url"]) for row in rows], raters_file=path,
                       local=host in LOCAL_HOSTS)


def _serve(run_dir: Path, sock: socket.socket) -> None:
    import uvicorn

    from tunesmith.eval.review.app import build_app

    config = uvicorn.Config(build_app(run_dir), log_level="warning", access_log=False, server_header=False,
                            lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a review stops: uvicorn has shut down cleanly, then raised it again
