"""Stop requests: a signal or a cloud preemption notice asks the step loop to stop cleanly.

The loop checks `stop.requested` after each optimizer step; when it is set the loop writes a
checkpoint and exits, so a spot instance that is taken away (AWS gives two minutes' notice,
GCP thirty seconds) loses at most one step, not everything since the last scheduled save.

    with StopRequest() as stop, PreemptionWatcher(stop, provider="auto").start():
        for step in steps:
            ...one optimizer step...
            if stop.requested:
                ...checkpoint, then exit...

Nothing here prints: what happened is in the attributes (`requested`, `notes`) for the
caller to report.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from types import FrameType, TracebackType
from typing import Any, Callable

# Both ask politely: SIGTERM is what a scheduler, `docker stop`, SkyPilot or a shutting-down
# VM sends; SIGINT is Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

METADATA_URL_ENV = "TUNESMITH_METADATA_URL"
AWS_URL = "http://169.254.169.254"
GCP_URL = "http://metadata.google.internal"
AWS_TOKEN_PATH = "/latest/api/token"
AWS_NOTICE_PATH = "/latest/meta-data/spot/instance-action"
AWS_PROBE_PATH = "/latest/meta-data/"
GCP_NOTICE_PATH = "/computeMetadata/v1/instance/preempted"
PROVIDERS = ("aws", "gcp", "auto")
PROVIDER_NAMES = {"aws": "AWS", "gcp": "GCP"}

# A token lives this long; it is renewed a minute before it expires. Short, so a leaked one
# is worth little; long enough that the renewal PUT is rare next to the polls.
AWS_TOKEN_TTL_S = 600
# The metadata service answers in milliseconds on the instance; off a cloud 169.254.169.254
# drops packets, so a short timeout keeps an "auto" probe (in the thread) from lingering.
HTTP_TIMEOUT_S = 1.0
MAX_BODY = 64 * 1024


class StopRequest:
    """A flag the step loop reads after each step: set by the first SIGTERM or SIGINT, or by
    `request()` (a preemption watcher, a watchdog).

    Installed as a context manager around the step loop. The first stop signal only sets
    the flag: the loop finishes its current step, checkpoints and exits. A second SIGINT
    raises KeyboardInterrupt at once (the user means it: abort without the checkpoint);
    a repeated SIGTERM changes nothing (a scheduler that loses patience sends SIGKILL).
    The previous handlers are put back on exit.

    Signal handlers can only be installed from the main thread. Entered in any other thread,
    it installs nothing (`installed` stays False): signals then keep their previous effect
    and only `request()` sets the flag.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                 clock: Callable[[], float] = time.time) -> None:
        self.signals = signals
        self.clock = clock
        self.requested: str | None = None  # "SIGTERM", "SIGINT", or the reason given to request()
        self.requested_at: float | None = None  # clock() when it was first requested
        self.signum: int | None = None  # the signal's number, when a signal asked
        self.installed = False
        self._interrupts = 0
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        """Ask the loop to stop after its current step. Safe from any thread; the first
        reason is kept. No lock: a signal handler runs in the main thread between bytecodes
        and would deadlock on a lock the main thread holds; two plain assignments under the
        GIL are enough for a flag that is only ever set once."""
        if self.requested is None:
            self.requested_at = self.clock()
            self.requested = reason

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self.installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.installed:
            return
        for sig, previous in self._previous.items():
            # None: the old handler was not set from Python; the default is the best we can do.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
        if self.requested is None:
            self.signum = signum
        self.request(signal.Signals(signum).name)


# ---------------------------------------------------------------- preemption notices

def default_base_url() -> str | None:
    """TUNESMITH_METADATA_URL, when set, replaces both providers' metadata hosts: how a test
    (or an end-to-end run through the CLI in a subprocess) points the watcher at its own
    server. Unset: each provider's real host."""
    return os.environ.get(METADATA_URL_ENV) or None


class PreemptionWatcher:
    """A daemon thread that polls the cloud's metadata service for a preemption notice and,
    when one appears, calls `stop.request("preemption notice from AWS ...")`; the loop then
    checkpoints and exits exactly as after SIGTERM.

    provider: "aws" (spot instance-action, IMDSv2 with a fallback to IMDSv1), "gcp"
    (instance/preempted) or "auto" (the first whose metadata service answers; neither: the
    watcher stays idle and says so once in `notes`). `base_url` replaces the providers'
    hosts (default: TUNESMITH_METADATA_URL, else the real ones).

    The thread never raises: a failed poll is noted once and polling goes on. `close()`
    stops it within about one HTTP timeout.
    """

    def __init__(self, stop: StopRequest, provider: str = "auto", interval: float = 5.0,
                 base_url: str | None = None, timeout: float = HTTP_TIMEOUT_S) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        self.stop = stop
        self.wanted = provider
        self.interval = interval
        self.base_url = (base_url or default_base_url() or "").rstrip("/") or None
        self.timeout = timeout
        self.provider: str | None = None  # "aws" or "gcp" once known
        self.notice: dict[str, Any] | None = None  # what the metadata service said
        self.polls = 0
        self.notes: list[str] = []  # one line each, for the caller to log
        self._noted: set[str] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._imds_v1 = False
        # Metadata services are link-local: an http_proxy from the environment must never
        # see these requests (it cannot reach them, and the token is a credential).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self) -> "PreemptionWatcher":
        self._thread = threading.Thread(target=self._run, name="tunesmith-preemption", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout * 3 + 1)

    def __enter__(self) -> "PreemptionWatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self.provider = self._resolve_provider()
            if self.provider is None:
                self._note("idle", "preemption watcher idle: no AWS or GCP metadata service answered")
                return
            while not self._closing.is_set():
                self._poll_once()
                if self.notice is not None or self._closing.wait(self.interval):
                    return
        except Exception as e:  # the training must never die of its watcher
            self._note("crash", f"preemption watcher stopped: {type(e).__name__}: {e}")

    def _poll_once(self) -> None:
        self.polls += 1
        try:
            notice = self._aws_notice() if self.provider == "aws" else self._gcp_notice()
        except (OSError, ValueError) as e:  # URLError, timeouts, resets, bad JSON
            self._note("poll", f"preemption watcher: {PROVIDER_NAMES[self.provider or 'aws']} metadata "
                               f"poll failed ({describe(e)}); still polling")
            return
        if notice is not None:
            self.notice = notice
            self.stop.request(describe_notice(self.provider or "", notice))

    def _resolve_provider(self) -> str | None:
        if self.wanted != "auto":
            return self.wanted
        # GCP first: its answer carries a Metadata-Flavor header nothing else sends, while
        # GCP's own server also listens on 169.254.169.254 and could confuse an AWS probe.
        if self._gcp_answers():
            return "gcp"
        if self._aws_answers():
            return "aws"
        return None

    # ------------------------------------------------------------ HTTP

    def _url(self, provider: str, path: str) -> str:
        return (self.base_url or (AWS_URL if provider == "aws" else GCP_URL)) + path

    def _request(self, url: str, method: str = "GET", headers: dict[str, str] | None = None
                 ) -> tuple[int, str, dict[str, str]]:
        """(status, body, headers); an HTTP error status is an answer, not an exception."""
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read(MAX_BODY).decode("utf-8", "replace"), dict(resp.headers)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, "", dict(e.headers or {})

    # ------------------------------------------------------------ GCP

    def _gcp_answers(self) -> bool:
        try:
            status, _, headers = self._request(self._url("gcp", GCP_NOTICE_PATH), headers={"Metadata-Flavor": "Google"})
        except (OSError, ValueError):
            return False
        return status == 200 and headers.get("Metadata-Flavor") == "Google"

    def _gcp_notice(self) -> dict[str, Any] | None:
        # A plain poll: ?wait_for_change=true would hold a request open for minutes, which
        # close() would then have to wait out.
        status, body, _ = self._request(self._url("gcp", GCP_NOTICE_PATH), headers={"Metadata-Flavor": "Google"})
        if status != 200:
            raise ValueError(f"HTTP {status}")
        return {"preempted": True} if body.strip().upper() == "TRUE" else None

    # ------------------------------------------------------------ AWS

    def _aws_answers(self) -> bool:
        if self._aws_headers():
            return True
        try:
            status, _, _ = self._request(self._url("aws", AWS_PROBE_PATH))
        except (OSError, ValueError):
            return False
        return status == 200

    def _aws_headers(self) -> dict[str, str]:
        """The IMDSv2 token header, fetched or renewed as needed; {} when no token can be had
        (IMDSv1 only, or a container where the PUT's hop limit drops the answer)."""
        if self._imds_v1:
            return {}
        now = time.monotonic()
        if self._token is None or now >= self._token_expires:
            self._token = None
            try:
                status, body, _ = self._request(
                    self._url("aws", AWS_TOKEN_PATH), method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)})
            except (OSError, ValueError):
                status, body = 0, ""
            if status != 200 or not body.strip():
                self._imds_v1 = True  # try v1 from now on; a 401 there sends us back to v2
                return {}
            self._token = body.strip()
            self._token_expires = now + AWS_TOKEN_TTL_S - 60
        return {"X-aws-ec2-metadata-token": self._token}

    def _aws_notice(self) -> dict[str, Any] | None:
        status, body, _ = self._request(self._url("aws", AWS_NOTICE_PATH), headers=self._aws_headers())
        if status == 401:  # token expired early, or v1 refused: get a fresh token next poll
            self._token = None
            self._imds_v1 = False
            raise ValueError("HTTP 401 (token refused)")
        if status == 404:  # no notice: the normal answer
            return None
        if status != 200:
            raise ValueError(f"HTTP {status}")
        notice = json.loads(body)
        if not isinstance(notice, dict):
            raise ValueError(f"instance-action is not a JSON object: {body[:80]!r}")
        return notice

    def _note(self, key: str, text: str) -> None:
        """Each kind of note once: a poll that fails every 5 s must not fill a log."""
        if key not in self._noted:
            self._noted.add(key)
            self.notes.append(text)


def describe_notice(provider: str, notice: dict[str, Any]) -> str:
    name = PROVIDER_NAMES.get(provider, provider)
    if provider == "aws":
        return (f"preemption notice from {name}: spot instance-action {notice.get('action', '?')} "
                f"at {notice.get('time', '?')}")
    return f"preemption notice from {name}: instance/preempted is TRUE"


def describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # URLError wraps the socket error
    return f"{type(e).__name__}: {reason if reason is not None else e}"
