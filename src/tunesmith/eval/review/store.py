"""The review's SQLite store, RUN/review/votes.db: raters, the items as they were shown,
each rater's order and sides, and the votes.

The first start copies the items out of RUN/eval/outputs.jsonl (with the file's hash), so a
vote always refers to the answers its rater saw, whatever later happens to that file. The
database is in WAL mode: readers never block the one writer, and writers queue on
busy_timeout instead of failing, so concurrent raters' votes all land.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from tunesmith.errors import TunesmithError, UsageError

CHOICES = ("A", "B", "tie", "both_bad")
SIDES = ("A", "B")
# A concurrent writer waits this long for the lock before a vote fails; one vote's write takes
# about a millisecond, so 10 s covers hundreds of raters clicking at once.
BUSY_TIMEOUT_MS = 10_000
# Letters, digits, '.', '_', '-': a name that is safe in a URL, a file and a terminal.
RATER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    line INTEGER PRIMARY KEY,             -- the outputs row's line: the item's identity everywhere
    prompt TEXT NOT NULL,                 -- JSON: [{"role": ..., "content": ...}, ...]
    base TEXT NOT NULL,
    tuned TEXT NOT NULL,
    category TEXT
);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    rater TEXT NOT NULL REFERENCES raters (name),
    item INTEGER NOT NULL REFERENCES items (line),
    position INTEGER NOT NULL,            -- 0-based place in this rater's order
    tuned_side TEXT NOT NULL CHECK (tuned_side IN ('A', 'B')),
    PRIMARY KEY (rater, item),
    UNIQUE (rater, position)
);
CREATE TABLE IF NOT EXISTS votes (
    rater TEXT NOT NULL,
    item INTEGER NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    score INTEGER CHECK (score BETWEEN 1 AND 5),
    comment TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (rater, item),            -- one vote per rater and item: a repeat is ignored
    FOREIGN KEY (rater, item) REFERENCES assignments (rater, item)
);
"""


@dataclass(frozen=True)
class Rater:
    name: str
    token: str


@dataclass(frozen=True)
class Item:
    line: int
    prompt: list[dict[str, str]]
    base: str
    tuned: str
    category: Optional[str]


@dataclass(frozen=True)
class Assignment:
    item: Item
    tuned_side: str


class NotAssigned(ValueError):
    """A vote for an item that is not one of the rater's."""


def review_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "review"


def db_path(run_dir: Path) -> Path:
    return review_dir(run_dir) / "votes.db"


def outputs_path(run_dir: Path) -> Path:
    return Path(run_dir) / "eval" / "outputs.jsonl"


# ---------------------------------------------------------------- connections

@contextmanager
def connection(db: Path) -> Iterator[sqlite3.Connection]:
    """One connection per request or command, closed after. Autocommit: a single statement is
    its own transaction; several go in `write_transaction`."""
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        yield conn
    finally:
        conn.close()


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock first: a deferred transaction that reads and then
    writes can fail with SQLITE_BUSY in WAL mode instead of waiting for the lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_db(db: Path) -> None:
    """An empty 0600 file first: the database holds the raters' tokens, and SQLite gives its
    -wal and -shm files the database file's mode."""
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    with connection(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")  # stays set in the file
        conn.executescript(SCHEMA)


# ---------------------------------------------------------------- starting a review

def check_rater_names(names: list[str]) -> list[str]:
    """The names, stripped; one UsageError for an empty, odd or repeated one."""
    cleaned = [name.strip() for name in names]
    seen: dict[str, str] = {}
    for name in cleaned:
        if not name:
            raise UsageError("--raters: an empty name (two commas in a row, or one at an end); give names "
                             "separated by commas, e.g. --raters alice,bob,carol")
        if not RATER_NAME.fullmatch(name):
            raise UsageError(f"--raters: {name!r} is not a rater name: use letters, digits, '.', '_' and '-' "
                             f"(starting with a letter or digit, at most 40 characters), e.g. --raters alice,bob")
        if name.lower() in seen:
            raise UsageError(f"--raters: {seen[name.lower()]} and {name} name the same rater; give each rater once")
        seen[name.lower()] = name
    return cleaned


def prepare_review(run_dir: Path, names: Optional[list[str]], rng: Optional[random.Random] = None) -> list[Rater]:
    """Start or continue the review of RUN: on the first start snapshot the items; later,
    refuse if outputs.jsonl has changed since. Add the raters not there yet (each with a new
    token, a random order and random sides; `rng` only for tests, the default is the OS's
    randomness) and return every rater, in the order they were added."""
    run_dir = Path(run_dir)
    names = check_rater_names(names) if names is not None else None
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: run folder not found; give the folder that `tunesmith train` wrote")
    db = db_path(run_dir)
    recorded = _recorded_snapshot(db)
    if recorded is None:  # the first start (or one stopped before its snapshot was written)
        snapshot = read_outputs(run_dir)  # a missing or broken file is named before anything is written
        if not names:
            raise UsageError(f"give the raters' names, e.g. --raters alice,bob,carol ({review_dir(run_dir)} "
                             f"has no raters yet)")
    else:
        snapshot = None
        _check_outputs_unchanged(run_dir, *recorded)
    _create_db(db)
    with connection(db) as conn, write_transaction(conn):
        if snapshot is not None and _meta(conn, "outputs_sha256") is None:
            _write_snapshot(conn, *snapshot)
        known = {row[0] for row in conn.execute("SELECT name FROM raters")}
        _check_same_case(names or [], known, run_dir)
        lines = [row[0] for row in conn.execute("SELECT line FROM items ORDER BY line")]
        for name in names or []:
            if name not in known:
                _add_rater(conn, name, lines, rng or random.SystemRandom())
        return [Rater(name, token) for name, token in conn.execute("SELECT name, token FROM raters ORDER BY rowid")]


def _check_same_case(names: list[str], known: set[str], run_dir: Path) -> None:
    by_lower = {name.lower(): name for name in known}
    for name in names:
        same = by_lower.get(name.lower())
        if same is not None and same != name:
            raise UsageError(f"--raters: {name}: {review_dir(run_dir)} already has the rater {same}; give that "
                             f"name to keep their link")


def read_outputs(run_dir: Path) -> tuple[str, list[Item]]:
    """RUN/eval/outputs.jsonl as items, and the SHA-256 of the bytes they were read from."""
    path = outputs_path(run_dir)
    if not path.is_file():
        raise UsageError(f"{path}: not found; run `tunesmith eval {run_dir}` first: it writes the two answers per "
                         f"example that the raters compare")
    data = path.read_bytes()
    fix = f"run `tunesmith eval {run_dir}` again to rewrite it"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); {fix}") from None
    items: list[Item] = []
    first_at: dict[int, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        item = _parse_row(raw, f"{path}:{number}", fix)
        if item.line in first_at:
            raise UsageError(f"{path}:{number}: line {item.line} appears twice (first at {path}:"
                             f"{first_at[item.line]}); {fix}")
        first_at[item.line] = number
        items.append(item)
    if not items:
        raise UsageError(f"{path}: no rows to review; {fix}")
    return hashlib.sha256(data).hexdigest(), items


def _parse_row(raw: str, where: str, fix: str) -> Item:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}: not JSON ({e.msg}); {fix}") from None
    if not isinstance(row, dict):
        raise UsageError(f"{where}: not a JSON object; {fix}")
    line = row.get("line")
    if not isinstance(line, int) or isinstance(line, bool):
        raise UsageError(f"{where}: field `line` missing or not a whole number; {fix}")
    for field in ("base", "tuned"):
        if not isinstance(row.get(field), str):
            raise UsageError(f"{where}: field `{field}` missing or not text; {fix}")
    prompt = row.get("prompt")
    if not (isinstance(prompt, list) and all(isinstance(turn, dict) and isinstance(turn.get("role"), str)
                                             and isinstance(turn.get("content"), str) for turn in prompt)):
        raise UsageError(f"{where}: field `prompt` is not a list of {{\"role\", \"content\"}} turns; {fix}")
    category = row.get("category")
    return Item(line=line, prompt=[{"role": t["role"], "content": t["content"]} for t in prompt],
                base=row["base"], tuned=row["tuned"], category=category if isinstance(category, str) else None)


def _recorded_snapshot(db: Path) -> Optional[tuple[str, str]]:
    """(SHA-256 of the outputs.jsonl the items came from, when the review started), or None
    before the first snapshot."""
    if not db.is_file():
        return None
    try:
        with connection(db) as conn:
            digest, started = _meta(conn, "outputs_sha256"), _meta(conn, "started")
    except sqlite3.OperationalError:  # an empty file: created, then stopped before the schema
        return None
    except sqlite3.DatabaseError as e:
        raise TunesmithError(f"{db}: not a review database ({e}); move it aside to start a new review") from None
    return (digest, started or "?") if digest is not None else None


def _check_outputs_unchanged(run_dir: Path, recorded: str, started: str) -> None:
    """The snapshot is what raters see; an outputs.jsonl that differs from it means the votes
    would mix two sets of answers. (A removed outputs.jsonl is fine: the snapshot has it all.)"""
    path = outputs_path(run_dir)
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() == recorded:
        return
    review = review_dir(run_dir)
    raise TunesmithError(
        f"{path} has changed since this review started ({started}): its votes refer to the answers shown then. "
        f"To review the new answers, move {review} aside (e.g. `mv {review} {review}-1`) and run this command "
        f"again for a new round; to continue this round, restore the outputs.jsonl it started from")


def _write_snapshot(conn: sqlite3.Connection, digest: str, items: list[Item]) -> None:
    conn.executemany("INSERT INTO items (line, prompt, base, tuned, category) VALUES (?, ?, ?, ?, ?)",
                     [(i.line, json.dumps(i.prompt, ensure_ascii=False), i.base, i.tuned, i.category) for i in items])
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("schema", SCHEMA_VERSION), ("outputs_sha256", digest), ("started", _now())])


def _add_rater(conn: sqlite3.Connection, name: str, lines: list[int], rng: random.Random) -> None:
    """A new token, and this rater's own order and sides, fixed now so a reload shows the same
    pair the same way. Sides are balanced (half the items each way, the odd one by a coin):
    a rater who favours whatever is on the left then adds noise, not a lean to one model."""
    conn.execute("INSERT INTO raters (name, token, added) VALUES (?, ?, ?)",
                 (name, secrets.token_urlsafe(24), _now()))
    order = list(lines)
    rng.shuffle(order)
    sides = list(SIDES) * (len(order) // 2) + ([rng.choice(SIDES)] if len(order) % 2 else [])
    rng.shuffle(sides)
    conn.executemany("INSERT INTO assignments (rater, item, position, tuned_side) VALUES (?, ?, ?, ?)",
                     [(name, line, position, side) for position, (line, side) in enumerate(zip(order, sides))])


def _meta(conn: sqlite3.Connection, key: str) -> Optional[str]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- serving

def rater_for_token(conn: sqlite3.Connection, token: str) -> Optional[str]:
    """The rater whose token this is, compared in constant time against every token (a
    handful of rows), so response times say nothing about how much of a guess was right."""
    import hmac

    given = token.encode("utf-8", "surrogatepass")
    found = None
    for name, known in conn.execute("SELECT name, token FROM raters"):
        if hmac.compare_digest(known.encode("utf-8"), given):
            found = name
    return found


def progress(conn: sqlite3.Connection, rater: str) -> tuple[int, int]:
    """(items voted, items assigned) for the rater."""
    done = conn.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM assignments WHERE rater = ?", (rater,)).fetchone()[0]
    return done, total


def next_assignment(conn: sqlite3.Connection, rater: str) -> Optional[Assignment]:
    """The first item in the rater's order without their vote; None when all are done."""
    row = conn.execute(
        "SELECT i.line, i.prompt, i.base, i.tuned, i.category, a.tuned_side FROM assignments a "
        "JOIN items i ON i.line = a.item "
        "LEFT JOIN votes v ON v.rater = a.rater AND v.item = a.item "
        "WHERE a.rater = ? AND v.item IS NULL ORDER BY a.position LIMIT 1", (rater,)).fetchone()
    if row is None:
        return None
    line, prompt, base, tuned, category, tuned_side = row
    return Assignment(Item(line, json.loads(prompt), base, tuned, category), tuned_side)


def record_vote(conn: sqlite3.Connection, rater: str, item: int, choice: str, score: Optional[int],
                comment: str) -> bool:
    """Store the rater's vote on an item of theirs: True when stored, False when they had
    already voted on it (the first vote stands: a double submit does not count twice)."""
    if conn.execute("SELECT 1 FROM assignments WHERE rater = ? AND item = ?", (rater, item)).fetchone() is None:
        raise NotAssigned(f"item {item} is not one of this rater's")
    cursor = conn.execute(
        "INSERT INTO votes (rater, item, choice, score, comment, at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (rater, item) DO NOTHING", (rater, item, choice, score, comment, _now()))
    return cursor.rowcount == 1


# ---------------------------------------------------------------- reading back

def _existing_db(run_dir: Path) -> Path:
    db = db_path(run_dir)
    if not db.is_file():
        raise UsageError(f"{db}: no review here yet; start one with `tunesmith review {run_dir} --raters alice,bob`")
    return db


def read_votes(run_dir: Path) -> list[dict[str, Any]]:
    """Every vote, by rater then item: {"rater", "item" (the outputs row's line), "choice"
    ("A" | "B" | "tie" | "both_bad"), "tuned_side" ("A" | "B"), "score" (1-5 or None),
    "comment" ("" when none), "at" (ISO-8601 UTC)}."""
    with connection(_existing_db(run_dir)) as conn:
        rows = conn.execute(
            "SELECT v.rater, v.item, v.choice, a.tuned_side, v.score, v.comment, v.at FROM votes v "
            "JOIN assignments a ON a.rater = v.rater AND a.item = v.item ORDER BY v.rater, v.item").fetchall()
    keys = ("rater", "item", "choice", "tuned_side", "score", "comment", "at")
    return [dict(zip(keys, row)) for row in rows]


def read_items(run_dir: Path) -> list[dict[str, Any]]:
    """The items as shown to the raters, by line: {"line", "prompt", "base", "tuned", "category"}."""
    with connection(_existing_db(run_dir)) as conn:
        rows = conn.execute("SELECT line, prompt, base, tuned, category FROM items ORDER BY line").fetchall()
    return [{"line": line, "prompt": json.loads(prompt), "base": base, "tuned": tuned, "category": category}
            for line, prompt, base, tuned, category in rows]
