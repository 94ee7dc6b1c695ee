"""Opening a session over TCP: the carrier socket and the two-message handshake exchange.

The client's side is blocking I/O around :mod:`handshake` (which only turns bytes into
bytes). The server's side, :class:`ServerHandshake`, does no I/O at all: it takes bytes and
returns actions, so one selector loop (gatekeeper.py) runs every pending handshake at once::

    client                                         server
      | -- HANDSHAKE_INIT (Noise msg 1: hello,        |  check mac1 (one hash), then
      |                    then mac1) ------------->  |  decrypt, look up client key,
      |                                               |  check the timestamp is newer
      | <-- HANDSHAKE_RESPONSE (msg 2: settings) ---  |
      | -- DATA, empty (key confirmation) --------->  |  record the timestamp, route to
      | <== DATA frames, both ways ===============>   |  this client from now on

The whole exchange must finish within HANDSHAKE_TIMEOUT and each message within
MAX_HANDSHAKE_BODY bytes, so a silent or chatty stranger on the port costs the server little.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from config import ClientRecord, Profile, format_endpoint
from errors import UserError
from framing import (
    HEADER,
    HEADER_LEN,
    MAC1_LEN,
    MAX_FRAME_BODY,
    MAX_HANDSHAKE_BODY,
    FirstFrame,
    FrameDecoder,
    FrameError,
    FrameType,
    RejectReason,
    classify_first_frame,
    encode_frame,
    encode_init_frame,
)
from handshake import HandshakeError, Initiator, Responder, SessionKeys, public_key
from happy_eyeballs import connect_first
from messages import ClientHello, MessageError, SessionSettings, tai64n
from transport import DecryptError, ReceiveState, SendState
from tunlib import RECV_BUFFER_SIZE, LinkClosed, PeerLink

log = logging.getLogger(__name__)

PROLOGUE = b"tunlib/2"
"""Mixed into the handshake hash, so a peer speaking another protocol (or version) fails."""
HANDSHAKE_TIMEOUT = 5.0
"""A connection must finish its handshake this long after it was accepted."""
FIRST_BYTE_TIMEOUT = 2.0
"""...and send its first byte within this: a real client sends message 1 as soon as it has
connected, so a connection silent this long is a stranger holding a slot."""
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
        except ConnectionResetError:
            count = 0  # the server resets what it refuses without a word: the same as a close
        except OSError as exc:
            raise HandshakeFailed(f"connection failed during handshake: {exc.strerror or exc}") from None
        if not count:
            raise HandshakeFailed(
                "the server closed the connection without an answer: is the profile's server PublicKey "
                "this server's, or is this address sending too many handshakes?"
            )
        decoder.commit(count)


# -- client side -----------------------------------------------------------------


def dial(addresses: list[str], port: int) -> socket.socket:
    """Connect to the first of the server's ``addresses`` that answers (Happy Eyeballs, IPv6
    first); an unreachable server is a :class:`UserError`."""
    where = " or ".join(format_endpoint(a, port) for a in addresses)
    try:
        sock = connect_first(addresses, port, CONNECT_TIMEOUT)
    except TimeoutError:
        raise UserError(f"server {where} is unreachable: connection timed out") from None
    except OSError as exc:
        raise UserError(f"server {where} is unreachable: {exc.strerror or exc}") from None
    tune_carrier(sock)
    return sock


def client_handshake(sock: socket.socket, profile: Profile) -> tuple[SessionSettings, PeerLink]:
    """Run the initiator's side on a connected socket; return the server's settings and the link."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    initiator = Initiator(profile.private_key, profile.server_public_key, profile.psk, PROLOGUE)
    hello = ClientHello(tai64n(time.time_ns()))
    try:
        sock.sendall(encode_init_frame(profile.server_public_key, initiator.write_init(hello.encode())))
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
    restart forgets it (PROTOCOL.md, section 11). Shared by every handshake.
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
    """What the server knows about who may connect, shared by all handshakes.

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
    static_public: bytes = field(init=False)
    """Derived once: mac1 is keyed from it."""

    def __post_init__(self) -> None:
        self.static_public = public_key(self.static_private)


@dataclass(frozen=True)
class Send:
    """Action: write these bytes to the connection (they fit any fresh socket's send buffer)."""

    data: bytes


@dataclass(frozen=True)
class Refuse:
    """Action: close the connection. ``reason`` is a short name the refusal is counted under;
    ``detail`` says more, for a debug log line."""

    reason: str
    detail: str


@dataclass(frozen=True, eq=False)
class Established:
    """Action: the client is authenticated. Hand the connection to the data path.

    ``receive`` has already opened the key confirmation (counter 0); ``leftover`` holds the bytes
    that arrived behind it in the same read (a fast client's first DATA frames).
    """

    record: ClientRecord
    settings: SessionSettings
    keys: SessionKeys
    receive: ReceiveState
    leftover: bytes


Action = Send | Refuse | Established


class _Await(Enum):
    INIT = "message 1"
    CONFIRMATION = "key confirmation"
    NOTHING = "nothing (finished)"


class ServerHandshake:
    """The responder's side of one connection, without I/O: bytes in, actions out.

    The caller (the server's selector loop, or a test) passes every received chunk to
    :meth:`receive`, performs the returned actions in order, and asks :meth:`expire` whether
    the deadline has passed. The checks run cheapest first, so a stranger costs little:

    1. the frame header (type 0x01, a plausible length): free;
    2. mac1 (:func:`framing.classify_first_frame`): one BLAKE2s. A failure is closed silently,
       with no REJECT, so a scanner learns nothing about what listens here;
    3. Noise message 1: three Diffie-Hellman operations, then the registry and replay checks,
       answered with a REJECT where the user needs to know why;
    4. message 2, then the key confirmation (the client's first DATA frame, empty).

    Deadlines: FIRST_BYTE_TIMEOUT for the first byte, HANDSHAKE_TIMEOUT for everything.
    """

    def __init__(self, admission: Admission, now: float) -> None:
        self.admission = admission
        self.started = now
        self._got_bytes = False
        self._buffer = bytearray()
        self._await = _Await.INIT
        self._client: ClientRecord | None = None
        self._hello: ClientHello | None = None
        self._settings: SessionSettings | None = None
        self._keys: SessionKeys | None = None

    @property
    def deadline(self) -> float:
        """When (in the caller's clock) this connection is cut if it has not finished."""
        return self.started + (HANDSHAKE_TIMEOUT if self._got_bytes else FIRST_BYTE_TIMEOUT)

    def expire(self, now: float) -> Refuse | None:
        """A Refuse if the deadline has passed, else None."""
        if self._await is _Await.NOTHING or now < self.deadline:
            return None
        self._await = _Await.NOTHING
        return Refuse("timeout", f"no {'complete handshake' if self._got_bytes else 'first byte'} in time")

    def connection(self, sock: socket.socket) -> socket.socket:
        """What the data path carries an established session on: here the socket itself (TLS mode
        wraps it, portshare.TlsHandshake)."""
        return sock

    def peer_closed(self) -> Refuse:
        """The peer closed (or reset) the connection before the handshake finished."""
        self._await = _Await.NOTHING
        return Refuse("closed", "the peer closed the connection during the handshake")

    def receive(self, data: bytes) -> list[Action]:
        """Take bytes received from the peer; return what to do (nothing: wait for more)."""
        if self._await is _Await.NOTHING:
            return []
        self._got_bytes = self._got_bytes or bool(data)
        self._buffer += data
        if self._await is _Await.INIT:
            return self._on_first_bytes()
        return self._on_confirmation_bytes()

    def _refuse(self, reason: str, detail: str, reject: RejectReason | None = None) -> list[Action]:
        self._await = _Await.NOTHING
        actions: list[Action] = [] if reject is None else [Send(encode_frame(FrameType.REJECT, bytes([reject])))]
        return [*actions, Refuse(reason, detail)]

    def _on_first_bytes(self) -> list[Action]:
        admission = self.admission
        kind = classify_first_frame(admission.static_public, self._buffer)
        if kind is FirstFrame.INCOMPLETE:
            return []
        if kind is FirstFrame.FOREIGN:
            return self._refuse("foreign", "not a message 1 for this server (bad header or mac1)")
        length = HEADER.unpack_from(self._buffer)[0]
        body = bytes(self._buffer[HEADER_LEN : HEADER_LEN + length - MAC1_LEN])
        del self._buffer[: HEADER_LEN + length]
        responder = Responder(admission.static_private, PROLOGUE)
        try:
            client_key, payload = responder.read_init(body)
        except HandshakeError:
            return self._refuse("undecryptable", "message 1 did not decrypt", RejectReason.UNDECRYPTABLE)
        record = admission.lookup(client_key)
        if record is None:
            return self._refuse("unknown-client", "unknown client key", RejectReason.UNKNOWN_CLIENT)
        try:
            hello = ClientHello.decode(payload)
        except MessageError as exc:
            return self._refuse("bad-hello", f"client {record.name}: {exc}", RejectReason.BAD_HELLO)
        if not admission.timestamp_is_new(client_key, hello.timestamp):
            return self._refuse(
                "stale", f"client {record.name}: replayed or stale handshake", RejectReason.STALE_TIMESTAMP
            )
        settings = admission.settings_for(record, hello)
        message, keys = responder.write_response(record.psk, settings.encode())
        self._client, self._hello, self._settings, self._keys = record, hello, settings, keys
        self._await = _Await.CONFIRMATION
        return [Send(encode_frame(FrameType.HANDSHAKE_RESPONSE, message)), *self._on_confirmation_bytes()]

    def _on_confirmation_bytes(self) -> list[Action]:
        """Wait for the client's first DATA frame (empty) and check that it authenticates.

        Until then the server has only seen message 1, which anyone holding the client's static
        key could make; the first frame proves the client also has the psk. Only then does the
        new session replace an existing one (as WireGuard waits for the first data packet).
        """
        record, hello, keys = self._client, self._hello, self._keys
        assert record is not None and hello is not None and keys is not None and self._settings is not None
        if len(self._buffer) < HEADER_LEN:
            return []
        length, frame_type = HEADER.unpack_from(self._buffer)
        name = record.name
        if frame_type != FrameType.DATA:
            return self._refuse("confirmation", f"client {name}: expected key confirmation, got type {frame_type}")
        if length > MAX_HANDSHAKE_BODY:
            return self._refuse("confirmation", f"client {name}: frame of {length} bytes exceeds the limit")
        if len(self._buffer) < HEADER_LEN + length:
            return []
        receive = ReceiveState(keys.recv_key)
        try:
            plaintext = receive.open(self._buffer[:HEADER_LEN], self._buffer[HEADER_LEN : HEADER_LEN + length])
        except DecryptError:
            return self._refuse("confirmation", f"client {name}: key confirmation failed (wrong preshared key?)")
        if plaintext:
            return self._refuse("confirmation", f"client {name}: key confirmation must be empty")
        if not self.admission.confirm_timestamp(record.public_key, hello.timestamp):
            return self._refuse("race", f"client {name}: a newer handshake from this client won the race")
        self._await = _Await.NOTHING
        leftover = bytes(self._buffer[HEADER_LEN + length :])
        self._buffer.clear()
        return [Established(record, self._settings, keys, receive, leftover)]


def server_link(sock: socket.socket, established: Established) -> PeerLink:
    """The data path's link for a connection whose handshake finished (``sock`` blocking again).

    The bytes that followed the key confirmation in its read go first into the new decoder, which
    has the session's frame limit from its first byte on (PROTOCOL.md 3.1). They are at most one
    read's worth, far less than the decoder's buffer.
    """
    decoder = FrameDecoder(MAX_FRAME_BODY, RECV_BUFFER_SIZE)
    leftover = established.leftover
    decoder.free_space()[: len(leftover)] = leftover
    decoder.commit(len(leftover))
    return PeerLink(sock, SendState(established.keys.send_key), established.receive, decoder)
