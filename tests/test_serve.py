"""`tunesmith serve` through the real CLI: a uvicorn server on 127.0.0.1 serving two tiny runs
on one tiny base, driven by the official `openai` client and by raw HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from test_eval_cli import read_jsonl
from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows

KEY = "test-key-0123456789"
BUDGET = ["--set", "eval.max_new_tokens=10"]  # eval's answers: 10 new tokens at most


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Two evaluated runs on the same tiny base, trained on different rows."""
    tmp = tmp_path_factory.mktemp("serve")
    folders = []
    plain = [{**row, "response": "Sure, done."} for row in order_rows(60)[30:]]  # a different answer to learn
    for name, rows in (("orders", order_rows(30)), ("other", plain)):
        data = write_rows(tmp / f"{name}.jsonl", rows)
        tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", tmp / name, "--no-progress",
                  "--set", "train.max_steps=6", "--set", "data.val_fraction=0.2", "--set", "train.lr=0.01", *FAST)
        tunesmith("eval", tmp / name, "--no-general", *BUDGET)
        folders.append(tmp / name)
    return folders


class Server:
    """`tunesmith serve …` in a child process; the URL and key are read from what it prints."""

    def __init__(self, args: list, env: dict[str, str], log: Path) -> None:
        self.log = log
        inherited = {k: v for k, v in os.environ.items() if k != "TUNESMITH_API_KEY"}
        self.process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", *map(str, args),
                                         "--port", "0"], stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                                        env={**inherited, "COLUMNS": "300", **env})
        self.printed: list[str] = []
        deadline = time.monotonic() + 120
        while not any("Ctrl-C" in line for line in self.printed):
            line = self.process.stdout.readline()
            assert line and time.monotonic() < deadline, f"serve did not start: {self.printed} {log.read_text()}"
            self.printed.append(line.rstrip("\n"))
        self.url = re.search(r" at (http://\S+/v1)", "\n".join(self.printed)).group(1)

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def http(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url.removesuffix("/v1"), headers=headers, timeout=60)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    served = Server(runs, {"TUNESMITH_API_KEY": KEY}, log)
    yield served
    served.stop()


def held_out(run: Path) -> list[dict]:
    return read_jsonl(run / "eval" / "outputs.jsonl")


def greedy(server: Server, model: str, messages: list[dict], max_tokens: int = 10,
           **kwargs) -> openai.types.chat.ChatCompletion:
    return server.client().chat.completions.create(model=model, messages=messages, temperature=0,
                                                   max_tokens=max_tokens, **kwargs)


def test_models_lists_each_run_under_its_folder_name_and_the_base(server):
    assert [m.id for m in server.client().models.list().data] == ["base", "orders", "other"]
    assert server.client().models.retrieve("orders").owned_by == "tunesmith"
    assert any(line.startswith("serving base, orders, other (") for line in server.printed), server.printed
    assert not any(KEY in line for line in server.printed), "a key the user gave is never printed"


def test_greedy_answers_equal_what_eval_recorded_for_every_model(server, runs):
    """Each adapter is chosen per request on one base: every held-out answer of both runs and of
    the base equals what `tunesmith eval` wrote, and the two runs do answer differently."""
    compared = 0
    for run in runs:
        for row in held_out(run):
            for model, column in ((run.name, "tuned"), ("base", "base")):
                answer = greedy(server, model, row["prompt"]).choices[0].message.content
                assert answer.strip() == row[column], (model, row["line"])
                compared += 1
    assert compared == 2 * (6 + 6)  # 6 held-out rows per run, tuned and base
    assert [r["tuned"] for r in held_out(runs[0])] != [r["base"] for r in held_out(runs[0])]
    first = held_out(runs[0])[0]["prompt"]
    assert greedy(server, "orders", first).choices[0].message.content != \
        greedy(server, "other", first).choices[0].message.content


def test_streamed_chat_equals_the_whole_answer_and_ends_with_done(server, runs):
    prompt = held_out(runs[0])[0]["prompt"]
    whole = greedy(server, "orders", prompt)
    stream = server.client().chat.completions.create(model="orders", messages=prompt, temperature=0, max_tokens=10,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "orders", "messages": prompt, "temperature": 0, "max_tokens": 10, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_route_continues_raw_text_streamed_or_not(server):
    client = server.client()
    whole = client.completions.create(model="orders", prompt="Hi, Ann here,", temperature=0, max_tokens=8)
    assert whole.object == "text_completion" and whole.usage.prompt_tokens > 0
    assert whole.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="orders", prompt="Hi, Ann here,", temperature=0, max_tokens=8, stream=True))
    assert streamed == whole.choices[0].text


def test_max_tokens_and_stop_strings_end_an_answer(server, runs):
    prompt = held_out(runs[0])[1]["prompt"]
    long = greedy(server, "orders", prompt, max_tokens=40)
    answer = long.choices[0].message.content
    short = greedy(server, "orders", prompt, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert answer.startswith(short.choices[0].message.content)
    stop = answer[len(answer) // 2 : len(answer) // 2 + 2]
    assert len(stop) == 2 and stop.strip(), answer
    cut = greedy(server, "orders", prompt, max_tokens=40, stop=["never appears", stop])
    assert cut.choices[0].message.content == answer[: answer.index(stop)]  # the stop string is not returned
    assert cut.choices[0].finish_reason == "stop"


def test_a_seed_reproduces_a_sampled_answer_and_a_tiny_top_p_is_greedy(server, runs):
    client = server.client()
    prompt = held_out(runs[0])[2]["prompt"]
    sampled = [client.chat.completions.create(model="orders", messages=prompt, temperature=1.5, seed=seed,
                                              max_tokens=12).choices[0].message.content for seed in (7, 7, 8, 9)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) > 1, "different seeds never differed: the seed is not what varies the answer"
    nucleus = client.chat.completions.create(model="orders", messages=prompt, temperature=1.0, top_p=1e-6,
                                             seed=3, max_tokens=10)
    assert nucleus.choices[0].message.content == greedy(server, "orders", prompt).choices[0].message.content


def test_every_route_wants_the_key(server):
    for key in (None, "wrong-key-0123456789", KEY[:-1]):
        with server.http(key) as http:
            for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/base"),
                                 ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/nope")):
                response = http.request(method, path, json={})
                assert response.status_code == 401, (key, path)
                assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong-key-0123456789").models.list()
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        assert http.get("/nope").json()["error"]["code"] == "not_found"


def test_errors_have_openai_shape_and_name_the_parameter(server, runs):
    client = server.client()
    prompt = held_out(runs[0])[0]["prompt"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=prompt)
    assert e.value.code == "model_not_found" and "base, orders, other" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="orders", messages=prompt, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="orders", messages=prompt, max_tokens=600)
    assert e.value.code == "context_length_exceeded" and "512" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="orders", messages=[{"role": "tool", "content": "x"}])
    assert e.value.param == "messages.0.role"
    with server.http() as http:
        response = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_log_has_a_line_per_request_and_no_prompt_text(server):
    marker = "ZEBRA-7731"
    server.client().chat.completions.create(model="orders", messages=[{"role": "user", "content": marker}],
                                            temperature=0, max_tokens=2)
    time.sleep(0.2)
    log = server.log.read_text()
    assert "POST /v1/chat/completions 200 model=orders" in log
    assert marker not in log


def test_a_burst_is_answered_or_refused_with_429_and_the_server_stays_up(runs, tmp_path):
    """No key given: one is made and printed once. One request runs, one waits; the rest of a
    burst of 12 is refused at once with 429 and Retry-After."""
    server = Server([runs[0], "--max-waiting", "1"], {}, tmp_path / "server.log")
    try:
        key = re.search(r"API key \(shown once.*\): (\S+)", "\n".join(server.printed)).group(1)
        statuses: list[tuple[int, str | None]] = []

        def ask() -> None:
            with server.http(key) as http:
                r = http.post("/v1/chat/completions", json={"model": "orders", "max_tokens": 40, "temperature": 0,
                                                            "messages": [{"role": "user", "content": "Hi, Ann"}]})
                statuses.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=ask) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(code for code, _ in statuses)
        assert set(codes) <= {200, 429} and codes.count(200) >= 2 and codes.count(429) >= 1, codes
        assert all(int(after) >= 1 for code, after in statuses if code == 429)
        with server.http(key) as http:
            assert http.get("/health").json() == {"status": "ok", "models": ["base", "orders"], "waiting": 0,
                                                  "max_waiting": 1}
        assert server.process.poll() is None
    finally:
        server.stop()


def test_a_copied_adapter_folder_serves_without_its_run_folder(runs, tmp_path):
    """Another machine has only RUN/adapter: its tunesmith.json names the base, and the answers
    are the run's."""
    from tunesmith.serve.engine import Engine, Sampling
    from tunesmith.serve.sources import plan_serving

    copied = tmp_path / "shipped" / "my-adapter"
    shutil.copytree(runs[0] / "adapter", copied)
    plan = plan_serving([copied])
    assert plan.names == ["base", "orders"]  # named after the run it came from
    engine = Engine(plan)
    for row in held_out(runs[0]):
        result = engine.generate("orders", engine.chat_prompt(row["prompt"]), Sampling(max_tokens=10, temperature=0))
        assert result.text.strip() == row["tuned"]


def test_streamed_text_never_sends_part_of_a_stop_string(tiny_tokenizer):
    """A stop string split over several tokens: what was sent before the cut is exactly the
    answer without it, and no piece of the stop string ever left."""
    from tunesmith.serve.engine import StopText

    text = 'Hi, Maria Lopez from Porto. {"name": "Maria Lopez"}'
    tokens = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop in ("Porto", ". {", '"}', "zzz"):
        stream = StopText(tiny_tokenizer, [stop, "never"])
        sent = []
        for token in tokens:
            delta, stopped = stream.add(token)
            sent.append(delta)
            if stopped:
                break
        sent.append(stream.flush())
        expected = text[: text.index(stop)] if stop in text else text
        assert "".join(sent) == stream.final() == expected, stop
    assert len(tokens) > 10  # several tokens, so a stop string spans more than one


def test_a_port_in_use_is_one_error_before_anything_loads(runs):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tunesmith("serve", runs[0], "--port", port, "--api-key", KEY, check=False)
    assert result.returncode == 1
    assert f"error: --port {port}: already in use on 127.0.0.1 (is tunesmith serve already running?)" in \
        " ".join(result.stderr.split())
