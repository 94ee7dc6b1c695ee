"""One port for tunlib and a website: who is talking on a TLS port, and what the others get.

On a TLS port, tunlib's server must look like any HTTPS server to everyone but its clients, so
a scanner cannot list it. The first moments of each connection decide (OpenVPN calls the
feature ``port-share``; Trojan and Xray call it fallback)::

    first byte is not a TLS handshake record (0x16)  -> WEB_CLEAR: the raw bytes go to the web
    TLS handshake fails                              -> CLOSE (OpenSSL's alert, as any server)
    TLS up, first application bytes are a tunlib
      message 1 for this server (the mac1 check)     -> TUNLIB: the handshake runs inside TLS
    TLS up, anything else (or nothing in time)       -> WEB_TLS: the decrypted bytes go to the web

"The web" is the user's real web server (``server.py run --fallback HOST:PORT``, plain HTTP,
for example nginx on 127.0.0.1:8080): the bytes already read are sent to it and then the two
connections are relayed, so a browser sees that site, served with this server's certificate.
Without ``--fallback`` the answer is what a minimal web server gives: a 404 page (400 for
something that is not even TLS). Never a REJECT: in TLS mode a stranger learns nothing.

:class:`TlsFront` is the decision as a sans-I/O state machine (bytes in, bytes out, an
outcome). :class:`TlsHandshake` puts it in front of :class:`session.ServerHandshake` with the
same bytes-in, actions-out interface, so the server's one selector loop (gatekeeper.py) runs TLS
connections like any other: only a web visitor, handed over as a :class:`Visit`, gets a thread.
:class:`Fallback` does the relaying, bounded in count and time so strangers cannot exhaust the
server.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from carrier import TlsCarrier, TlsEndpoint, TlsError
from framing import FirstFrame, FrameType
from session import FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, Established, Refuse, Send, ServerHandshake

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
"""The content type of the first TLS record every client sends (its ClientHello)."""
MAX_FIRST_BYTES = 16 * 1024
"""Application bytes read before deciding: a message 1 is far shorter, an HTTP request head
may be longer, but a web server gets the rest through the relay anyway."""
FRONT_READ = 16 * 1024
MAX_FALLBACK_RELAYS = 32
"""Strangers relayed to the web server at once; more are closed at once."""
FALLBACK_CONNECT_TIMEOUT = 5.0
FALLBACK_IDLE_TIMEOUT = 30.0
"""A relay in which neither side sends anything for this long ends."""
FALLBACK_MAX_LIFETIME = 300.0
"""No relay lasts longer, however active: a large download from the website is cut here."""
RELAY_BUFFER = 64 * 1024

NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 146\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
"""What a minimal web server answers on its TLS side (nginx's default 404 page, byte for byte)."""
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 150\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n"
    b"<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
"""What it answers to bytes that are not TLS at all."""


class Outcome(Enum):
    PENDING = "pending"
    TUNLIB = "tunlib"
    """TLS is up and the first application bytes are a message 1: run the handshake inside."""
    WEB_TLS = "web-tls"
    """TLS is up and the peer is anyone else: the website gets the decrypted bytes."""
    WEB_CLEAR = "web-clear"
    """The peer does not speak TLS: the website gets the raw bytes."""
    CLOSE = "close"
    """The TLS handshake failed, or the peer left before saying anything."""


class TlsFront:
    """The first moments of a connection on a TLS port, without I/O.

    Feed it what arrives (:meth:`receive`, :meth:`end_of_stream`, :meth:`timed_out`), send what
    :meth:`outgoing` returns, until :attr:`outcome` is no longer PENDING. Then :attr:`received`
    holds the bytes the next owner of the connection must see first (raw for WEB_CLEAR,
    decrypted otherwise) and :attr:`endpoint` the TLS state to continue with.
    """

    def __init__(self, context: ssl.SSLContext, classify: Callable[[bytes], FirstFrame]) -> None:
        self.context = context
        self.classify = classify
        self.endpoint: TlsEndpoint | None = None
        self.tls_up = False
        self.received = b""
        self.outcome = Outcome.PENDING
        self.why = ""
        """For CLOSE: a short reason, for the log."""

    def receive(self, data: bytes | memoryview) -> None:
        if self.outcome is not Outcome.PENDING or not data:
            return
        if self.endpoint is None:
            if data[0] != TLS_HANDSHAKE_RECORD:
                self.received, self.outcome = bytes(data), Outcome.WEB_CLEAR
                return
            self.endpoint = TlsEndpoint(self.context, server_side=True)
        self.endpoint.incoming.write(data)
        self._advance()

    def _advance(self) -> None:
        assert self.endpoint is not None
        if not self.tls_up:
            try:
                self.tls_up = self.endpoint.handshake()
            except TlsError as exc:
                self._close(str(exc))
                return
            if not self.tls_up:
                return
        try:
            self.received += self.endpoint.read_available(MAX_FIRST_BYTES - len(self.received))
        except TlsError as exc:
            self._close(str(exc))
            return
        except EOFError:
            self.end_of_stream()
            return
        verdict = self.classify(self.received)
        if verdict is FirstFrame.TUNLIB:
            self.outcome = Outcome.TUNLIB
        elif verdict is FirstFrame.FOREIGN or len(self.received) >= MAX_FIRST_BYTES:
            self.outcome = Outcome.WEB_TLS

    def end_of_stream(self) -> None:
        """The peer closed its side: a request already sent still deserves its answer."""
        if self.outcome is Outcome.PENDING:
            if self.tls_up and self.received:
                self.outcome = Outcome.WEB_TLS
            else:
                self._close("closed before saying anything")

    def timed_out(self) -> None:
        """The deadline passed: a TLS client that is silent (or slow) is a web visitor."""
        if self.outcome is Outcome.PENDING:
            if self.tls_up:
                self.outcome = Outcome.WEB_TLS
            else:
                self._close("TLS handshake timed out")

    def _close(self, why: str) -> None:
        self.outcome, self.why = Outcome.CLOSE, why

    def outgoing(self) -> bytes:
        """Bytes to send now: the server's handshake messages, or an alert."""
        return self.endpoint.outgoing.read() if self.endpoint is not None else b""


@dataclass(frozen=True, eq=False)
class Visit:
    """Action: a web visitor. Hand the connection to the website, these bytes first."""

    received: bytes
    endpoint: TlsEndpoint | None
    """The TLS state to continue with; None for a peer that does not speak TLS at all."""
    reason: str = "web-visitor"
    """What the server counts it under: a refused message 1 keeps its refusal's name."""

    def connection(self, sock: socket.socket) -> TlsCarrier | socket.socket:
        return sock if self.endpoint is None else TlsCarrier(sock, self.endpoint)


class TlsHandshake:
    """A connection on a TLS port for the selector loop: :class:`TlsFront`, then, if a tunlib client
    is talking, ``machine`` (a :class:`session.ServerHandshake`) run on the decrypted bytes.

    The interface is ServerHandshake's (``receive``, ``peer_closed``, ``expire``, ``deadline``,
    ``connection``), plus one action, :class:`Visit`. Two rules of TLS mode live here: a REJECT
    the machine would send is dropped, and a refusal before message 2 (unknown key, stale
    timestamp, no valid mac1...) becomes a Visit, so a stranger sees only the website.
    """

    def __init__(self, front: TlsFront, machine: ServerHandshake, now: float) -> None:
        self.front = front
        self.machine = machine
        self.started = now
        self._got_bytes = False
        self._responded = False

    @property
    def deadline(self) -> float:
        if self.front.outcome is Outcome.TUNLIB:
            return self.machine.deadline
        return self.started + (HANDSHAKE_TIMEOUT if self._got_bytes else FIRST_BYTE_TIMEOUT)

    def expire(self, now: float) -> Refuse | Visit | None:
        if self.front.outcome is Outcome.TUNLIB:
            return self.machine.expire(now)
        if self.front.outcome is not Outcome.PENDING or now < self.deadline:
            return None
        self.front.timed_out()  # a silent TLS client is a (slow) web visitor
        if self.front.outcome is Outcome.WEB_TLS:
            return Visit(self.front.received, self.front.endpoint)
        return Refuse("timeout", self.front.why)

    def peer_closed(self) -> Refuse | Visit:
        if self.front.outcome is Outcome.TUNLIB:
            return self._inside([self.machine.peer_closed()])[0]  # type: ignore[return-value]
        self.front.end_of_stream()
        if self.front.outcome is Outcome.WEB_TLS:
            return Visit(self.front.received, self.front.endpoint)
        return Refuse("closed", "the peer closed the connection during the TLS handshake")

    def receive(self, data: bytes) -> list[Send | Refuse | Established | Visit]:
        front = self.front
        if front.outcome is Outcome.TUNLIB:
            assert front.endpoint is not None
            front.endpoint.incoming.write(data)
            try:
                plain = front.endpoint.read_available(MAX_FIRST_BYTES)
            except TlsError as exc:
                return [Refuse("tls", str(exc))]
            except EOFError:
                return self._inside([self.machine.peer_closed()])
            return self._inside(self.machine.receive(plain)) if plain else []
        if front.outcome is not Outcome.PENDING:
            return []
        self._got_bytes = True
        front.receive(data)
        actions: list[Send | Refuse | Established | Visit] = []
        out = front.outgoing()
        if out:
            actions.append(Send(out))
        if front.outcome is Outcome.TUNLIB:
            actions += self._inside(self.machine.receive(front.received))
        elif front.outcome in (Outcome.WEB_TLS, Outcome.WEB_CLEAR):
            actions.append(Visit(front.received, front.endpoint))
        elif front.outcome is Outcome.CLOSE:
            actions.append(Refuse("tls", front.why))
        return actions

    def _inside(self, actions: list) -> list[Send | Refuse | Established | Visit]:
        """The machine's actions, in TLS: Sends encrypted, REJECTs dropped, early refusals a Visit."""
        endpoint = self.front.endpoint
        assert endpoint is not None
        translated: list[Send | Refuse | Established | Visit] = []
        for action in actions:
            if isinstance(action, Send):
                if action.data[4:5] == bytes([FrameType.REJECT]):
                    continue  # no REJECT in TLS mode: the Refuse that follows becomes a Visit
                self._responded = self._responded or action.data[4:5] == bytes([FrameType.HANDSHAKE_RESPONSE])
                endpoint.ssl.write(action.data)
                translated.append(Send(endpoint.outgoing.read()))
            elif isinstance(action, Refuse) and not self._responded and action.reason not in ("timeout", "closed"):
                translated.append(Visit(self.front.received, endpoint, f"{action.reason}-to-website"))
            else:
                translated.append(action)
        return translated

    def connection(self, sock: socket.socket) -> TlsCarrier:
        """The established client's connection: the carrier over ``sock``, TLS state and all."""
        assert self.front.endpoint is not None
        return TlsCarrier(sock, self.front.endpoint)


class Fallback:
    """Gives web visitors the website at ``address`` (or the minimal answers), within bounds."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self.address = address
        self.slots = threading.BoundedSemaphore(MAX_FALLBACK_RELAYS)

    def admit(self, conn: TlsCarrier | socket.socket, received: bytes, where: str) -> bool:
        """Serve one visitor in a thread of its own, if one of MAX_FALLBACK_RELAYS is free; else
        close the connection. Returns whether it was admitted."""
        if not self.slots.acquire(blocking=False):
            conn.close()
            return False
        thread = threading.Thread(target=self._serve, args=(conn, received, where), name="web-visitor", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the visitor goes, the server stays
            self.slots.release()
            conn.close()
            return False
        return True

    def _serve(self, conn: TlsCarrier | socket.socket, received: bytes, where: str) -> None:
        try:
            self.serve(conn, received, where)
        finally:
            self.slots.release()

    def serve(self, conn: TlsCarrier | socket.socket, received: bytes, where: str) -> None:
        """Answer or relay one visitor, then close ``conn``. Never raises."""
        try:
            if self.address is None:
                if received:
                    conn.settimeout(FALLBACK_CONNECT_TIMEOUT)
                    conn.sendall(NOT_FOUND if isinstance(conn, TlsCarrier) else BAD_REQUEST)
                return
            self._relay_to_web(conn, received, where)
        except OSError as exc:
            log.debug("web visitor %s: %s", where, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _relay_to_web(self, conn: TlsCarrier | socket.socket, received: bytes, where: str) -> None:
        assert self.address is not None
        try:
            web = socket.create_connection(self.address, timeout=FALLBACK_CONNECT_TIMEOUT)
        except OSError as exc:
            log.warning("fallback web server %s:%d unreachable: %s", *self.address, exc.strerror or exc)
            return
        with web:
            web.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            web.settimeout(FALLBACK_IDLE_TIMEOUT)
            if received:
                web.sendall(received)
            log.debug("web visitor %s relayed to %s:%d", where, *self.address)
            relay(conn, web, FALLBACK_IDLE_TIMEOUT, time.monotonic() + FALLBACK_MAX_LIFETIME)


def relay(conn: TlsCarrier | socket.socket, web: socket.socket, idle: float, deadline: float) -> None:
    """Copy both ways between a visitor and the web server until both have finished sending, a
    side is idle for ``idle`` seconds, or ``deadline`` passes. Half-closes are passed on, so an
    HTTP/1.0 request ended by the client's FIN still gets its answer."""
    conn.settimeout(idle)
    web.settimeout(idle)
    buf = bytearray(RELAY_BUFFER)
    view = memoryview(buf)
    open_sides = {"visitor", "web"}
    with selectors.DefaultSelector() as selector:
        selector.register(conn.fileno(), selectors.EVENT_READ, "visitor")
        selector.register(web.fileno(), selectors.EVENT_READ, "web")
        while open_sides:
            remaining = min(idle, deadline - time.monotonic())
            if remaining <= 0:
                return
            pending = isinstance(conn, TlsCarrier) and "visitor" in open_sides and conn.pending()
            ready = ["visitor"] if pending else [key.data for key, _ in selector.select(remaining)]
            if not ready:
                return  # idle
            for side in ready:
                source, sink = (conn, web) if side == "visitor" else (web, conn)
                count = source.recv_into(buf)
                if count:
                    sink.sendall(view[:count])
                    continue
                open_sides.discard(side)
                selector.unregister(source.fileno())
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
