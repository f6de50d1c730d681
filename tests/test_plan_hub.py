"""`tunesmith plan --model ORG/NAME` for a hub model the catalog lacks: only its config.json
comes from the hub (HF_ENDPOINT), into the HF cache; every way that fails is one message
naming the repo and what to do instead.

The hub is a real HTTP server on 127.0.0.1 that answers the way the hub's resolve route does
(X-Repo-Commit and ETag headers; X-Error-Code RepoNotFound on a 404) and logs each request.
Telemetry is off (HF_HUB_DISABLE_TELEMETRY): otherwise huggingface_hub itself asks the
endpoint for its agent registry (/api/agent-harnesses) once a day, which is not ours to test,
and in-process it would ask huggingface.co, the endpoint it read at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from test_plan_cli import plan_json
from tunesmith.catalog.model_configs import catalog_entry
from tunesmith.models.arch import UnsupportedModel
from tunesmith.models.facts import model_config, model_facts

COMMIT = "0123456789abcdef0123456789abcdef01234567"
QWEN3 = catalog_entry("qwen3-8b")["config"]
LLAMA = catalog_entry("llama-3.1-8b")["config"]


@contextmanager
def fake_hub(repos: dict[str, dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """(endpoint, request log) of a hub serving each repo's config.json and nothing else."""
    log: list[dict[str, str]] = []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # the log below is the record
            pass

        def answer(self, with_body: bool) -> None:
            log.append({"method": self.command, "path": self.path,
                        "authorization": self.headers.get("Authorization", "")})
            repo = "/".join(self.path.split("/")[1:3])
            if repo in repos and self.path == f"/{repo}/resolve/main/config.json":
                body = json.dumps(repos[repo]).encode()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
            else:
                body = b'{"error": "Repository not found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.answer(False)

        def do_GET(self) -> None:
            self.answer(True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Downloads on (conftest turns them off for every other test), the cache in tmp_path."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, when huggingface_hub was imported
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for proxy in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(proxy)
    return monkeypatch


def message(source: str) -> str:
    with pytest.raises(UnsupportedModel) as caught:
        model_facts(source)
    text = str(caught.value)
    assert "\n" not in text  # one line, as the CLI prints it
    return text


def test_plan_fetches_only_config_json_and_plans_as_the_catalog_does(tmp_path):
    """Through the real CLI: the plan of a served Qwen3-8B config equals the catalog's plan
    of the same config, and the hub saw requests for config.json alone, with the token."""
    with fake_hub({"someorg/qwen3-8b-copy": QWEN3}) as (endpoint, log):
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.lower().endswith("_proxy")}
        env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hub"), HF_TOKEN="hf_test_token",
                   HF_HUB_DISABLE_TELEMETRY="1", TUNESMITH_HOME=str(tmp_path / "home"))
        args = ["--method", "full", "--tokens", "20M", "--json"]
        result = subprocess.run([sys.executable, "-m", "tunesmith.cli", "plan", "--model", "someorg/qwen3-8b-copy",
                                 *args], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    fetched = json.loads(result.stdout)
    catalog, _ = plan_json("--model", "qwen3-8b", *args[:-1])
    cached = tmp_path / "hub" / "models--someorg--qwen3-8b-copy" / "snapshots" / COMMIT / "config.json"
    assert fetched["model"]["config_from"] == str(cached) and json.loads(cached.read_text()) == QWEN3
    for plan, alias in ((fetched, "someorg/qwen3-8b-copy"), (catalog, "qwen3-8b")):
        del plan["model"]["config_from"], plan["this_machine"]  # where it came from; this machine's free memory
        command = plan["recommendation"].pop("train_command")
        assert command.startswith(f"tunesmith train CONFIG.yaml --set model.source={alias} --set method.name=full ")
    assert fetched == catalog
    assert {r["path"] for r in log} == {"/someorg/qwen3-8b-copy/resolve/main/config.json"}
    assert {r["authorization"] for r in log} == {"Bearer hf_test_token"}


def test_a_fetched_config_is_read_from_the_cache_afterwards(online):
    with fake_hub({"someorg/llama-copy": LLAMA}) as (endpoint, log):
        online.setenv("HF_ENDPOINT", endpoint)
        assert model_facts("someorg/llama-copy")[0] == model_facts("llama-3.1-8b")[0]
        asked = len(log)
        config, where = model_config("someorg/llama-copy")
    assert config == LLAMA and where.endswith(f"{COMMIT}/config.json") and len(log) == asked


def test_a_hub_id_the_catalog_holds_is_planned_from_the_catalog_without_asking(online):
    with fake_hub({}) as (endpoint, log):
        online.setenv("HF_ENDPOINT", endpoint)
        assert model_config("Qwen/Qwen3-8B") == (QWEN3, "catalog:qwen3-8b")
    assert log == []


def test_a_repo_the_hub_does_not_have_is_one_message_naming_it(online):
    with fake_hub({}) as (endpoint, log):
        online.setenv("HF_ENDPOINT", endpoint)
        text = message("someorg/no-such-model")
    assert text.startswith(f"someorg/no-such-model: no model someorg/no-such-model on {endpoint} (check the "
                           "org/name spelling; a private model needs HF_TOKEN")
    assert "catalog alias" in text and [r["path"] for r in log] == ["/someorg/no-such-model/resolve/main/config.json"]


def test_a_hub_that_never_answers_times_out_with_a_message(online):
    """The library's download retries a timed-out request for up to a minute; our own HEAD,
    without retries, gives up after HF_HUB_ETAG_TIMEOUT seconds."""
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        online.setenv("HF_ENDPOINT", endpoint)
        online.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        start = time.monotonic()
        text = message("someorg/slow-model")
        took = time.monotonic() - start
    assert f"the hub ({endpoint}) did not answer within 1 s (HF_HUB_ETAG_TIMEOUT" in text
    assert text.startswith("someorg/slow-model: its config.json is not in the local HF cache")
    assert took < 5


def test_offline_or_unreachable_says_what_to_do_instead(online, tmp_path):
    with fake_hub({"someorg/llama-copy": LLAMA}) as (endpoint, log):
        online.setenv("HF_ENDPOINT", endpoint)
        online.setenv("HF_HUB_OFFLINE", "1")
        text = message("someorg/llama-copy")
    assert log == []
    assert "someorg/llama-copy: its config.json is not in the local HF cache" in text
    assert "downloads are off (HF_HUB_OFFLINE" in text
    assert "plan from a catalog alias instead (catalog aliases: gemma-2-2b," in text
    assert "give its path (--model PATH/config.json, or the folder that holds it)" in text
    online.delenv("HF_HUB_OFFLINE")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        online.setenv("HF_ENDPOINT", endpoint)
        assert f"the hub ({endpoint}) cannot be reached from here" in message("someorg/llama-copy")
    # What the message offers works offline: the config.json itself.
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    assert model_facts(str(tmp_path / "config.json"))[0] == model_facts("llama-3.1-8b")[0]


def test_remote_code_and_unknown_architectures_are_refused_by_name(online):
    custom = {**LLAMA, "model_type": "frobnicator", "auto_map": {"AutoConfig": "frob.FrobConfig"}}
    with fake_hub({"someorg/custom": custom, "someorg/odd": {**LLAMA, "model_type": "gpt_neox"}}) as (endpoint, log):
        online.setenv("HF_ENDPOINT", endpoint)
        remote, unknown = message("someorg/custom"), message("someorg/odd")
    assert ("model architecture (model_type) 'frobnicator' comes with its own Python code (auto_map), which "
            "tunesmith does not run (trust_remote_code is off)") in remote
    assert "model architecture (model_type) 'gpt_neox' is not supported by the planner; supported: llama" in unknown
    assert {r["path"].rsplit("/", 1)[1] for r in log} == {"config.json"}
