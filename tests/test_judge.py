"""The LLM judge against a real HTTP server on 127.0.0.1 that speaks OpenAI's chat API and
decides deterministically from the prompt, so every vote can be asserted exactly."""

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.eval.judge import (
    JUDGE_EXTRA, MAX_TOKENS, SYSTEM_PROMPT, api_root, judge_items, parse_verdict, read_cache, resolve_api_key,
    unparsed_judgements,
)
from tunesmith.eval.stats import summarise_votes

MODEL = "fake-judge"
MARKER = "GOOD"
ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]",
                    re.DOTALL)
REFERENCE = re.compile(r"\[The Start of Reference Answer\]\n(.*?)\n\[The End of Reference Answer\]", re.DOTALL)


class FakeJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions. Modes (server.mode):
    marker    prefers the answer holding MARKER ([[C]] when both or neither do), after quoting
              the verdict format, so only the last verdict may count
    always_a  "[[A]]" whatever it is shown: the two orders always disagree
    garbage   an answer without a verdict
    shape     JSON that is not a chat completion
    html      an HTML page with status 200
    slow      waits a second before answering as `marker` does
    With server.key set, any other bearer token gets a 401 in OpenAI's error shape; with
    server.fail_after = n, every request after the n-th does (a key revoked mid-run)."""

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": None}})
        if server.mode == "slow":
            time.sleep(1.0)
        revoked = server.fail_after is not None and len(server.requests) > server.fail_after
        if revoked or (server.key and self.headers.get("authorization") != f"Bearer {server.key}"):
            return self.reply(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                              "code": "invalid_api_key"}})
        if server.mode == "shape":
            return self.reply(200, {"result": "fine"})
        if server.mode == "html":
            return self.reply(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        text = self.judgement(body["messages"][-1]["content"])
        self.reply(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    def judgement(self, prompt: str) -> str:
        if self.server.mode == "always_a":
            return "Assistant A is better. [[A]]"
        if self.server.mode == "garbage":
            return "Both answers have merits and I decline to choose."
        answers = dict(ANSWER.findall(prompt))
        good = [side for side in "AB" if MARKER in answers[side]]
        verdict = good[0] if len(good) == 1 else "C"
        return f'The format asks for "[[A]]", "[[B]]" or "[[C]]". Compared with the reference: [[{verdict}]]'

    def reply(self, status: int, payload, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the `slow` mode's timeout test)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    httpd.mode, httpd.key, httpd.fail_after, httpd.requests, httpd.lock = "marker", None, None, [], threading.Lock()
    httpd.url = f"http://127.0.0.1:{httpd.server_port}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def no_keys_from_the_environment(monkeypatch) -> None:
    for name in ("TUNESMITH_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def item(line: int, base: str, tuned: str) -> dict:
    return {"line": line, "file": "data/prod.jsonl", "category": None,
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {line}"}],
            "reference": f"reference {line}", "base": base, "tuned": tuned, "scores": {}}


# Tuned better on 7 and 9, base better on 8, neither on 10, both on 11.
ITEMS = [item(7, "meh", f"{MARKER} answer"), item(8, f"{MARKER} answer", "meh"), item(9, "no", f"very {MARKER}"),
         item(10, "one", "two"), item(11, f"{MARKER} one", f"{MARKER} two")]


def asked_per_item(server) -> dict[int, int]:
    counts: dict[int, int] = {}
    for request in server.requests:
        reference = REFERENCE.search(request["body"]["messages"][-1]["content"]).group(1)
        line = int(reference.split()[-1])
        counts[line] = counts.get(line, 0) + 1
    return counts


def judge(server, cache: Path, items=ITEMS, **kwargs) -> list[dict]:
    return judge_items(items, url=server.url, model=MODEL, api_key=None, cache=cache, **kwargs)


# --- votes --------------------------------------------------------------------------


def test_each_item_is_asked_twice_and_both_orders_must_agree_for_a_win(server, tmp_path: Path) -> None:
    votes = judge(server, tmp_path / "review" / "judge.jsonl")
    assert [(v["item"], v["choice"]) for v in votes] == [(7, "A"), (8, "B"), (9, "A"), (10, "tie"), (11, "tie")]
    for v in votes:
        assert (v["rater"], v["tuned_side"], v["score"], v["comment"]) == (f"judge:{MODEL}", "A", None, "")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v["at"])
    assert asked_per_item(server) == {7: 2, 8: 2, 9: 2, 10: 2, 11: 2}
    summary = summarise_votes(votes, {})
    assert (summary["tuned_wins"], summary["base_wins"], summary["ties"]) == (2, 1, 2)
    assert summary["win_rate"] == (2 + 2 / 2) / 5
    assert summary["raters"] == {f"judge:{MODEL}": {"votes": 5}}


def test_the_request_is_a_greedy_capped_pairwise_question_with_both_answer_orders(server, tmp_path: Path) -> None:
    judge(server, tmp_path / "judge.jsonl", items=ITEMS[:1])
    bodies = [r["body"] for r in server.requests]
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in bodies} == {(MODEL, 0, MAX_TOKENS)}
    assert all(b["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} for b in bodies)
    shown = sorted(tuple(dict(ANSWER.findall(b["messages"][1]["content"])).values()) for b in bodies)
    assert shown == [(f"{MARKER} answer", "meh"), ("meh", f"{MARKER} answer")]
    user = bodies[0]["messages"][1]["content"]
    assert "System: Be brief.\n\nUser: question 7" in user and "reference 7" in user
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {"Bearer no-key"}  # local servers need no key


def test_a_judge_that_always_picks_a_disagrees_with_itself_so_every_vote_is_a_tie(server, tmp_path: Path) -> None:
    server.mode = "always_a"
    votes = judge(server, tmp_path / "judge.jsonl")
    assert [v["choice"] for v in votes] == ["tie"] * 5
    assert summarise_votes(votes, {})["win_rate"] == 0.5


def test_an_answer_without_a_verdict_is_a_tie_and_is_recorded(server, tmp_path: Path) -> None:
    server.mode = "garbage"
    cache = tmp_path / "judge.jsonl"
    votes = judge(server, cache)
    assert [v["choice"] for v in votes] == ["tie"] * 5
    assert unparsed_judgements(ITEMS, model=MODEL, cache=cache) == 10
    assert unparsed_judgements(ITEMS[:2], model=MODEL, cache=cache) == 4
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {(r["verdict"], r["winner"], r["judgement"]) for r in rows} == {
        (None, "tie", "Both answers have merits and I decline to choose.")}


@pytest.mark.parametrize("text, verdict", [
    ("[[A]]", "A"), ('Use "[[A]]" or "[[B]]". Final verdict: [[B]]', "B"), ("tie: [[ c ]]", "C"),
    ("A is better", None), ("[A]", None), ("", None),
])
def test_parse_verdict_takes_the_last_verdict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


# --- the cache ----------------------------------------------------------------------


def test_a_second_run_with_the_cache_asks_nothing_and_gives_the_same_votes(server, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    first = judge(server, cache)
    assert len(server.requests) == 10
    progress: list[tuple[int, int]] = []
    assert judge(server, cache, on_progress=lambda done, total: progress.append((done, total))) == first
    assert len(server.requests) == 10
    assert progress == [(10, 10)]


def test_an_interrupted_run_resumes_and_asks_only_what_is_missing(server, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    first = judge(server, cache)
    rows = cache.read_text().splitlines()
    # Killed after three judgements, halfway through writing the fourth.
    cache.write_text("\n".join(rows[:3]) + "\n" + rows[3][:25])
    server.requests.clear()
    progress: list[tuple[int, int]] = []
    again = judge(server, cache, on_progress=lambda done, total: progress.append((done, total)))
    assert len(server.requests) == 7
    assert [(v["item"], v["choice"]) for v in again] == [(v["item"], v["choice"]) for v in first]
    assert progress == [(3, 10), (4, 10), (5, 10), (6, 10), (7, 10), (8, 10), (9, 10), (10, 10)]
    assert len(read_cache(cache, MODEL)) == 10  # the cut-short line is skipped, the rest readable


def test_a_run_that_fails_midway_keeps_what_it_was_told_and_the_next_run_asks_the_rest(server, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    server.fail_after = 4
    with pytest.raises(TunesmithError, match="the API key was refused"):
        judge(server, cache, concurrency=2)
    kept = len(read_cache(cache, MODEL))
    assert 1 <= kept <= 4  # the first request, then whatever the workers finished before the 401
    server.fail_after, asked_before = None, len(server.requests)
    votes = judge(server, cache)
    assert len(server.requests) - asked_before == 10 - kept
    assert [v["choice"] for v in votes] == ["A", "B", "A", "tie", "tie"]


def test_no_items_ask_nothing(server, tmp_path: Path) -> None:
    assert judge(server, tmp_path / "judge.jsonl", items=[]) == []
    assert server.requests == []


def test_a_changed_answer_or_another_model_is_asked_again(server, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    judge(server, cache)
    changed = [*ITEMS[:2], item(9, f"{MARKER} now", "no"), *ITEMS[3:]]
    server.requests.clear()
    votes = judge(server, cache, items=changed)
    assert asked_per_item(server) == {9: 2}
    assert unparsed_judgements(changed, model=MODEL, cache=cache) == 0
    assert votes[2]["choice"] == "B"
    server.requests.clear()
    judge_items(ITEMS, url=server.url, model="other-judge", api_key=None, cache=cache)
    assert len(server.requests) == 10


# --- keys and URLs ------------------------------------------------------------------


def test_the_key_comes_from_the_argument_then_the_environment(server, tmp_path: Path, monkeypatch) -> None:
    server.key = "sekret"
    monkeypatch.setenv("TUNESMITH_JUDGE_API_KEY", "sekret")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    judge(server, tmp_path / "b.jsonl", items=ITEMS[:1])
    judge_items(ITEMS[:1], url=server.url, model=MODEL, api_key="sekret", cache=tmp_path / "c.jsonl")
    assert {r["auth"] for r in server.requests} == {"Bearer sekret"}
    assert resolve_api_key(None, server.url) == "sekret"
    assert resolve_api_key("given", server.url) == "given"


def test_an_openai_key_goes_to_openai_only(monkeypatch) -> None:
    """OPENAI_API_KEY is set in many shells; sending it to any URL named by --judge would hand
    it to a third party."""
    monkeypatch.delenv("TUNESMITH_JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    assert resolve_api_key(None, "https://api.openai.com/v1") == "openai-key"
    assert resolve_api_key(None, "http://127.0.0.1:8000/v1") != "openai-key"
    assert resolve_api_key(None, "https://api.openai.com.evil.example/v1") != "openai-key"


@pytest.mark.parametrize("typed, root", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1"),
    ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
])
def test_api_root_accepts_what_a_user_may_type(typed: str, root: str) -> None:
    assert api_root(typed) == root


def test_bare_host_url_gets_v1(server, tmp_path: Path) -> None:
    bare = server.url.removesuffix("/v1")
    judge_items(ITEMS[:1], url=bare, model=MODEL, api_key=None, cache=tmp_path / "judge.jsonl")
    assert len(server.requests) == 2


# --- errors: one line each ----------------------------------------------------------


def one_line_error(**kwargs) -> str:
    with pytest.raises(TunesmithError) as caught:
        judge_items(ITEMS, model=MODEL, api_key=kwargs.pop("api_key", None), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unreachable_url_is_one_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = one_line_error(url=f"http://127.0.0.1:{port}/v1", cache=tmp_path / "judge.jsonl", max_retries=0)
    assert message.startswith(f"judge endpoint http://127.0.0.1:{port}/v1: cannot connect (")
    assert message.endswith("check the URL, the port and that the server is running")


def test_a_server_that_does_not_answer_in_time_is_one_error(server, tmp_path: Path) -> None:
    server.mode = "slow"
    message = one_line_error(url=server.url, cache=tmp_path / "judge.jsonl", timeout=0.2, max_retries=0)
    assert message == (f"judge endpoint {server.url}: no answer within 0.2 s (tried 1 times): check that the "
                       f"server is up and not overloaded")


def test_a_refused_key_is_one_error_after_one_request(server, tmp_path: Path) -> None:
    server.key = "sekret"
    message = one_line_error(url=server.url, api_key="wrong", cache=tmp_path / "judge.jsonl")
    assert message == (f"judge endpoint {server.url}: the API key was refused (HTTP 401: Incorrect API key "
                       f"provided): set the right key in TUNESMITH_JUDGE_API_KEY or OPENAI_API_KEY")
    assert len(server.requests) == 1  # the first request goes alone: no burst of failures
    assert not (tmp_path / "judge.jsonl").read_text()


def test_a_wrong_path_is_one_error_naming_the_api_root(server, tmp_path: Path) -> None:
    url = server.url.replace("/v1", "/api")
    message = one_line_error(url=url, cache=tmp_path / "judge.jsonl")
    assert message == (f"judge endpoint {url}: HTTP 404 for /chat/completions (no route /api/chat/completions): "
                       f"check that the URL is the API root (it usually ends in /v1) and that the server serves "
                       f"model '{MODEL}'")


@pytest.mark.parametrize("mode, shown", [('shape', '{"result": "fine"}'), ("html", "Welcome to nginx!")])
def test_an_answer_that_is_not_a_chat_completion_is_one_error(server, tmp_path: Path, mode: str, shown: str) -> None:
    server.mode = mode
    message = one_line_error(url=server.url, cache=tmp_path / "judge.jsonl")
    assert message.startswith(f"{server.url}/chat/completions answered with something that is not an OpenAI chat "
                              f"completion (")
    assert shown in message
    assert message.endswith("check that the URL is the API root of an OpenAI-compatible server (it usually ends "
                            "in /v1)")


def test_a_url_that_is_not_http_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^judge URL 'localhost:8000': not an http\(s\) URL; give the API root"):
        judge_items(ITEMS, url="localhost:8000", model=MODEL, api_key=None, cache=tmp_path / "judge.jsonl")


def test_without_the_openai_package_the_error_names_the_extra(server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(UsageError) as caught:
        judge(server, tmp_path / "judge.jsonl")
    assert str(caught.value) == JUDGE_EXTRA == "the LLM judge needs the optional extra: pip install 'tunesmith[judge]'"


def test_a_row_without_an_answer_is_one_error_naming_its_line(server, tmp_path: Path) -> None:
    broken = [item(3, "x", "y") | {"tuned": None}]
    with pytest.raises(TunesmithError, match=r"^outputs.jsonl line 3: field 'tuned' is missing, expected text"):
        judge(server, tmp_path / "judge.jsonl", items=broken)
    assert server.requests == []
