"""Frames: how tunlib cuts one TCP byte stream into messages.

TCP delivers a stream of bytes with no boundaries, so every message carries its own length::

    +----------------+---------+----------------------+
    | length: u32 BE | type: u8 | body (length bytes) |
    +----------------+---------+----------------------+

The length is 4 bytes, not 2, because in offload mode one frame carries a 64 KB TCP
super-packet plus its virtio-net header plus a 16-byte AES-GCM tag, which does not fit in
65,535. The 5-byte header is also the associated data of every encrypted frame, so an
attacker who edits a length or a type breaks the authentication tag.

This module does no I/O: the data path hands it bytes it received and takes back frames.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Iterator
from enum import Enum, IntEnum

HEADER = struct.Struct("!IB")
"""length (body only), type."""
HEADER_LEN = HEADER.size

AEAD_TAG_LEN = 16
"""Bytes AES-GCM adds to every sealed body."""

MAX_PACKET_LEN = 65535 + 12
"""Largest plaintext a DATA frame carries: an IPv4 packet of the maximum size (a GSO
super-packet) behind a virtio-net header of at most 12 bytes."""

MAX_FRAME_BODY = MAX_PACKET_LEN + AEAD_TAG_LEN
"""Any length above this is an error, detected from the header before the body is read,
so a peer cannot make us buffer gigabytes."""

MAX_HANDSHAKE_BODY = 1024
"""Handshake messages are a few hundred bytes; anything larger before the session exists
is rejected, because an unauthenticated peer must not make the server allocate much."""


MAC1_LEN = 16
"""Bytes of the mac1 that ends every HANDSHAKE_INIT body (PROTOCOL.md, section 4.4)."""
MAC1_LABEL = b"mac1----"
"""Mixed into the mac1 key, as WireGuard does, so the key is used for nothing else."""
NOISE_INIT_MIN = 96
"""The shortest Noise message 1 (handshake.INIT_OVERHEAD: e, encrypted s, payload tag)."""


class FrameType(IntEnum):
    """The type byte. Values are part of the wire protocol (PROTOCOL.md)."""

    HANDSHAKE_INIT = 0x01
    HANDSHAKE_RESPONSE = 0x02
    REJECT = 0x03
    DATA = 0x04
    KEEPALIVE = 0x05
    """Sealed, empty: sent after KEEPALIVE seconds of send silence (rekey.py)."""
    REKEY_INIT = 0x06
    """Sealed under the current key; the plaintext is a fresh Noise message 1 (rekey.py)."""
    REKEY_RESPONSE = 0x07
    """Sealed under the current key; the plaintext is the matching Noise message 2."""
    REKEY_CONFIRM = 0x08
    """Sealed, empty, and the first frame under the initiator's new send key."""


class RejectReason(IntEnum):
    """Why the server refused a handshake. Sent in clear and unauthenticated, so a client
    treats it only as a hint for its error message, never as a security decision."""

    UNDECRYPTABLE = 1
    """Message 1 did not decrypt: the client pinned a different server key."""
    UNKNOWN_CLIENT = 2
    """The client's static key is not registered on this server."""
    STALE_TIMESTAMP = 3
    """The timestamp is not newer than the last confirmed one: a replay, or a client clock gone back."""
    BAD_HELLO = 4
    """The handshake payload could not be parsed."""


class FrameError(ValueError):
    """The byte stream violates the framing rules; the connection must be closed."""


def encode_header(frame_type: int, body_len: int) -> bytes:
    """Return the 5-byte header for a body of ``body_len`` bytes."""
    return HEADER.pack(body_len, frame_type)


def encode_frame(frame_type: int, body: bytes) -> bytes:
    """Return a complete unencrypted frame (used for handshake and reject messages)."""
    return HEADER.pack(len(body), frame_type) + body


class FrameDecoder:
    """Collects received bytes and yields complete frames.

    The caller receives straight into :meth:`free_space` (no copy), reports how many bytes
    arrived with :meth:`commit`, then iterates :meth:`frames`. Yielded views point into the
    internal buffer and are valid only until the next :meth:`free_space` call, which moves
    any partial frame to the front. One large buffer means one ``recv_into`` can bring in
    dozens of frames, which is what makes the Python data path fast.
    """

    def __init__(self, max_body: int, buffer_size: int) -> None:
        if buffer_size < HEADER_LEN + max_body:
            raise ValueError("buffer must hold at least one maximum-size frame")
        self.max_body = max_body
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def free_space(self) -> memoryview:
        """Return the writable tail of the buffer, compacting first if needed."""
        if self._start:
            pending = self._end - self._start
            self._buf[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def commit(self, count: int) -> None:
        """Record that ``count`` bytes were written into the last :meth:`free_space` view."""
        self._end += count

    def frames(self) -> Iterator[tuple[int, memoryview, memoryview]]:
        """Yield ``(type, header, body)`` for every complete frame buffered.

        Raises :class:`FrameError` as soon as a header announces a body larger than
        ``max_body``, before waiting for that body.
        """
        view = self._view
        unpack = HEADER.unpack_from
        max_body = self.max_body
        start, end = self._start, self._end
        while end - start >= HEADER_LEN:
            length, frame_type = unpack(view, start)
            if length > max_body:
                self._start = start
                raise FrameError(f"frame of {length} bytes exceeds the limit of {max_body}")
            body_start = start + HEADER_LEN
            if end - body_start < length:
                break
            start = body_start + length
            self._start = start
            yield frame_type, view[body_start - HEADER_LEN : body_start], view[body_start:start]
        self._start = start

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame)."""
        return self._end - self._start


# -- mac1: the cheap check in front of the handshake ----------------------------------------


@functools.lru_cache(maxsize=8)
def mac1_key(server_public: bytes) -> bytes:
    """BLAKE2s-256("mac1----" || server static public key): the key of every mac1 to this server.

    Cached: a server computes it once, so checking a mac1 costs exactly one hash.
    """
    return hashlib.blake2s(MAC1_LABEL + server_public).digest()


def compute_mac1(server_public: bytes, header: bytes, noise_message: bytes) -> bytes:
    """BLAKE2s-128 keyed with :func:`mac1_key` over the 5-byte frame header and Noise message 1.

    The header is the one on the wire, whose length already counts the mac1 itself.
    """
    mac = hashlib.blake2s(header, digest_size=MAC1_LEN, key=mac1_key(server_public))
    mac.update(noise_message)
    return mac.digest()


def encode_init_frame(server_public: bytes, noise_message: bytes) -> bytes:
    """The complete HANDSHAKE_INIT frame: header, Noise message 1, mac1."""
    header = encode_header(FrameType.HANDSHAKE_INIT, len(noise_message) + MAC1_LEN)
    return header + noise_message + compute_mac1(server_public, header, noise_message)


def mac1_valid(server_public: bytes, header: bytes | memoryview, body: bytes | memoryview) -> bool:
    """True if ``body`` (Noise message 1 || mac1) under ``header`` carries a valid mac1 for this server.

    Costs one BLAKE2s over ~150 bytes and no Diffie-Hellman: what a scanner, a web browser or a
    client of another server sends is told apart from a tunlib client of this server this cheaply.
    Compared in constant time.
    """
    if len(body) < NOISE_INIT_MIN + MAC1_LEN:
        return False
    noise_message, mac = bytes(body[:-MAC1_LEN]), bytes(body[-MAC1_LEN:])
    return hmac.compare_digest(compute_mac1(server_public, bytes(header), noise_message), mac)


class FirstFrame(Enum):
    """What the first bytes of a new connection are (see :func:`classify_first_frame`)."""

    INCOMPLETE = "incomplete"
    """Too few bytes to tell yet: read more (within the deadline)."""
    TUNLIB = "tunlib"
    """A complete HANDSHAKE_INIT whose mac1 is valid for this server."""
    FOREIGN = "foreign"
    """Anything else: another protocol, garbage, or a message 1 meant for another server."""


def classify_first_frame(server_public: bytes, data: bytes | memoryview) -> FirstFrame:
    """Decide from the first bytes received on a connection whether a tunlib client of this server
    is talking. The hook both the handshake and a port shared with other protocols (TLS fallback)
    use: FOREIGN is known from the header alone for almost anything not tunlib (an HTTP request
    or a TLS record announces a length of hundreds of megabytes), else after one hash.
    """
    if len(data) < HEADER_LEN:
        return FirstFrame.INCOMPLETE
    length, frame_type = HEADER.unpack_from(data)
    if frame_type != FrameType.HANDSHAKE_INIT or not NOISE_INIT_MIN + MAC1_LEN <= length <= MAX_HANDSHAKE_BODY:
        return FirstFrame.FOREIGN
    if len(data) < HEADER_LEN + length:
        return FirstFrame.INCOMPLETE
    body = data[HEADER_LEN : HEADER_LEN + length]
    return FirstFrame.TUNLIB if mac1_valid(server_public, data[:HEADER_LEN], body) else FirstFrame.FOREIGN
