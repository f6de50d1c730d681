"""Listening sockets for the local servers (the review page, the OpenAI-compatible server).

The port is bound before a server loads or writes anything, so a port in use costs nothing,
and every way binding can fail becomes one error that names the flag at fault.
"""

from __future__ import annotations

import errno
import socket

from tunesmith.errors import TunesmithError, UsageError

# Hosts only this machine can reach; any other --host puts the server on a network.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Hosts that mean "every interface": a link needs this machine's name instead.
ANY_HOST = ("0.0.0.0", "::", "")


def bind(host: str, port: int, *, example_port: int, running: str) -> socket.socket:
    """A socket bound to host:port, or one error naming the flag at fault. `running` says what
    may already hold the port ("this review", "tunesmith serve"); port 0 takes a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, OverflowError) as e:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({e}); e.g. --host 127.0.0.1 "
                         f"(this machine only) --port {example_port}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TunesmithError(f"--port {port}: already in use on {host} (is {running} already running?); "
                                 f"stop that server or give another --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host}: not an address of this machine; e.g. 127.0.0.1 (this machine "
                             f"only) or 0.0.0.0 (every network it is on)") from None
        if e.errno == errno.EACCES:
            raise UsageError(f"--port {port}: needs root (ports below 1024); give e.g. --port {example_port}") from None
        raise
    # Listening now: a client that connects after the URL is printed, while the server still
    # loads or starts, waits in the backlog instead of being refused.
    sock.listen(128)
    return sock


def url_host(host: str) -> str:
    """The host part of a URL a person can open: this machine's name for "every interface"."""
    if host in ANY_HOST:
        host = socket.gethostname()
    return f"[{host}]" if ":" in host else host
