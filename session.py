"""Opening a session over TCP: the carrier socket and the two-message handshake exchange.

This is the I/O around :mod:`handshake` (which only turns bytes into bytes)::

    client                                         server
      | -- HANDSHAKE_INIT   (Noise msg 1: hello) -->  |  decrypt, look up client key,
      |                                               |  check the timestamp is newer
      | <-- HANDSHAKE_RESPONSE (msg 2: settings) ---  |
      | -- DATA, empty (key confirmation) --------->  |  record the timestamp, route to
      | <== DATA frames, both ways ===============>   |  this client from now on

The whole exchange must finish within HANDSHAKE_TIMEOUT and each message within
MAX_HANDSHAKE_BODY bytes, so a silent or chatty stranger on the port costs the server little.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config import ClientRecord, Profile, parse_endpoint
from errors import UserError
from framing import (
    MAX_FRAME_BODY,
    MAX_HANDSHAKE_BODY,
    FrameDecoder,
    FrameError,
    FrameType,
    RejectReason,
    encode_frame,
    encode_header,
)
from handshake import HandshakeError, Initiator, Responder
from messages import ClientHello, MessageError, SessionSettings, tai64n
from transport import DecryptError, ReceiveState, SendState
from tunlib import RECV_BUFFER_SIZE, LinkClosed, PeerLink

log = logging.getLogger(__name__)

PROLOGUE = b"tunlib/1"
"""Mixed into the handshake hash, so a peer speaking another protocol (or version) fails."""
HANDSHAKE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
TCP_KEEPIDLE_S, TCP_KEEPINTVL_S, TCP_KEEPCNT_N = 15, 5, 3
"""Kernel keepalives find a dead peer in about 30 s without any thread of ours waking up."""
TCP_USER_TIMEOUT_MS = 30_000
"""Give up on a connection whose sent data stays unacknowledged this long."""

REJECT_MESSAGES = {
    RejectReason.UNDECRYPTABLE: "the server could not decrypt our handshake: the profile's server "
    "PublicKey does not match this server",
    RejectReason.UNKNOWN_CLIENT: "the server does not know this client's key: it is not registered "
    "(or was removed) on this server",
    RejectReason.STALE_TIMESTAMP: "the server has confirmed a newer handshake from this client: is the "
    "clock wrong, or is the same profile in use twice?",
    RejectReason.BAD_HELLO: "the server could not parse our hello: version mismatch?",
}


class HandshakeFailed(Exception):
    """The peer failed the handshake; the connection is closed and the peer told why if useful."""


def tune_carrier(sock: socket.socket) -> None:
    """Socket options every carrier connection gets, on both ends.

    TCP_NODELAY matters most: without it, small frames (inner TCP ACKs) wait for Nagle's
    algorithm and throughput drops by about a quarter.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPIDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPINTVL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPCNT_N)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)


def read_handshake_frame(sock: socket.socket, decoder: FrameDecoder, deadline: float) -> tuple[int, bytes]:
    """Read exactly one frame before ``deadline`` (a ``time.monotonic()`` value).

    Bytes after that frame stay in ``decoder`` for the data path (a fast peer may send DATA
    right behind its handshake message).
    """
    while True:
        try:
            for frame_type, _header, body in decoder.frames():
                return frame_type, bytes(body)
        except FrameError as exc:
            raise HandshakeFailed(f"bad handshake frame: {exc}") from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeFailed("handshake timed out")
        sock.settimeout(remaining)
        try:
            count = sock.recv_into(decoder.free_space())
        except TimeoutError:
            raise HandshakeFailed("handshake timed out") from None
        except OSError as exc:
            raise HandshakeFailed(f"connection failed during handshake: {exc.strerror or exc}") from None
        if not count:
            raise HandshakeFailed("the peer closed the connection during the handshake")
        decoder.commit(count)


# -- client side -----------------------------------------------------------------


def dial(endpoint: str) -> socket.socket:
    """Connect to ``IP:PORT``; an unreachable server is a :class:`UserError`.

    The client resolved the server's name once, before it changed routes or DNS
    (``client.resolve_endpoint``), so ``endpoint`` holds an address and nothing is resolved here.
    """
    host, port = parse_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        raise UserError(f"server {host}:{port} is unreachable: connection timed out") from None
    except OSError as exc:
        raise UserError(f"server {host}:{port} is unreachable: {exc.strerror or exc}") from None
    tune_carrier(sock)
    return sock


def client_handshake(sock: socket.socket, profile: Profile) -> tuple[SessionSettings, PeerLink]:
    """Run the initiator's side on a connected socket; return the server's settings and the link."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    initiator = Initiator(profile.private_key, profile.server_public_key, profile.psk, PROLOGUE)
    hello = ClientHello(tai64n(time.time_ns()))
    try:
        sock.sendall(encode_frame(FrameType.HANDSHAKE_INIT, initiator.write_init(hello.encode())))
    except HandshakeError as exc:
        raise HandshakeFailed(f"cannot start a handshake with the profile's server key: {exc}") from None
    except OSError as exc:
        raise HandshakeFailed(f"sending the handshake failed: {exc.strerror or exc}") from None
    decoder = FrameDecoder(MAX_HANDSHAKE_BODY, RECV_BUFFER_SIZE)
    frame_type, body = read_handshake_frame(sock, decoder, deadline)
    if frame_type == FrameType.REJECT and len(body) == 1 and body[0] in REJECT_MESSAGES:
        raise HandshakeFailed(f"server refused the handshake: {REJECT_MESSAGES[RejectReason(body[0])]}")
    if frame_type != FrameType.HANDSHAKE_RESPONSE:
        raise HandshakeFailed(f"expected a handshake response, got frame type {frame_type}")
    try:
        payload, keys = initiator.read_response(body)
        settings = SessionSettings.decode(payload)
    except HandshakeError:
        raise HandshakeFailed(
            "the server's response did not authenticate: wrong server key or preshared key in the profile"
        ) from None
    except MessageError as exc:
        raise HandshakeFailed(f"bad session settings from the server: {exc}") from None
    sock.settimeout(None)
    decoder.max_body = MAX_FRAME_BODY  # our decoder: the session limit from the next byte on (PROTOCOL.md 3.1)
    link = PeerLink(sock, SendState(keys.send_key), ReceiveState(keys.recv_key), decoder)
    try:
        with link.send_lock:  # key confirmation: proves to the server that we hold the psk
            link.append(b"")
            link.flush()
    except LinkClosed as exc:
        raise HandshakeFailed(f"connection lost after the handshake: {exc}") from None
    return settings, link


# -- server side -----------------------------------------------------------------


class ReplayGuard:
    """The server's memory for the replay rule: the newest confirmed timestamp of each client.

    ``is_new`` only answers (before message 2); ``confirm`` records, atomically, once the client
    has proved it holds the session keys. TAI64N labels sort as bytes. Kept in memory only: a
    restart forgets it (PROTOCOL.md, section 11). Shared by every handshake thread.
    """

    def __init__(self) -> None:
        self.confirmed: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def is_new(self, public_key: bytes, timestamp: bytes) -> bool:
        with self._lock:
            return timestamp > self.confirmed.get(public_key, b"")

    def confirm(self, public_key: bytes, timestamp: bytes) -> bool:
        """Record ``timestamp`` if it is still the newest; False if another handshake won."""
        with self._lock:
            if timestamp <= self.confirmed.get(public_key, b""):
                return False
            self.confirmed[public_key] = timestamp
            return True


@dataclass
class Admission:
    """What the server knows about who may connect, shared by all handshake threads.

    The replay rule has two halves. ``timestamp_is_new`` answers whether a message 1 is newer
    than the last *confirmed* one from that key; ``confirm_timestamp`` records it, and is called
    only once the client has proved it holds the session keys (and so the psk). A forged or
    replayed message 1 therefore never changes what the server remembers.
    """

    static_private: bytes
    lookup: Callable[[bytes], ClientRecord | None]
    timestamp_is_new: Callable[[bytes, bytes], bool]
    confirm_timestamp: Callable[[bytes, bytes], bool]
    settings_for: Callable[[ClientRecord, ClientHello], SessionSettings]


def _reject(sock: socket.socket, reason: RejectReason) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(encode_frame(FrameType.REJECT, bytes([reason])))


def server_handshake(
    sock: socket.socket, admission: Admission, refuse: Callable[[RejectReason], None] | None = None
) -> tuple[ClientRecord, SessionSettings, PeerLink]:
    """Run the responder's side on an accepted socket; raise HandshakeFailed to refuse.

    ``refuse`` is called instead of sending a REJECT (in TLS mode the server never sends one:
    it hands the connection to the website instead).
    """
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    if refuse is None:
        refuse = functools.partial(_reject, sock)
    decoder = FrameDecoder(MAX_HANDSHAKE_BODY, RECV_BUFFER_SIZE)
    frame_type, body = read_handshake_frame(sock, decoder, deadline)
    if frame_type != FrameType.HANDSHAKE_INIT:
        raise HandshakeFailed(f"expected a handshake, got frame type {frame_type}")
    responder = Responder(admission.static_private, PROLOGUE)
    try:
        client_key, payload = responder.read_init(body)
    except HandshakeError:
        refuse(RejectReason.UNDECRYPTABLE)
        raise HandshakeFailed("message 1 did not decrypt (client pinned another server key?)") from None
    record = admission.lookup(client_key)
    if record is None:
        refuse(RejectReason.UNKNOWN_CLIENT)
        raise HandshakeFailed("unknown client key")
    try:
        hello = ClientHello.decode(payload)
    except MessageError as exc:
        refuse(RejectReason.BAD_HELLO)
        raise HandshakeFailed(f"client {record.name}: {exc}") from None
    if not admission.timestamp_is_new(client_key, hello.timestamp):
        refuse(RejectReason.STALE_TIMESTAMP)
        raise HandshakeFailed(f"client {record.name}: replayed or stale handshake")
    settings = admission.settings_for(record, hello)
    message, keys = responder.write_response(record.psk, settings.encode())
    try:
        sock.sendall(encode_frame(FrameType.HANDSHAKE_RESPONSE, message))
    except OSError as exc:
        raise HandshakeFailed(f"client {record.name}: sending the response failed: {exc.strerror}") from None
    receive = ReceiveState(keys.recv_key)
    _await_confirmation(sock, decoder, receive, deadline, record.name)
    if not admission.confirm_timestamp(client_key, hello.timestamp):
        raise HandshakeFailed(f"client {record.name}: a newer handshake from this client won the race")
    sock.settimeout(None)
    decoder.max_body = MAX_FRAME_BODY  # our decoder: the session limit from the next byte on (PROTOCOL.md 3.1)
    return record, settings, PeerLink(sock, SendState(keys.send_key), receive, decoder)


def _await_confirmation(
    sock: socket.socket, decoder: FrameDecoder, receive: ReceiveState, deadline: float, name: str
) -> None:
    """Wait for the client's first DATA frame (empty) and check that it authenticates.

    Until then the server has only seen message 1, which anyone holding the client's static
    key could make; the first frame proves the client also has the psk. Only then does the
    new session replace an existing one (as WireGuard waits for the first data packet).
    """
    frame_type, body = read_handshake_frame(sock, decoder, deadline)
    if frame_type != FrameType.DATA:
        raise HandshakeFailed(f"client {name}: expected key confirmation, got frame type {frame_type}")
    try:
        plaintext = receive.open(encode_header(FrameType.DATA, len(body)), body)
    except DecryptError:
        raise HandshakeFailed(f"client {name}: key confirmation failed (wrong preshared key?)") from None
    if plaintext:
        raise HandshakeFailed(f"client {name}: key confirmation must be empty, got {len(plaintext)} bytes")
