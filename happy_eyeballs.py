"""Dialling a server that has both IPv6 and IPv4 addresses: "Happy Eyeballs" (RFC 8305).

A dual-stack laptop often has an IPv6 address whose path is broken. Trying IPv6 and waiting
for its connect to time out before trying IPv4 would stall every connect for seconds, so we
race them, with a head start for the preferred one:

1. Order the addresses (RFC 8305 section 4): IPv6 first, then alternate families, so one
   broken family costs one attempt delay, not one per address.
2. Start a connect to the first address. If it has not finished after
   CONNECTION_ATTEMPT_DELAY (250 ms, the RFC's recommended value), start the next one too,
   and so on; a connect that fails at once (no route) starts the next at once.
3. The first connect that completes wins; every other attempt is closed.

The ordering is a pure function; :func:`connect_first` does the I/O with non-blocking
sockets and one ``selectors`` loop, so no thread is spent per attempt.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import time

CONNECTION_ATTEMPT_DELAY = 0.25
"""Seconds before the next address is tried while earlier attempts are still pending (RFC 8305 §5)."""


def interleave_families(addresses: list[str]) -> list[str]:
    """Order ``addresses`` as RFC 8305 section 4 asks: IPv6 first, then alternate families.

    Within a family the resolver's order is kept; duplicates are dropped.
    """
    unique = list(dict.fromkeys(addresses))
    v6 = [a for a in unique if ipaddress.ip_address(a).version == 6]
    v4 = [a for a in unique if ipaddress.ip_address(a).version == 4]
    ordered: list[str] = []
    for pair in zip(v6, v4, strict=False):
        ordered.extend(pair)
    longer = v6 if len(v6) > len(v4) else v4
    ordered.extend(longer[min(len(v6), len(v4)) :])
    return ordered


def connect_first(addresses: list[str], port: int, timeout: float) -> socket.socket:
    """Race connects to ``addresses`` (already ordered) and return the first connected socket.

    Raises the last error seen (``TimeoutError`` when nothing answered within ``timeout``).
    The returned socket is in blocking mode.
    """
    if not addresses:
        raise OSError(errno.EDESTADDRREQ, "no address to connect to")
    deadline = time.monotonic() + timeout
    pending: dict[socket.socket, str] = {}
    waiting = list(addresses)
    last_error: OSError = TimeoutError(errno.ETIMEDOUT, "connection timed out")
    next_start = time.monotonic()
    with selectors.DefaultSelector() as selector:
        try:
            while waiting or pending:
                now = time.monotonic()
                if now >= deadline:
                    break
                if waiting and (now >= next_start or not pending):
                    address = waiting.pop(0)
                    sock = _start_connect(address, port)
                    if isinstance(sock, OSError):
                        last_error = sock
                        continue  # failed at once: the next address starts now
                    pending[sock] = address
                    selector.register(sock, selectors.EVENT_WRITE)
                    next_start = now + CONNECTION_ATTEMPT_DELAY
                wake = deadline if not waiting else min(deadline, next_start)
                for key, _ in selector.select(max(0.0, wake - time.monotonic())):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    selector.unregister(sock)
                    del pending[sock]
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error == 0:
                        sock.setblocking(True)
                        return sock
                    last_error = OSError(error, os.strerror(error))
                    sock.close()
        finally:
            for sock in pending:
                sock.close()
    raise last_error


def _start_connect(address: str, port: int) -> socket.socket | OSError:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect((address, port))
    except BlockingIOError:
        return sock
    except OSError as exc:
        sock.close()
        return exc
    return sock
