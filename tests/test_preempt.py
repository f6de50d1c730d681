"""Stop requests: signals stop the loop after its current step, a second Ctrl-C aborts, and
a cloud preemption notice (served here by a local metadata server that enforces each
provider's handshake) asks for the same clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import tunesmith
from tunesmith.train.preempt import METADATA_URL_ENV, PreemptionWatcher, StopRequest

FAST = 0.02  # poll interval in these tests: the server answers at once
DEADLINE = 5.0


# ---------------------------------------------------------------- StopRequest in-process

def test_request_keeps_the_first_reason_and_when():
    stop = StopRequest(clock=iter([100.0, 200.0]).__next__)
    assert stop.requested is None
    stop.request("preemption notice from AWS")
    stop.request("something later")
    assert (stop.requested, stop.requested_at, stop.signum) == ("preemption notice from AWS", 100.0, None)


def test_handlers_are_restored_on_exit():
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with StopRequest() as stop:
            assert stop.installed
            assert signal.getsignal(signal.SIGTERM) == stop._on_signal
            assert signal.getsignal(signal.SIGINT) == stop._on_signal
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert not stop.installed
    finally:
        signal.signal(signal.SIGTERM, before)


def test_outside_the_main_thread_it_installs_nothing_but_request_works():
    seen = {}

    def body():
        with StopRequest() as stop:
            seen["installed"] = stop.installed
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            stop.request("from a watcher")
            seen["requested"] = stop.requested

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"installed": False, "handler": before, "requested": "from a watcher"}


# ---------------------------------------------------------------- StopRequest, real signals

# A loop of "steps"; each step waits for the test to say "go" on stdin, so the test decides
# exactly which step a signal lands in. After a stop it "checkpoints" (also waiting for "go")
# and exits 3, its own code.
STEP_SCRIPT = textwrap.dedent("""
    import sys
    from tunesmith.train.preempt import StopRequest

    step = 0
    try:
        with StopRequest() as stop:
            while step < 100:
                step += 1
                print(f"step {step} start", flush=True)
                sys.stdin.readline()
                print(f"step {step} done", flush=True)
                if stop.requested:
                    print(f"checkpointing after step {step}: {stop.requested}", flush=True)
                    sys.stdin.readline()
                    print("checkpoint written", flush=True)
                    sys.exit(3)
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt in step {step}", flush=True)
        sys.exit(130)
""")


class Steps:
    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "steps.py"
        script.write_text(STEP_SCRIPT)
        env = {**os.environ, "PYTHONPATH": str(Path(tunesmith.__file__).parents[1])}
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: list[str] = []

    def expect(self, line: str) -> None:
        got = self.proc.stdout.readline().strip()
        self.lines.append(got)
        assert got == line, self.lines

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, list[str]]:
        out, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, self.lines + out.splitlines()


def run_steps(steps: Steps, until: int) -> None:
    for n in range(1, until):
        steps.expect(f"step {n} start")
        steps.go()
        steps.expect(f"step {n} done")
    steps.expect(f"step {until} start")


def test_sigterm_finishes_the_current_step_then_checkpoints(tmp_path):
    steps = Steps(tmp_path)
    run_steps(steps, until=3)
    steps.proc.send_signal(signal.SIGTERM)  # lands inside step 3
    steps.go()
    steps.expect("step 3 done")
    steps.expect("checkpointing after step 3: SIGTERM")
    steps.proc.send_signal(signal.SIGTERM)  # a second SIGTERM does not cut the checkpoint short
    steps.go()
    code, lines = steps.finish()
    assert code == 3
    assert lines[-3:] == ["step 3 done", "checkpointing after step 3: SIGTERM", "checkpoint written"]


def test_second_sigint_aborts_at_once(tmp_path):
    steps = Steps(tmp_path)
    run_steps(steps, until=2)
    steps.proc.send_signal(signal.SIGINT)  # first Ctrl-C: finish step 2, then stop
    steps.go()
    steps.expect("step 2 done")
    steps.expect("checkpointing after step 2: SIGINT")
    steps.proc.send_signal(signal.SIGINT)  # second Ctrl-C: abort, the checkpoint is not waited for
    code, lines = steps.finish()
    assert code == 130
    assert lines[-1] == "KeyboardInterrupt in step 2"
    assert "checkpoint written" not in lines


# ---------------------------------------------------------------- a local metadata server

class Metadata:
    """What the fake metadata service does and what it saw."""

    def __init__(self, provider: str, notice_after: int = 0, imds_v2: bool = True, failures: int = 0) -> None:
        self.provider = provider  # "aws", "gcp" or "none" (answers 404 to everything)
        self.notice_after = notice_after  # this many "no notice" answers, then the notice
        self.imds_v2 = imds_v2  # False: the token PUT fails, GETs without a token are accepted
        self.failures = failures  # the first polls answer 500
        self.token = "token-123"
        self.polls = 0
        self.token_puts = 0
        self.rejected = 0
        self.lock = threading.Lock()


def make_handler(md: Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def answer(self, status: int, body: str = "", headers: dict | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if md.provider == "aws" and self.path == "/latest/api/token" and md.imds_v2:
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    md.rejected += 1
                    return self.answer(400)
                md.token_puts += 1
                return self.answer(200, md.token)
            self.answer(403 if md.provider == "aws" else 404)

        def do_GET(self) -> None:
            if md.provider == "aws":
                return self.aws()
            if md.provider == "gcp":
                return self.gcp()
            self.answer(404)

        def poll(self) -> str:
            with md.lock:
                md.polls += 1
                n = md.polls
            if n <= md.failures:
                return "fail"
            return "notice" if n > md.failures + md.notice_after else "none"

        def aws(self) -> None:
            if md.imds_v2 and self.headers.get("X-aws-ec2-metadata-token") != md.token:
                md.rejected += 1
                return self.answer(401)
            if self.path == "/latest/meta-data/":
                return self.answer(200, "ami-id\ninstance-id\n")
            if self.path != "/latest/meta-data/spot/instance-action":
                return self.answer(404)
            state = self.poll()
            if state == "notice":
                return self.answer(200, json.dumps({"action": "terminate", "time": "2030-01-01T00:02:00Z"}))
            self.answer(500 if state == "fail" else 404)

        def gcp(self) -> None:
            if self.headers.get("Metadata-Flavor") != "Google":
                md.rejected += 1
                return self.answer(403)
            if self.path != "/computeMetadata/v1/instance/preempted":
                return self.answer(404)
            state = self.poll()
            if state == "fail":
                return self.answer(500)
            self.answer(200, "TRUE" if state == "notice" else "FALSE", {"Metadata-Flavor": "Google"})

    return Handler


@pytest.fixture
def serve():
    servers = []

    def start(md: Metadata) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(md))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def wait_until(condition) -> None:
    t0 = time.monotonic()
    while not condition() and time.monotonic() - t0 < DEADLINE:
        time.sleep(0.005)


def wait_for_stop(stop: StopRequest, watcher: PreemptionWatcher) -> float:
    t0 = time.monotonic()
    while stop.requested is None and time.monotonic() - t0 < DEADLINE:
        time.sleep(0.005)
    watcher.close()
    assert not watcher.running
    return time.monotonic() - t0


@pytest.mark.parametrize("imds_v2", [True, False], ids=["imdsv2", "imdsv1-fallback"])
def test_aws_spot_notice_requests_a_stop(serve, imds_v2):
    md = Metadata("aws", notice_after=3, imds_v2=imds_v2)
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="aws", interval=FAST, base_url=serve(md)).start()
    took = wait_for_stop(stop, watcher)
    assert stop.requested == "preemption notice from AWS: spot instance-action terminate at 2030-01-01T00:02:00Z"
    assert took < DEADLINE
    assert (md.polls, watcher.polls) == (4, 4)  # three 404s, then the notice; then it stops polling
    assert watcher.notice == {"action": "terminate", "time": "2030-01-01T00:02:00Z"}
    assert md.rejected == 0  # every GET carried the token (v2) or none was asked for (v1)
    assert md.token_puts == (1 if imds_v2 else 0)  # the token is reused across polls
    assert watcher.notes == []


def test_gcp_preempted_requests_a_stop(serve):
    md = Metadata("gcp", notice_after=2)
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="gcp", interval=FAST, base_url=serve(md)).start()
    wait_for_stop(stop, watcher)
    assert stop.requested == "preemption notice from GCP: instance/preempted is TRUE"
    assert (md.polls, watcher.polls, md.rejected) == (3, 3, 0)


def test_fake_servers_enforce_the_handshakes(serve):
    """The servers above must really refuse what a real metadata service refuses, or the
    watcher tests would prove nothing about the headers."""
    import urllib.error
    import urllib.request

    aws = Metadata("aws")
    gcp = Metadata("gcp")
    for md, path in ((aws, "/latest/meta-data/spot/instance-action"), (gcp, "/computeMetadata/v1/instance/preempted")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(serve(md) + path, timeout=2)
        assert info.value.code in (401, 403)
        assert md.rejected == 1


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_auto_finds_the_provider_that_answers(serve, provider):
    md = Metadata(provider, notice_after=1)
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="auto", interval=FAST, base_url=serve(md)).start()
    wait_for_stop(stop, watcher)
    assert watcher.provider == provider
    assert stop.requested.startswith(f"preemption notice from {provider.upper()}")


def test_auto_with_no_metadata_service_stays_idle_with_one_note(serve):
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="auto", interval=FAST, base_url=serve(Metadata("none"))).start()
    watcher._thread.join(DEADLINE)
    assert not watcher.running
    assert (watcher.provider, stop.requested, watcher.polls) == (None, None, 0)
    assert watcher.notes == ["preemption watcher idle: no AWS or GCP metadata service answered"]


def test_failed_polls_are_noted_once_and_polling_goes_on(serve):
    md = Metadata("gcp", notice_after=1, failures=3)
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="gcp", interval=FAST, base_url=serve(md)).start()
    wait_for_stop(stop, watcher)
    assert stop.requested is not None and watcher.polls == 5
    assert watcher.notes == ["preemption watcher: GCP metadata poll failed (ValueError: HTTP 500); still polling"]


def test_unreachable_endpoint_never_raises_and_close_is_prompt():
    stop = StopRequest()
    # Port 9 on localhost: nothing listens, the connection is refused at once.
    watcher = PreemptionWatcher(stop, provider="aws", interval=FAST, base_url="http://127.0.0.1:9").start()
    wait_until(lambda: watcher.polls >= 2)
    t0 = time.monotonic()
    watcher.close()
    assert time.monotonic() - t0 < 2 and not watcher.running
    assert stop.requested is None
    assert len(watcher.notes) == 1 and watcher.notes[0].startswith("preemption watcher: AWS metadata poll failed")
    assert watcher.polls >= 2


def test_close_stops_a_watcher_that_saw_no_notice(serve):
    md = Metadata("aws", notice_after=10_000)
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="aws", interval=FAST, base_url=serve(md)).start()
    wait_until(lambda: md.polls >= 2)
    with watcher:
        pass  # __exit__ closes
    assert not watcher.running and stop.requested is None and md.polls > 1


def test_environment_variable_points_at_the_metadata_server(serve, monkeypatch):
    md = Metadata("gcp", notice_after=0)
    monkeypatch.setenv(METADATA_URL_ENV, serve(md) + "/")
    stop = StopRequest()
    watcher = PreemptionWatcher(stop, provider="gcp", interval=FAST).start()
    wait_for_stop(stop, watcher)
    assert md.polls == 1 and stop.requested is not None


def test_unknown_provider_is_refused():
    with pytest.raises(ValueError, match="provider must be one of aws, gcp, auto, not 'azure'"):
        PreemptionWatcher(StopRequest(), provider="azure")
