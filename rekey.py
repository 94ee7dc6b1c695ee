"""Key rotation and liveness inside one connection: rekey, keepalive, dead peer, key limits.

One AES-GCM key must not protect a connection forever (RFC 8446, section 5.5 bounds how much
one key may seal), and a NAT or proxy forgets an idle TCP connection. So, inside the session,
the client runs a fresh Noise_IKpsk2 handshake (fresh ephemerals, the same static keys, psk and
prologue, the same hello with a newer timestamp) every REKEY_AFTER_TIME seconds or
REKEY_AFTER_BYTES, whichever comes first, and each side sends an authenticated KEEPALIVE after
KEEPALIVE seconds of send silence. The four frames are sealed with the current session key,
like DATA (PROTOCOL.md, section 13)::

    client                                               server
      | -- REKEY_INIT (old key): Noise message 1 -------> |  same client key, newer timestamp
      | <-- REKEY_RESPONSE (old key): Noise message 2 --  |  then at once: send with the new key
      |  receive with the new key                         |
      | -- REKEY_CONFIRM (new key), then DATA (new key) -> |  receive with the new key

TCP keeps order, so each side knows exactly which frame is the last under an old key: the
server switches its send key right after the RESPONSE, the client its receive key right after
reading it, then its send key with the CONFIRM, and the server its receive key on the CONFIRM.
Nothing is lost, nothing is sealed twice under one (key, nonce).

:class:`KeySchedule` is the whole state machine, and it does no I/O: no sockets, no clocks. The
caller (``tunlib.PeerLink``) passes the time, hands it every control frame, asks it what is due
(:meth:`KeySchedule.poll`), and writes the frames it returns. The data path itself never calls
it: per packet the only cost is the caller's integer compare against :attr:`KeySchedule.tx_due`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from framing import FrameType
from handshake import HandshakeError, Initiator, Responder
from messages import ClientHello, MessageError, tai64n
from transport import ReceiveState, SendState

REKEY_AFTER_TIME = 120.0
"""Seconds a key pair is used before the client starts a rekey (WireGuard's value)."""
REJECT_AFTER_TIME = 180.0
"""Seconds after which a key pair that was not replaced ends the session (WireGuard's value)."""
REKEY_TIMEOUT = 5.0
"""Slack for a loaded peer: the least time between rekey and reject, and the margin of the
dead-peer timeout over two keepalive intervals."""
KEEPALIVE = 25.0
"""Seconds of send silence after which a side sends a KEEPALIVE (WireGuard's persistent
keepalive value that most NATs tolerate)."""

FRAME_CHARGE = 32
"""Bytes each sealed frame counts for on top of its plaintext: 16 for its partial last AES
block and 16 for the per-message term of the AES-GCM bound (PROTOCOL.md, section 13.5)."""
REKEY_AFTER_BYTES = 2**36
"""64 GiB of usage (plaintext bytes + FRAME_CHARGE per frame) under one key starts a rekey."""
REJECT_AFTER_BYTES = 2**38
"""256 GiB of usage under one key ends the session: 2**34 AES blocks and messages together,
which keeps AES-GCM's confidentiality advantage below 2**-60 (PROTOCOL.md, section 13.5)."""
MAX_TICK = 1.0
"""Longest time between two :meth:`KeySchedule.poll` calls of an idle link."""


class ProtocolError(Exception):
    """A control frame that breaks the rules: stray, duplicate, malformed or from another key."""


class SessionExpired(Exception):
    """A limit ended the session: a silent peer, or keys past their time or byte limit."""


class Action(Enum):
    """What :meth:`KeySchedule.poll` asks the caller to send now."""

    NONE = "none"
    KEEPALIVE = "keepalive"
    REKEY = "rekey"


@dataclass(frozen=True)
class Policy:
    """The timers and limits of one side. Seconds are floats, the clock is the caller's."""

    rekey_after_time: float = REKEY_AFTER_TIME
    keepalive: float = KEEPALIVE
    """Send a KEEPALIVE after this much send silence."""
    peer_keepalive: float = KEEPALIVE
    """The longest send silence the peer allows itself: the dead-peer timeout follows from it."""
    rekey_after_bytes: int = REKEY_AFTER_BYTES
    reject_after_bytes: int = REJECT_AFTER_BYTES

    @property
    def reject_after_time(self) -> float:
        """REJECT_AFTER_TIME scaled with ``--rekey-after`` (1.5 x), but never less than
        REKEY_TIMEOUT after the rekey is due, so one slow rekey does not end a session."""
        return max(self.rekey_after_time * REJECT_AFTER_TIME / REKEY_AFTER_TIME, self.rekey_after_time + REKEY_TIMEOUT)

    @property
    def dead_peer_timeout(self) -> float:
        """No frame for two of the peer's keepalive intervals plus REKEY_TIMEOUT: it is gone."""
        return 2 * self.peer_keepalive + REKEY_TIMEOUT

    @property
    def tick(self) -> float:
        """How often an idle link must be polled for the timers to be late by at most a tenth
        of a rekey interval or a quarter of a keepalive interval (and never more than a second)."""
        return min(MAX_TICK, self.rekey_after_time / 10, self.keepalive / 4)

    @classmethod
    def for_client(
        cls, rekey_after: float, keepalive: float, server_rekey_after: float, server_keepalive: float
    ) -> Policy:
        """The client rekeys and sends keepalives at the shorter of its own and the server's
        intervals (so it never runs into the server's reject limits), and judges the server
        dead by the server's keepalive interval, which is how often the server sends."""
        return cls(
            rekey_after_time=min(rekey_after, server_rekey_after),
            keepalive=min(keepalive, server_keepalive),
            peer_keepalive=server_keepalive,
        )

    @classmethod
    def for_server(cls, rekey_after: float, keepalive: float) -> Policy:
        """The server's own values, which it also pushes to every client in message 2."""
        return cls(rekey_after_time=rekey_after, keepalive=keepalive, peer_keepalive=keepalive)


@dataclass(frozen=True, eq=False)
class InitiatorRole:
    """What the client needs to start rekeys: exactly what its first handshake used."""

    static_private: bytes = field(repr=False)
    server_public: bytes
    psk: bytes = field(repr=False)
    prologue: bytes


@dataclass(frozen=True, eq=False)
class ResponderRole:
    """What the server needs to answer rekeys of one session.

    ``confirm_timestamp(client_public, timestamp)`` records the hello's timestamp if it is newer
    than every confirmed one of that client (``session.ReplayGuard.confirm``), so a rekey can
    never move the client's replay window backwards.
    """

    static_private: bytes = field(repr=False)
    client_public: bytes
    psk: bytes = field(repr=False)
    prologue: bytes
    confirm_timestamp: Callable[[bytes, bytes], bool]


class KeySchedule:
    """The keys of one session and when to replace them; the state machine of PROTOCOL.md, section 13.

    ``send`` and ``recv`` are the current transport states; the caller seals and opens DATA
    frames with them directly and must re-read them after every call that may switch them
    (:meth:`receive_control`). :meth:`poll`, :meth:`keepalive`, :meth:`begin_rekey` and the
    control frames that are answered (REKEY_INIT, REKEY_RESPONSE) must be called under the
    caller's send lock, because they seal frames and switch ``send``; KEEPALIVE and
    REKEY_CONFIRM touch only receive state, which belongs to the receiving thread.

    Byte usage of a key is ``plaintext bytes + FRAME_CHARGE * frames`` sealed (or opened) under
    it. The caller keeps running totals of plaintext bytes per direction (``tx_bytes``,
    ``rx_bytes``, across keys); this object remembers the totals at each switch, and exposes the
    thresholds as :attr:`tx_due` and :attr:`rx_due`, to compare with
    ``tx_bytes + FRAME_CHARGE * send.counter`` after each batch.
    """

    def __init__(
        self,
        send: SendState,
        recv: ReceiveState,
        now: float,
        *,
        policy: Policy | None = None,
        role: InitiatorRole | ResponderRole | None = None,
        tx_bytes: int = 0,
        rx_bytes: int = 0,
    ) -> None:
        self.send = send
        self.recv = recv
        self.policy = policy or Policy()
        self.role = role
        self.rekeys = 0
        """Completed rekeys: key pairs replaced in this session."""
        self.installed_at = now
        """When the current send key started (the first switch of each rekey, on either side)."""
        self._rekey_started_at = now
        """Client: when the last rekey was asked for (or the session began); the next one is due
        rekey_after_time later, so the interval does not stretch by each handshake's round trip."""
        self._tx_base = tx_bytes
        self._rx_base = rx_bytes
        self._initiator: Initiator | None = None
        """Client: the handshake waiting for its REKEY_RESPONSE."""
        self._pending_recv: ReceiveState | None = None
        """Server: the new receive key, used from the REKEY_CONFIRM on."""
        self._last_timestamp_ns = 0
        self._send_generation = self._recv_generation = 0
        """Count the key switches per direction, so that (generation, counter) marks activity."""
        self._sent_mark = (0, send.counter)
        self._sent_at = now
        self._received_mark = (0, recv.counter)
        self._received_at = now
        self.next_poll = now + self.policy.tick
        """The caller calls :meth:`poll` once its clock passes this (or a byte threshold)."""

    # -- limits --------------------------------------------------------------------
    @property
    def rekeying(self) -> bool:
        """A rekey is under way: the client awaits REKEY_RESPONSE, the server REKEY_CONFIRM."""
        return self._initiator is not None or self._pending_recv is not None

    def _byte_limit(self) -> int:
        if isinstance(self.role, InitiatorRole) and not self.rekeying:
            return self.policy.rekey_after_bytes
        return self.policy.reject_after_bytes

    @property
    def tx_due(self) -> int:
        """Call :meth:`poll` once ``tx_bytes + FRAME_CHARGE * send.counter`` reaches this."""
        return self._tx_base + self._byte_limit()

    @property
    def rx_due(self) -> int:
        """Call :meth:`poll` once ``rx_bytes + FRAME_CHARGE * recv.counter`` reaches this."""
        return self._rx_base + self._byte_limit()

    def poll(self, now: float, tx_bytes: int, rx_bytes: int) -> Action:
        """Check every timer and limit; return what to send, or raise :class:`SessionExpired`.

        Send and receive activity is seen through the counters of the current keys, so the
        data path records nothing per packet; the price is that silence is measured from the
        first poll that saw no new frame, at most one :attr:`Policy.tick` late.
        """
        policy = self.policy
        self.next_poll = now + policy.tick
        sent = (self._send_generation, self.send.counter)
        if sent != self._sent_mark:
            self._sent_mark, self._sent_at = sent, now
        received = (self._recv_generation, self.recv.counter)
        if received != self._received_mark:
            self._received_mark, self._received_at = received, now
        if now - self._received_at >= policy.dead_peer_timeout:
            raise SessionExpired(f"no frame from the peer for {now - self._received_at:.1f} s (dead peer)")
        age = now - self.installed_at
        if age >= policy.reject_after_time:
            raise SessionExpired(f"session keys are {age:.1f} s old: no rekey within {policy.reject_after_time:g} s")
        usage = max(
            tx_bytes - self._tx_base + FRAME_CHARGE * self.send.counter,
            rx_bytes - self._rx_base + FRAME_CHARGE * self.recv.counter,
        )
        if usage >= policy.reject_after_bytes:
            raise SessionExpired(f"session keys used for {usage} bytes: no rekey within {policy.reject_after_bytes}")
        if isinstance(self.role, InitiatorRole) and not self.rekeying:
            if now - self._rekey_started_at >= policy.rekey_after_time or usage >= policy.rekey_after_bytes:
                self._rekey_started_at = now
                return Action.REKEY
            # Poll again exactly when the rekey is due, not up to a tick later, so that rekeys
            # keep their interval (a busy link is polled right away; an idle one within a tick).
            self.next_poll = min(self.next_poll, self._rekey_started_at + policy.rekey_after_time)
        if now - self._sent_at >= policy.keepalive:
            self._sent_at = now  # one keepalive per interval, even if the caller sends nothing
            return Action.KEEPALIVE
        return Action.NONE

    # -- frames we start -------------------------------------------------------------
    def keepalive(self) -> bytes:
        """A sealed KEEPALIVE frame (empty plaintext) under the current send key."""
        return self.send.seal(b"", FrameType.KEEPALIVE)

    def begin_rekey(self, unix_ns: int) -> bytes:
        """Client: a sealed REKEY_INIT carrying a fresh Noise message 1.

        ``unix_ns`` is the wall clock for the hello's TAI64N timestamp. Should the clock step
        back, the timestamp still moves forward by a nanosecond, since the server refuses any
        timestamp that is not newer than the last one it confirmed.
        """
        role = self.role
        if not isinstance(role, InitiatorRole):
            raise ProtocolError("only the client starts a rekey")
        if self.rekeying:
            raise ProtocolError("a rekey is already under way")
        self._last_timestamp_ns = max(unix_ns, self._last_timestamp_ns + 1)
        initiator = Initiator(role.static_private, role.server_public, role.psk, role.prologue)
        message = initiator.write_init(ClientHello(tai64n(self._last_timestamp_ns)).encode())
        frame = self.send.seal(message, FrameType.REKEY_INIT)
        self._initiator = initiator
        return frame

    # -- frames we receive -----------------------------------------------------------
    def receive_control(
        self,
        frame_type: int,
        header: bytes | memoryview,
        body: bytes | memoryview,
        *,
        now: float,
        tx_bytes: int,
        rx_bytes: int,
    ) -> bytes:
        """Handle any sealed frame other than DATA; return the frame to send in answer (or b"").

        Raises :class:`ProtocolError` for a frame this side must never receive now, and
        ``transport.DecryptError`` for one that does not authenticate: both end the session.
        ``tx_bytes``/``rx_bytes`` are the caller's running plaintext totals, recorded at a switch.
        KEEPALIVE and REKEY_CONFIRM only ever change receive state and return b"", so a caller
        may handle them without its send lock.
        """
        if frame_type == FrameType.KEEPALIVE:
            if self.recv.open(header, body):
                raise ProtocolError("KEEPALIVE with a non-empty plaintext")
            return b""
        if frame_type == FrameType.REKEY_INIT:
            return self._answer_rekey(header, body, now, tx_bytes)
        if frame_type == FrameType.REKEY_RESPONSE:
            return self._finish_rekey(header, body, now, tx_bytes, rx_bytes)
        if frame_type == FrameType.REKEY_CONFIRM:
            if self._pending_recv is None:
                raise ProtocolError("REKEY_CONFIRM without a rekey under way")
            if self._pending_recv.open(header, body):
                raise ProtocolError("REKEY_CONFIRM with a non-empty plaintext")
            self.recv, self._pending_recv = self._pending_recv, None
            self._recv_generation += 1
            self._rx_base = rx_bytes
            self.rekeys += 1
            return b""
        raise ProtocolError(f"unexpected frame type {frame_type} in session")

    def _answer_rekey(self, header: bytes | memoryview, body: bytes | memoryview, now: float, tx_bytes: int) -> bytes:
        """Server: check and answer a REKEY_INIT, then switch the send key at once."""
        role = self.role
        if not isinstance(role, ResponderRole):
            raise ProtocolError("REKEY_INIT received by the side that initiates")
        if self._pending_recv is not None:
            raise ProtocolError("REKEY_INIT while the previous rekey is unconfirmed")
        message = self.recv.open(header, body)
        responder = Responder(role.static_private, role.prologue)
        try:
            client_public, payload = responder.read_init(message)
            hello = ClientHello.decode(payload)
        except (HandshakeError, MessageError) as exc:
            raise ProtocolError(f"bad REKEY_INIT: {exc}") from None
        if not hmac.compare_digest(client_public, role.client_public):
            raise ProtocolError("REKEY_INIT from another static key than this session's client")
        if not role.confirm_timestamp(client_public, hello.timestamp):
            raise ProtocolError("REKEY_INIT timestamp is not newer than the last confirmed one")
        response, keys = responder.write_response(role.psk, b"")
        frame = self.send.seal(response, FrameType.REKEY_RESPONSE)
        self.send = SendState(keys.send_key)
        self._send_generation += 1
        self._tx_base = tx_bytes
        self.installed_at = now
        self._pending_recv = ReceiveState(keys.recv_key)
        return frame

    def _finish_rekey(
        self, header: bytes | memoryview, body: bytes | memoryview, now: float, tx_bytes: int, rx_bytes: int
    ) -> bytes:
        """Client: take the new keys from a REKEY_RESPONSE; return the REKEY_CONFIRM."""
        if self._initiator is None:
            raise ProtocolError("REKEY_RESPONSE without a rekey under way")
        message = self.recv.open(header, body)
        try:
            payload, keys = self._initiator.read_response(message)
        except HandshakeError as exc:
            raise ProtocolError(f"bad REKEY_RESPONSE: {exc}") from None
        if payload:
            raise ProtocolError("REKEY_RESPONSE with a non-empty payload")
        self._initiator = None
        self.recv = ReceiveState(keys.recv_key)
        self._recv_generation += 1
        self._rx_base = rx_bytes
        self.send = SendState(keys.send_key)
        self._send_generation += 1
        self._tx_base = tx_bytes
        self.installed_at = now
        self.rekeys += 1
        return self.send.seal(b"", FrameType.REKEY_CONFIRM)
