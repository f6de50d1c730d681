"""The review page: one route per rater link, GET to see the next pair, POST to vote.

Server-rendered, so it works without JavaScript; a small inline script adds keys 1-4. A
wrong or missing token, and every other path, is a bare 404: the page says nothing to
someone without a link. Nothing on a page says which answer came from which model: the
form carries only the item's line, and the sides are looked up from the rater's
assignment when the vote is stored.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Optional

import jinja2
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from tunesmith.errors import UsageError
from tunesmith.eval.review import store

LINE = re.compile(r"-?[0-9]{1,18}")  # fits SQLite's 64-bit integer
COMMENT_LIMIT = 10_000  # characters; a comment is a remark, not a document
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
# Sent with every response: no caching of a page whose URL is a secret, no Referer that would
# carry it elsewhere, no framing.
PRIVATE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def build_app(run_dir: Path) -> FastAPI:
    """The review app for RUN, whose review store `store.prepare_review` has set up."""
    db = store.db_path(run_dir)
    if not db.is_file():
        raise UsageError(f"{db}: no review here yet; start one with `tunesmith review {run_dir} --raters alice,bob`")
    template = _template()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # /r/TOKEN/ is a 404 like any other path, not a redirect
    app.add_exception_handler(HTTPException, _bare_error)

    @app.middleware("http")
    async def private_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(PRIVATE_HEADERS)
        return response

    @app.get("/r/{token}")
    def rater_page(token: str) -> Response:
        with store.connection(db) as conn:
            rater = _rater_or_404(conn, token)
            done, total = store.progress(conn, rater)
            current = store.next_assignment(conn, rater)
        nonce = secrets.token_hex(16)
        html = template.render(rater=rater, done=done, total=total, pair=_pair(current) if current else None,
                               nonce=nonce)
        # The one inline script runs by its nonce; any other script, had one slipped into the
        # page, would not.
        csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
               f"form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.post("/r/{token}")
    def vote(request: Request, token: str,
             item: Annotated[Optional[str], Form()] = None, choice: Annotated[Optional[str], Form()] = None,
             score: Annotated[Optional[str], Form()] = None,
             comment: Annotated[Optional[str], Form()] = None) -> Response:
        # Every field is optional text here and checked below, after the token: a request
        # without a valid link gets the same 404 whatever its body.
        with store.connection(db) as conn:
            rater = _rater_or_404(conn, token)
            problem, fields = _check_vote(item, choice, score, comment)
            if problem:
                return PlainTextResponse(problem, status_code=400)
            try:
                store.record_vote(conn, rater, **fields)
            except store.NotAssigned:
                return PlainTextResponse(f"item {item}: not one of your items", status_code=400)
        return RedirectResponse(request.url.path, status_code=303)

    return app


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tunesmith.eval", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("review.html.j2")


def _rater_or_404(conn: Any, token: str) -> str:
    rater = store.rater_for_token(conn, token)
    if rater is None:
        raise HTTPException(status_code=404)
    return rater


async def _bare_error(request: Request, exc: Exception) -> Response:
    """404 for unknown paths, wrong tokens and wrong methods alike (a 405 would say that a
    path exists); the body is the status and nothing else."""
    status = getattr(exc, "status_code", 500)
    if status in (404, 405):
        return PlainTextResponse("Not Found", status_code=404, headers=PRIVATE_HEADERS)
    return PlainTextResponse(str(getattr(exc, "detail", "error")), status_code=status, headers=PRIVATE_HEADERS)


def _check_vote(item: Optional[str], choice: Optional[str], score: Optional[str],
                comment: Optional[str]) -> tuple[Optional[str], dict[str, Any]]:
    """(a short message for a 400, or None; the vote's fields for store.record_vote)."""
    if item is None or not LINE.fullmatch(item.strip()):
        return "item: missing or not a line number", {}
    if choice not in store.CHOICES:
        return f"choice: must be one of {', '.join(store.CHOICES)}", {}
    score = (score or "").strip()
    if score and score not in ("1", "2", "3", "4", "5"):
        return "score: must be a whole number from 1 to 5, or empty", {}
    comment = (comment or "").strip()
    if len(comment) > COMMENT_LIMIT:
        return f"comment: longer than {COMMENT_LIMIT:,} characters", {}
    return None, {"item": int(item), "choice": choice, "score": int(score) if score else None, "comment": comment}


def _pair(current: store.Assignment) -> dict[str, Any]:
    """What the page shows of an assignment: the turns, and the two answers on the sides
    drawn for this rater. The model names stay here."""
    item = current.item
    first, second = (item.tuned, item.base) if current.tuned_side == "A" else (item.base, item.tuned)
    turns = [{"role": ROLE_LABELS.get(turn["role"], turn["role"].capitalize()), "content": turn["content"]}
             for turn in item.prompt]
    return {"line": item.line, "turns": turns, "a": first, "b": second}
