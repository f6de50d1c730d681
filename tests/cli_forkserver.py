"""A fork server for tests that run the real CLI many times: `python -m tunesmith.cli ARGS` at a
fraction of the cost.

Each `python -m tunesmith.cli` pays for starting Python and importing torch, transformers and
peft (1.5-3 s on a CI core). The server imports those once, runs no torch computation (so no
thread pool exists to be inherited half-alive), and for each command forks a child that does
what the subprocess did, in the order a subprocess does it: its stdout and stderr go to files,
it moves to the command's folder, takes the command's environment, drops root's file-permission
override when asked (the subprocess's preexec_fn did this before exec; without an exec the
capability must leave the process's own sets too), and runs tunesmith.cli as __main__ (runpy,
as `-m` does), so cli.py's module body, and the consoles it makes, run in the child with the
child's COLUMNS. The child exits the way the subprocess did, through SystemExit, atexit and
flushing; the caller gets (returncode, stdout, stderr) decoded as subprocess's text mode does.

What a child cannot take from its command is what the libraries read from the environment while
the server imported them: a command whose environment differs from the server's in more than
PER_COMMAND_ENV runs as a plain subprocess (see `run`).

Run as a script it is the server; imported, `run` is the client.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

# What may differ between the server's environment and a command's: each child sets them again,
# and no library reads them while being imported (pytest sets PYTEST_CURRENT_TEST in each test).
PER_COMMAND_ENV = ("TUNESMITH_HOME", "COLUMNS", "PYTEST_CURRENT_TEST", "TUNESMITH_SKY")
WARM_MODULES = """
import torch, transformers, peft, accelerate, safetensors.torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler
from peft import LoraConfig, PeftModel, get_peft_model
from accelerate import Accelerator
"""
READY = "ready"


# ------------------------------------------------------------------ server side

def serve(channel: socket.socket) -> None:
    """Answer commands one at a time until the channel closes."""
    import tunesmith
    from tunesmith.cli import quiet_libraries

    quiet_libraries()  # what main() does before any library is imported
    exec(WARM_MODULES, {})
    # Each child runs cli.py afresh as __main__, as `-m` does: nothing named tunesmith.cli yet.
    del sys.modules["tunesmith.cli"], tunesmith.cli
    import gc

    gc.freeze()  # children never walk (and so never copy) what the server imported
    send(channel, {"ready": READY})
    lines = channel.makefile("r", encoding="utf-8")
    for line in lines:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            lines.close()
            channel.close()
            run_command(request)  # never returns: the child exits through SystemExit
        send(channel, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        send(channel, {"returncode": os.waitstatus_to_exitcode(status)})


def run_command(request: dict) -> None:
    redirect(1, request["stdout"])
    redirect(2, request["stderr"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["no_override"]:
        drop_root_override_now()
    import runpy

    sys.argv = ["tunesmith.cli", *request["args"]]
    sys.path[0] = os.getcwd()  # `python -m` puts the working folder first
    try:
        runpy.run_module("tunesmith.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = exit_status(e.code)
    except BaseException:  # what the interpreter does with an exception nothing caught
        sys.excepthook(*sys.exc_info())
        code = 1
    exit_without_teardown(code)


def exit_status(code: object) -> int:
    """The status the interpreter exits with for `SystemExit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_without_teardown(code: int) -> None:
    """Exit as the interpreter does (wait for threads, atexit, flush) but skip tearing down the
    modules: for torch and transformers that takes ~1 s and copies most of the server's memory."""
    import atexit
    import gc
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    gc.collect()  # what is garbage now is finalized as it would be at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # as the interpreter reports an unflushable stream
    os._exit(code)


def redirect(fd: int, path: str) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(target, fd)
    os.close(target)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_root_override_now() -> None:
    """CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of the bounding set (what the subprocess's
    preexec_fn did, which took effect at exec) and out of this process's own sets (what that
    exec did)."""
    drop_root_override()
    libc = ctypes.CDLL(None, use_errno=True)
    dropped = (1 << 1) | (1 << 2)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~dropped
    data[0].permitted &= ~dropped
    data[0].inheritable &= ~dropped
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def send(channel: socket.socket, message: dict) -> None:
    channel.sendall((json.dumps(message) + "\n").encode("utf-8"))


# ------------------------------------------------------------------ client side

def run(args: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None, no_override: bool = False,
        timeout: float | None = None, on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
    """What `subprocess.run([python, "-m", "tunesmith.cli", *args], cwd=cwd, env=env, capture_output=True,
    text=True, timeout=timeout)` returns, with root's file-permission override dropped when asked.
    `on_start(pid)` is called once the command's process exists (for a test that signals it).

    A command whose environment differs from the server's in more than the per-command variables
    may depend on what a library read while being imported: that one runs as a plain subprocess,
    as does everything with TUNESMITH_TEST_FORKSERVER=0."""
    cwd = Path(cwd if cwd is not None else os.getcwd())
    env = dict(os.environ if env is None else env)
    server = shared_server() if os.environ.get("TUNESMITH_TEST_FORKSERVER", "1") != "0" else None
    if server is not None and server.can_run(env):
        return server.run(args, cwd, env, no_override, timeout, on_start)
    global plain_runs
    plain_runs += 1
    command = [sys.executable, "-m", "tunesmith.cli", *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=drop_root_override if no_override else None) as process:
        if on_start is not None:
            on_start(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def drop_root_override() -> None:
    """Run like a normal user: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root is held to
    file modes too (CI runs the tests as root). As a subprocess's preexec_fn: out of the bounding
    set; the exec that follows takes them out of the process's own sets."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


_server: ForkServer | None = None
plain_runs = 0  # commands that could not go through the server (to see that few do)


def shared_server() -> ForkServer:
    """One server for the test session, started on first use with the environment of that moment."""
    global _server
    if _server is None:
        import atexit
        import tempfile

        _server = ForkServer(Path(tempfile.mkdtemp(prefix="tunesmith-cli-server-")), dict(os.environ))
        atexit.register(_server.close)
    return _server


class ForkServer:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.log = folder / "server.log"
        ours, theirs = socket.socketpair()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                            env=env, stdout=log, stderr=log, cwd=folder)
        theirs.close()
        self.channel = ours
        self.received = b""
        hello = self._reply(timeout=600)
        if hello.get("ready") != READY:
            raise RuntimeError(f"the CLI fork server did not start: {hello}\n{self.log.read_text()}")
        said = self.log.read_text()
        if said:  # a subprocess would have printed it, a child does not: their output would differ
            raise RuntimeError(f"importing the libraries printed something the commands would have printed:\n{said}")
        self.count = 0

    def can_run(self, env: dict[str, str]) -> bool:
        def fixed(e: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in e.items() if k not in PER_COMMAND_ENV}
        return fixed(env) == fixed(self.env)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], no_override: bool,
            timeout: float | None, on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.folder / f"{self.count}.stdout", self.folder / f"{self.count}.stderr"
        send(self.channel, {"args": args, "cwd": str(cwd), "env": env, "no_override": no_override,
                            "stdout": str(out), "stderr": str(err)})
        pid = self._reply(timeout=60)["pid"]
        if on_start is not None:
            on_start(pid)
        try:
            code = self._reply(timeout=timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(timeout=60)
            raise subprocess.TimeoutExpired(["tunesmith", *args], timeout) from None
        # subprocess's text mode: the locale's encoding, universal newlines.
        stdout, stderr = (path.open(encoding=None, newline=None).read() for path in (out, err))
        out.unlink()
        err.unlink()
        return subprocess.CompletedProcess(["tunesmith", *args], code, stdout, stderr)

    def _reply(self, timeout: float | None) -> dict:
        self.channel.settimeout(timeout)
        while b"\n" not in self.received:
            chunk = self.channel.recv(65536)  # TimeoutError after `timeout` seconds of silence
            if not chunk:
                raise RuntimeError(f"the CLI fork server stopped:\n{self.log.read_text()}")
            self.received += chunk
        line, self.received = self.received.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        import shutil

        self.channel.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
