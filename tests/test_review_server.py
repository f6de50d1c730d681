"""`tunesmith review` as a real server on 127.0.0.1, driven over HTTP: secret links and bare
404s, one vote per rater and item under 50 concurrent raters, tokens kept across restarts,
and the refusals before anything is served."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest

from tunesmith.cli import run_guarded
from tunesmith.eval.review.store import prepare_review, read_items, read_votes

SCRIPT = "<script>alert(1)</script>"
SYSTEM = {"role": "system", "content": "You are the support assistant of Northwind Telecom. Answer briefly."}
# Six items on two categories; lines are not 1..6, so the tests see that an item is its line.
# No text says "base" or "tuned": the page must not either.
ITEMS = [
    {"line": 2, "category": "billing",
     "prompt": [SYSTEM, {"role": "user", "content": "I was charged twice for March. Can I get one charge back?"}],
     "tuned": "Sorry about the double charge. I have flagged the second March payment (EUR 24.99) for a refund; "
              "it will be back on your card within 5 business days.",
     "base": "Please contact your bank about charges on your card."},
    {"line": 5, "category": "shipping",
     "prompt": [SYSTEM, {"role": "user", "content": "My router has not arrived. Tracking has said 'in transit' "
                                                   "for six days."}],
     "tuned": "Sorry for the wait. A parcel in transit for more than 5 days counts as lost, so I have ordered a "
              "replacement; it ships today by express.",
     "base": SCRIPT + " Tracking updates can take time. Please wait a few more days."},
    {"line": 9, "category": "billing",
     "prompt": [{"role": "user", "content": "What is the 'service fee' line on my invoice?"}],
     "tuned": "It is the monthly fee for your line, EUR 4.50, charged on the 1st of each month.",
     "base": "The service fee is a fee for the service."},
    {"line": 14, "category": "shipping",
     "prompt": [SYSTEM, {"role": "user", "content": "Can I change the delivery address?"},
                {"role": "assistant", "content": "Yes, as long as the order has not shipped. What is the order "
                                                 "number?"},
                {"role": "user", "content": "It is NW-48213."}],
     "tuned": "Thanks! NW-48213 has not shipped yet: reply with the new address and I will update it.",
     "base": "Yes, you can change the delivery address."},
    {"line": 20, "category": "billing",
     "prompt": [{"role": "user", "content": "Can I pay by bank transfer?"}],
     "tuned": "Yes: use IBAN DE00 1234 5678 9012 with your customer number as the reference.",
     "base": "Yes."},
    {"line": 33, "category": "shipping",
     "prompt": [{"role": "user", "content": "Do you deliver to the Åland Islands?"}],
     "tuned": "Yes, to every address in Finland, Åland included; delivery takes 3-5 days.",
     "base": "I am not sure where the Åland Islands are."},
]
LINES = sorted(item["line"] for item in ITEMS)
N = len(ITEMS)


def write_outputs(run_dir: Path) -> Path:
    """RUN/eval/outputs.jsonl as `tunesmith eval` writes it (the contract's fields)."""
    rows = [{**item, "file": "data/support.jsonl", "reference": item["tuned"],
             "scores": {"base": {"exact_match": 0.0}, "tuned": {"exact_match": 1.0}}} for item in ITEMS]
    path = run_dir / "eval" / "outputs.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ReviewServer:
    process: subprocess.Popen
    root: str
    links: dict[str, str] = field(default_factory=dict)  # rater -> url
    stdout: str = ""
    stderr: str = ""


@contextmanager
def review_server(run_dir: Path, raters: Optional[str] = None) -> Iterator[ReviewServer]:
    """The real CLI in a subprocess, until the first rater link answers; stopped with SIGINT
    (Ctrl-C) at the end, its output then in .stdout and .stderr."""
    port = free_port()
    args = [sys.executable, "-m", "tunesmith.cli", "review", str(run_dir), "--port", str(port)]
    args += ["--raters", raters] if raters is not None else []
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = ReviewServer(process, f"http://127.0.0.1:{port}")
    try:
        server.links = _wait_until_serving(process, run_dir, port)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            server.stdout, server.stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            server.stdout, server.stderr = process.communicate()


def _wait_until_serving(process: subprocess.Popen, run_dir: Path, port: int) -> dict[str, str]:
    raters_file = run_dir / "review" / "raters.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tunesmith review exited {process.returncode}: {process.stderr.read()}")
        try:
            links = {row["name"]: row["url"] for row in json.loads(raters_file.read_text())}
            if all(f":{port}/" in url for url in links.values()) and httpx.get(next(iter(links.values()))).is_success:
                return links
        except (OSError, ValueError, httpx.TransportError):
            pass
        time.sleep(0.1)
    raise AssertionError("tunesmith review did not answer within 60 s")


def current_item(html: str) -> int:
    return int(re.search(r'name="item" value="(-?\d+)"', html).group(1))


def progress_text(html: str) -> str:
    return re.search(r'id="progress">([^<]*)<', html).group(1)


def vote(client: httpx.Client, url: str, item: int, choice: str, **extra: str) -> httpx.Response:
    return client.post(url, data={"item": str(item), "choice": choice, **extra})


def assignments(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """rater -> [(item, tuned_side)] in the rater's order, as stored."""
    with sqlite3.connect(run_dir / "review" / "votes.db") as conn:
        rows = conn.execute("SELECT rater, item, tuned_side FROM assignments ORDER BY rater, position").fetchall()
    order: dict[str, list[tuple[int, str]]] = {}
    for rater, item, side in rows:
        order.setdefault(rater, []).append((item, side))
    return order


# Each test of the module's server works with its own rater, so none depends on another's votes.
SERVED_RATERS = ("alice", "bob", "carol", "dan", "erin")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, ReviewServer]]:
    run_dir = tmp_path_factory.mktemp("run")
    write_outputs(run_dir)
    with review_server(run_dir, ",".join(SERVED_RATERS)) as server:
        yield run_dir, server


# ---------------------------------------------------------------- links and tokens

def test_links_are_printed_kept_private_and_reused_on_a_restart(tmp_path):
    write_outputs(tmp_path)
    with review_server(tmp_path, "alice,bob,carol") as first:
        pass
    assert first.process.returncode == 0, first.stderr
    printed = first.stdout.splitlines()
    assert printed[:3] == [f"{name}: {first.links[name]}" for name in ("alice", "bob", "carol")]
    assert printed[3:] == [f"links and tokens: {tmp_path / 'review' / 'raters.json'} (readable only by you)",
                           "Ctrl-C stops the server; votes are saved as they come",
                           f"stopped; 0 votes in {tmp_path / 'review' / 'votes.db'}"]
    tokens = {name: url.rsplit("/r/", 1)[1] for name, url in first.links.items()}
    assert all(url == f"{first.root}/r/{tokens[name]}" for name, url in first.links.items())
    assert len(set(tokens.values())) == 3 and all(len(token) == 32 for token in tokens.values())
    for secret in ("raters.json", "votes.db"):
        assert stat.S_IMODE((tmp_path / "review" / secret).stat().st_mode) == 0o600

    with review_server(tmp_path, "alice,dave") as second:  # a new name joins; nobody's link changes
        pass
    rows = json.loads((tmp_path / "review" / "raters.json").read_text())
    assert [row["name"] for row in rows] == ["alice", "bob", "carol", "dave"]
    assert {row["name"]: row["token"] for row in rows if row["name"] != "dave"} == tokens
    assert [row["url"] for row in rows] == [second.links[name] for name in ("alice", "bob", "carol", "dave")]

    with review_server(tmp_path) as third:  # --raters omitted: those already there
        pass
    assert third.process.returncode == 0, third.stderr
    assert [line.split(":")[0] for line in third.stdout.splitlines()[:4]] == ["alice", "bob", "carol", "dave"]
    assert {name: url.rsplit("/r/", 1)[1] for name, url in third.links.items()} == {
        row["name"]: row["token"] for row in rows}


def test_each_rater_has_an_own_order_and_balanced_sides(served):
    run_dir, _ = served
    order = assignments(run_dir)
    assert sorted(order) == list(SERVED_RATERS)
    for pairs in order.values():
        assert sorted(item for item, _ in pairs) == LINES
        assert sorted(side for _, side in pairs) == ["A"] * 3 + ["B"] * 3
    # Two raters alike in both order and sides: 1 chance in 720 x 20 for each pair of them.
    assert len({tuple(pairs) for pairs in order.values()}) == len(SERVED_RATERS)


# ---------------------------------------------------------------- who may see and vote

@pytest.mark.parametrize("path", ["/", "/r/", "/r", "/docs", "/redoc", "/openapi.json", "/r/not-a-token",
                                  "/r/{alice}/", "/r/{alice}x", "/r/{alice}/vote", "/static/x.css"])
def test_a_wrong_or_missing_token_and_any_other_path_are_a_bare_404(served, path):
    _, server = served
    alice = server.links["alice"].rsplit("/", 1)[1]
    url = server.root + path.replace("{alice}", alice)
    for response in (httpx.get(url), httpx.post(url, data={"item": "2", "choice": "A"})):
        assert (response.status_code, response.text) == (404, "Not Found")
        assert "location" not in response.headers


def test_a_vote_with_a_wrong_token_is_not_stored(served):
    run_dir, server = served
    before = read_votes(run_dir)
    guess = server.links["bob"][:-1] + ("A" if server.links["bob"][-1] != "A" else "B")
    assert httpx.post(guess, data={"item": str(LINES[0]), "choice": "A"}).status_code == 404
    assert read_votes(run_dir) == before


def test_a_token_votes_and_sees_progress_only_as_its_own_rater(served):
    run_dir, server = served
    with httpx.Client() as client:
        for _ in range(2):
            page = client.get(server.links["bob"]).text
            assert vote(client, server.links["bob"], current_item(page), "B").status_code == 303
        alice_page = client.get(server.links["alice"]).text
        assert progress_text(alice_page) == "1 of 6"
        assert progress_text(client.get(server.links["bob"]).text) == "3 of 6"
        # A field naming another rater is ignored: the vote is the link's.
        item = current_item(alice_page)
        response = vote(client, server.links["alice"], item, "tie", rater="bob", score="2", comment=" close ")
    assert (response.status_code, response.headers["location"]) == (303, "/r/" + server.links["alice"].rsplit("/", 1)[1])
    alice_votes = [v for v in read_votes(run_dir) if v["rater"] == "alice"]
    side = dict(assignments(run_dir)["alice"])[item]
    assert len(alice_votes) == 1
    assert {k: v for k, v in alice_votes[0].items() if k != "at"} == {
        "rater": "alice", "item": item, "choice": "tie", "tuned_side": side, "score": 2, "comment": "close"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", alice_votes[0]["at"])
    assert [v["rater"] for v in read_votes(run_dir)].count("bob") == 2


def test_bad_votes_get_a_400_and_are_not_stored(served):
    run_dir, server = served
    url = server.links["carol"]
    item = current_item(httpx.get(url).text)
    before = read_votes(run_dir)
    cases = [({"item": "999", "choice": "A"}, "item 999: not one of your items"),
             ({"item": "two", "choice": "A"}, "item: missing or not a line number"),
             ({"choice": "A"}, "item: missing or not a line number"),
             ({"item": "9" * 40, "choice": "A"}, "item: missing or not a line number"),
             ({"item": str(item), "choice": "C"}, "choice: must be one of A, B, tie, both_bad"),
             ({"item": str(item)}, "choice: must be one of A, B, tie, both_bad"),
             ({"item": str(item), "choice": "A", "score": "6"}, "score: must be a whole number from 1 to 5, or empty"),
             ({"item": str(item), "choice": "A", "score": "2.5"}, "score: must be a whole number from 1 to 5, or empty"),
             ({"item": str(item), "choice": "A", "comment": "x" * 10_001}, "comment: longer than 10,000 characters")]
    for data, message in cases:
        response = httpx.post(url, data=data)
        assert (response.status_code, response.text) == (400, message), data
    assert read_votes(run_dir) == before


def test_a_second_submit_of_the_same_item_does_not_count_and_the_first_stands(served):
    run_dir, server = served
    url = server.links["dan"]
    item = current_item(httpx.get(url).text)
    with httpx.Client() as client:
        first, again = vote(client, url, item, "A", score="5"), vote(client, url, item, "B")
    assert (first.status_code, again.status_code) == (303, 303)
    dan = [v for v in read_votes(run_dir) if v["rater"] == "dan"]
    assert [(v["item"], v["choice"], v["score"]) for v in dan] == [(item, "A", 5)]
    assert progress_text(httpx.get(url).text) == "2 of 6"


def test_the_page_names_no_model_and_escapes_answers(served):
    _, server = served
    url = server.links["erin"]
    token = url.rsplit("/", 1)[1]
    sources = []
    with httpx.Client() as client:
        while "Thank you" not in (page := client.get(url).text):
            sources.append(page)
            vote(client, url, current_item(page), "both_bad")
    assert len(sources) == N
    for source in sources + [page]:
        # The token is random text and might spell anything; nothing else may.
        assert "base" not in source.replace(token, "").lower() and "tuned" not in source.replace(token, "").lower()
        assert SCRIPT not in source
    assert sum("&lt;script&gt;alert(1)&lt;/script&gt; Tracking updates" in source for source in sources) == 1
    assert progress_text(page) == "6 of 6 done"
    assert re.search(r'You rated all <b id="count">6</b> pairs', page)


# ---------------------------------------------------------------- 50 raters at once

def test_fifty_concurrent_raters_leave_exactly_one_vote_each_per_item(tmp_path):
    """Every rater votes on every item in their own order, every fifth one submits each vote
    twice at the same moment: the store holds 50 x 6 votes, none lost, none counted twice."""
    write_outputs(tmp_path)
    names = [f"r{i:02d}" for i in range(50)]
    with review_server(tmp_path, ",".join(names)) as server:
        def rate(index: int) -> list[int]:
            url, seen = server.links[names[index]], []
            with httpx.Client(timeout=60) as client:
                while "Thank you" not in (page := client.get(url).text):
                    item = current_item(page)
                    seen.append(item)
                    choice = ("A", "B", "tie", "both_bad")[(index + item) % 4]
                    if index % 5:
                        assert vote(client, url, item, choice).status_code == 303
                    else:
                        assert _submit_twice_at_once(url, item, choice) == [303, 303]
            return seen

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            seen = dict(zip(names, pool.map(rate, range(len(names)))))
    votes = read_votes(tmp_path)
    assert len(votes) == 50 * N
    assert len({(v["rater"], v["item"]) for v in votes}) == 50 * N
    order = assignments(tmp_path)
    for i, name in enumerate(names):
        assert seen[name] == [item for item, _ in order[name]]  # each in the order drawn for them
        mine = {v["item"]: v for v in votes if v["rater"] == name}
        assert sorted(mine) == LINES
        assert all(v["choice"] == ("A", "B", "tie", "both_bad")[(i + item) % 4] for item, v in mine.items())
        assert all(v["tuned_side"] == side for item, side in order[name] for v in [mine[item]])
    assert len({tuple(item for item, _ in pairs) for pairs in order.values()}) > 1
    assert server.stdout.splitlines()[-1] == f"stopped; {50 * N} votes in {tmp_path / 'review' / 'votes.db'}"


def _submit_twice_at_once(url: str, item: int, choice: str) -> list[int]:
    start = threading.Barrier(2)

    def post(_: int) -> int:
        with httpx.Client(timeout=60) as client:
            start.wait()
            return vote(client, url, item, choice).status_code

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(post, range(2)))


# ---------------------------------------------------------------- refusals, in process

def test_without_eval_outputs_the_command_says_to_run_eval_first(tmp_path, capsys):
    assert run_guarded(["review", str(tmp_path), "--raters", "alice"]) == 2
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: {tmp_path}/eval/outputs.jsonl: not found; run `tunesmith eval {tmp_path}` first: it writes the "
        f"two answers per example that the raters compare")
    assert not (tmp_path / "review").exists()


NAME_RULE = ("use letters, digits, '.', '_' and '-' (starting with a letter or digit, at most 40 characters), "
             "e.g. --raters alice,bob")


@pytest.mark.parametrize("raters, message", [
    ("alice,,bob", ("--raters: an empty name (two commas in a row, or one at an end); give names separated by "
                    "commas, e.g. --raters alice,bob,carol")),
    ("alice,bob,alice", "--raters: alice and alice name the same rater; give each rater once"),
    ("alice,Alice", "--raters: alice and Alice name the same rater; give each rater once"),
    ("bob smith", "--raters: 'bob smith' is not a rater name: " + NAME_RULE),
    ("../x", "--raters: '../x' is not a rater name: " + NAME_RULE),
])
def test_bad_rater_names_are_refused_before_anything_is_written(tmp_path, capsys, raters, message):
    write_outputs(tmp_path)
    assert run_guarded(["review", str(tmp_path), "--raters", raters]) == 2
    assert capsys.readouterr().err.replace("\n", "") == f"error: {message}"
    assert not (tmp_path / "review").exists()


def test_the_first_start_needs_raters(tmp_path, capsys):
    write_outputs(tmp_path)
    assert run_guarded(["review", str(tmp_path)]) == 2
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: give the raters' names, e.g. --raters alice,bob,carol ({tmp_path}/review has no raters yet)")


def test_changed_outputs_are_refused_and_the_snapshot_is_what_is_shown(tmp_path, capsys):
    outputs = write_outputs(tmp_path)
    prepare_review(tmp_path, ["alice"])
    original = outputs.read_text()
    outputs.write_text(original.replace("Yes.", "Yes, of course."))
    assert run_guarded(["review", str(tmp_path)]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    review = tmp_path / "review"
    assert re.fullmatch(
        re.escape(f"error: {outputs} has changed since this review started (") + r"[0-9T:+-]+" + re.escape(
            f"): its votes refer to the answers shown then. To review the new answers, move {review} aside (e.g. "
            f"`mv {review} {review}-1`) and run this command again for a new round; to continue this round, "
            f"restore the outputs.jsonl it started from"), err)
    assert [item["base"] for item in read_items(tmp_path) if item["line"] == 20] == ["Yes."]
    outputs.write_text(original)  # restored: the review goes on with the same rater
    assert [r.name for r in prepare_review(tmp_path, None)] == ["alice"]
    outputs.unlink()  # gone: the snapshot holds everything the page shows
    assert [r.name for r in prepare_review(tmp_path, ["alice", "bob"])] == ["alice", "bob"]
    assert read_items(tmp_path) == [{k: item[k] for k in ("line", "prompt", "base", "tuned", "category")}
                                    for item in sorted(ITEMS, key=lambda item: item["line"])]


def test_a_rater_name_in_another_case_is_refused_to_keep_one_link_per_person(tmp_path, capsys):
    write_outputs(tmp_path)
    prepare_review(tmp_path, ["alice"])
    assert run_guarded(["review", str(tmp_path), "--raters", "Alice"]) == 2
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: --raters: Alice: {tmp_path}/review already has the rater alice; give that name to keep their link")


@pytest.mark.parametrize("line, text, problem", [
    (2, "{not json", "not JSON (Expecting property name enclosed in double quotes)"),
    (1, json.dumps({"line": 1, "prompt": [], "base": "x"}), "field `tuned` missing or not text"),
    (1, json.dumps({"line": "1", "prompt": [], "base": "x", "tuned": "y"}), "field `line` missing or not a whole number"),
    (1, json.dumps({"line": 1, "prompt": [{"role": "user"}], "base": "x", "tuned": "y"}),
     "field `prompt` is not a list of {\"role\", \"content\"} turns"),
])
def test_a_broken_outputs_row_is_named_by_file_and_line(tmp_path, capsys, line, text, problem):
    outputs = tmp_path / "eval" / "outputs.jsonl"
    outputs.parent.mkdir()
    good = json.dumps({"line": 7, "prompt": [], "base": "x", "tuned": "y"})
    outputs.write_text((good + "\n" + text + "\n") if line == 2 else (text + "\n"))
    assert run_guarded(["review", str(tmp_path), "--raters", "alice"]) == 2
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: {outputs}:{line}: {problem}; run `tunesmith eval {tmp_path}` again to rewrite it")
    assert not (tmp_path / "review").exists()


def test_a_port_in_use_is_named(tmp_path, capsys):
    write_outputs(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_guarded(["review", str(tmp_path), "--raters", "alice", "--port", str(port)]) == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: --port {port}: already in use on 127.0.0.1 (is this review already running?); stop that server "
        f"or give another --port")
    assert not (tmp_path / "review").exists()


@pytest.mark.parametrize("host, url_host, local", [("127.0.0.1", "127.0.0.1", True), ("localhost", "localhost", True),
                                                   ("::1", "[::1]", True), ("192.0.2.7", "192.0.2.7", False),
                                                   ("0.0.0.0", socket.gethostname(), False)])
def test_a_host_off_this_machine_gets_a_warning_with_the_links(tmp_path, capsys, host, url_host, local):
    from tunesmith.cli import print_review_links
    from tunesmith.eval.review import write_links
    from tunesmith.eval.review.store import Rater

    links = write_links(tmp_path, [Rater("alice", "tok")], host, 8700)
    assert (links.links, links.local) == ([("alice", f"http://{url_host}:8700/r/tok")], local)
    print_review_links(links)
    warning = ("warning: the page is open to the network: anyone who has a link can vote as its rater, and the "
               "links are the only protection (plain HTTP: use a network you trust)")
    raters_file = tmp_path / "review" / "raters.json"
    assert capsys.readouterr().out.splitlines() == [
        f"alice: http://{url_host}:8700/r/tok", f"links and tokens: {raters_file} (readable only by you)",
        *([] if local else [warning]), "Ctrl-C stops the server; votes are saved as they come"]
