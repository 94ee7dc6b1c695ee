"""The server's front door: one thread and one selector for every connection in its handshake.

Before, each accepted connection got a thread for its handshake, so whoever opened many idle
connections cost the server a thread (and ~1 MB of buffers) each and filled the handshake
pool. Here a connection in its handshake costs a socket, a small buffer and a
:class:`session.ServerHandshake` in one selector loop, however many there are; only an
authenticated client is handed on (with its socket switched back to blocking) to the threads
of its session.

The loop is a thin driver. Decisions live in pure code it calls: admission.SourceLimiter (who
gets a slot: per-source rate and count, global bound evicting the oldest), session.ServerHandshake
(what the bytes mean: mac1, Noise, registry, replay, key confirmation) and admission.RefusalTally
(refusals are counted, and logged as one summary line at most every SUMMARY_INTERVAL).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from admission import RefusalTally, SourceLimiter
from config import format_endpoint
from portshare import TlsHandshake, Visit
from session import Admission, Established, Refuse, Send, ServerHandshake, tune_carrier

log = logging.getLogger("server")

READ_CHUNK = 4096
"""Bytes read per readable event: more than a whole handshake message (at most 1,029)."""
SWEEP_INTERVAL = 0.25
"""How often deadlines are checked: a connection is cut at most this late."""
ACCEPT_BATCH = 256
"""Connections accepted per wake-up before the loop serves the pending ones again."""
ACCEPT_RETRY_DELAY = 0.1
LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, timeout 0: close() sends a RST."""
"""After accept() fails (e.g. out of file descriptors), pause rather than spin."""


class StopFlag(Protocol):
    """What the loop needs of the server's stop flag (runtime.StopSignal): a descriptor that
    polls readable once it is raised, so the selector wakes for it."""

    def fileno(self) -> int: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(eq=False)
class Pending:
    """One connection in its handshake."""

    sock: socket.socket
    where: str
    machine: ServerHandshake | TlsHandshake


class Gatekeeper:
    """Accepts connections and runs their handshakes until each is established or refused."""

    def __init__(
        self,
        listener: socket.socket,
        admission: Admission,
        on_established: Callable[[socket.socket, Established, str], None],
        stop: StopFlag,
        clock: Callable[[], float] = time.monotonic,
        *,
        tls: Callable[[ServerHandshake, float], TlsHandshake] | None = None,
        on_visitor: Callable[[socket.socket, Visit, str], None] | None = None,
    ) -> None:
        """``tls`` (TLS mode) puts a TLS front before each handshake; ``on_visitor`` then takes the
        connections that turn out to be web visitors (portshare.py)."""
        self.listener = listener
        self.admission = admission
        self.on_established = on_established
        self.tls = tls
        self.on_visitor = on_visitor
        self.clock = clock
        self.limiter = SourceLimiter()
        self.tally = RefusalTally()
        self.pending: dict[int, Pending] = {}
        """Every connection in its handshake, by file descriptor (the limiter's key for it)."""
        self.stop = stop
        self._selector = selectors.DefaultSelector()

    def run(self) -> None:
        """The loop; returns once the stop flag is raised (its descriptor wakes the selector).
        Closes every pending connection on the way out."""
        listener = self.listener
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self.stop.fileno(), selectors.EVENT_READ, self.stop)
        next_sweep = self.clock() + SWEEP_INTERVAL
        try:
            while not self.stop.is_set():
                for key, _events in self._selector.select(SWEEP_INTERVAL):
                    if key.data is None:
                        self._accept()
                    elif isinstance(key.data, Pending):
                        self._serve(key.data)
                now = self.clock()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
                summary = self.tally.summary(now)
                if summary is not None:
                    log.info("%s", summary)
        finally:
            for pending in list(self.pending.values()):
                self._close(pending)
            self._selector.close()

    def stats(self) -> str:
        refused = ", ".join(f"{reason} {n}" for reason, n in sorted(self.tally.totals.items())) or "none"
        return f"handshakes pending {len(self.pending)}, sources tracked {self.limiter.sources}, refused: {refused}"

    # -- the steps ----------------------------------------------------------
    def _accept(self) -> None:
        now = self.clock()
        accept = self.listener._accept  # CPython's accept() without the socket object: (fd, address)
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self.tally.add(f"accept-failed ({exc.strerror or exc})")
                self.stop.wait(ACCEPT_RETRY_DELAY)
                return
            self._admit(fd, peer, now)

    def _admit(self, fd: int, peer: tuple, now: float) -> None:
        """The hot path of a flood, so a refusal costs as little as possible: no Python object is
        made for it (``_accept`` gives the bare descriptor), only the limiter's decision and a close."""
        decision = self.limiter.admit(fd, peer[0], now)
        if decision.refused is not None:
            self.tally.add(decision.refused)
            os.close(fd)
            return
        for evicted in decision.evict:
            self.tally.add("evicted")
            self._close(self.pending[evicted])  # type: ignore[index]
        sock = socket.socket(self.listener.family, self.listener.type, fileno=fd)
        machine: ServerHandshake | TlsHandshake = ServerHandshake(self.admission, now)
        if self.tls is not None:
            machine = self.tls(machine, now)
        pending = Pending(sock, peer_endpoint(peer), machine)
        self.pending[fd] = pending
        try:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, pending)
        except (OSError, ValueError):
            self.tally.add("closed")
            self._close(pending)

    def _serve(self, pending: Pending) -> None:
        """Read what arrived and act on it. One connection's trouble never stops the loop."""
        try:
            data = pending.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            actions = pending.machine.receive(data) if data else [pending.machine.peer_closed()]
            said = False
            for action in actions:
                if isinstance(action, Send):
                    if pending.sock.send(action.data) != len(action.data):
                        raise OSError("send buffer full during the handshake")
                    said = True
                elif isinstance(action, Refuse):
                    self._refuse(pending, action, reset=not said)  # a reset could discard a REJECT
                elif isinstance(action, Established):
                    self._establish(pending, action)
                elif isinstance(action, Visit):
                    self._visit(pending, action)
        except OSError as exc:
            self._refuse(pending, Refuse("closed", f"connection failed during the handshake: {exc}"))
        except Exception:
            log.exception("bug: handshake with %s failed unexpectedly; closing that connection", pending.where)
            self._refuse(pending, Refuse("internal-error", "unexpected exception"))

    def _sweep(self, now: float) -> None:
        for pending in list(self.pending.values()):
            outcome = pending.machine.expire(now)
            if isinstance(outcome, Visit):
                self._visit(pending, outcome)
            elif outcome is not None:
                self._refuse(pending, outcome)
        self.limiter.collect(now)

    def _refuse(self, pending: Pending, refusal: Refuse, reset: bool = True) -> None:
        if self.pending.get(pending.sock.fileno()) is pending:
            self.tally.add(refusal.reason)
            log.debug("refused connection from %s: %s", pending.where, refusal.detail)
            self._close(pending, reset)

    def _establish(self, pending: Pending, established: Established) -> None:
        self._forget(pending)
        sock = pending.sock
        try:
            sock.setblocking(True)
            tune_carrier(sock)  # only now: a stranger is not worth six setsockopt calls
        except OSError as exc:
            self.tally.add("closed")
            log.debug("connection from %s failed after its handshake: %s", pending.where, exc)
            sock.close()
            return
        self.on_established(pending.machine.connection(sock), established, pending.where)

    def _visit(self, pending: Pending, visit: Visit) -> None:
        """A web visitor on a TLS port: off the loop, to the website (portshare.Fallback)."""
        if self.pending.get(pending.sock.fileno()) is not pending:
            return
        self._forget(pending)
        self.tally.add(visit.reason)
        try:
            pending.sock.setblocking(True)
        except OSError:
            pending.sock.close()
            return
        assert self.on_visitor is not None
        self.on_visitor(visit.connection(pending.sock), visit, pending.where)

    def _forget(self, pending: Pending) -> None:
        """Stop tracking a connection (before it is closed or handed on: its fd is the key)."""
        fd = pending.sock.fileno()
        if self.pending.get(fd) is pending:
            del self.pending[fd]
            self.limiter.release(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(pending.sock)

    def _close(self, pending: Pending, reset: bool = True) -> None:
        self._forget(pending)
        if reset:
            _reset(pending.sock)
        else:
            pending.sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a RST: nothing is owed to a refused stranger, and the kernel then keeps no
    FIN_WAIT or TIME_WAIT state for it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def peer_endpoint(sockaddr: tuple) -> str:
    """A connection's source as ``ADDRESS:PORT`` for the logs: ``[v6]:port`` for IPv6, and an IPv4
    client of a ``[::]`` listener shown as the IPv4 address it is, not as ``::ffff:a.b.c.d``."""
    address = ipaddress.ip_address(sockaddr[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return format_endpoint(str(address), sockaddr[1])
