"""Transport crypto: the AES-GCM state of one direction of one session.

After the handshake each side holds two keys: one to seal what it sends, one to open what
it receives. Each key comes with a counter that starts at 0 and grows by one per sealed frame
(DATA, and the keepalive and rekey frames of rekey.py, which also decides when keys rotate).
The counter is the AES-GCM nonce (4 zero bytes, then the counter as a 64-bit big-endian
number, as in the Noise spec), so no (key, nonce) pair is ever used twice.

The counter is never sent. TCP delivers frames in order, so the receiver simply expects
the next number; a replayed, dropped or reordered frame is opened with the wrong nonce,
fails authentication, and the connection is closed. This module does no I/O.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from framing import AEAD_TAG_LEN, HEADER, HEADER_LEN, FrameType

NONCE = struct.Struct("!4xQ")
"""4 zero bytes followed by the 64-bit big-endian counter (Noise, section 12.4)."""

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
"""After this many frames a key must not be used again (the WireGuard value, which keeps
clear of Noise's reserved nonce 2**64 - 1). The session is closed and a new handshake made.
Rekeying (rekey.py) replaces every key long before: this is the last line of defence."""


class NonceExhausted(Exception):
    """The key has sealed REJECT_AFTER_MESSAGES frames; reusing a nonce is never an option."""


class DecryptError(Exception):
    """A frame failed authentication: tampered, replayed, reordered, or from another session."""


class SendState:
    """Seals frames in one direction. Not thread-safe: one sender owns it."""

    def __init__(self, key: bytes) -> None:
        self._encrypt_into = AESGCM(key).encrypt_into
        self.counter = 0

    def seal_into(self, plaintext: bytes | memoryview, out: memoryview, frame_type: int = FrameType.DATA) -> int:
        """Write one complete frame (header and sealed body) at the start of ``out``.

        Returns the number of bytes written. ``out`` must have room for
        ``HEADER_LEN + len(plaintext) + AEAD_TAG_LEN`` bytes. Every sealed type (DATA and the
        session's control frames, see rekey.py) shares the one counter of this key.
        """
        counter = self.counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise NonceExhausted("send key used for the maximum number of messages")
        self.counter = counter + 1
        body_len = len(plaintext) + AEAD_TAG_LEN
        header = HEADER.pack(body_len, frame_type)
        out[:HEADER_LEN] = header
        end = HEADER_LEN + body_len
        self._encrypt_into(NONCE.pack(counter), plaintext, header, out[HEADER_LEN:end])
        return end

    def seal(self, plaintext: bytes | memoryview, frame_type: int = FrameType.DATA) -> bytes:
        """Return one sealed frame as new bytes (the convenient, slower form)."""
        out = bytearray(HEADER_LEN + len(plaintext) + AEAD_TAG_LEN)
        self.seal_into(plaintext, memoryview(out), frame_type)
        return bytes(out)


class ReceiveState:
    """Opens sealed frames in one direction, accepting only the exact next counter."""

    def __init__(self, key: bytes) -> None:
        self._decrypt_into = AESGCM(key).decrypt_into
        self.counter = 0

    def open_into(self, header: memoryview | bytes, body: memoryview | bytes, out: memoryview) -> int:
        """Decrypt ``body`` into the start of ``out``; return the plaintext length.

        ``header`` is the frame's 5-byte header, authenticated as associated data.
        """
        counter = self.counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise NonceExhausted("receive key used for the maximum number of messages")
        length = len(body) - AEAD_TAG_LEN
        if length < 0:
            raise DecryptError("frame shorter than an authentication tag")
        try:
            self._decrypt_into(NONCE.pack(counter), body, header, out[:length])
        except InvalidTag:
            raise DecryptError(f"frame {counter} failed authentication") from None
        self.counter = counter + 1
        return length

    def open(self, header: memoryview | bytes, body: memoryview | bytes) -> bytes:
        """Return the plaintext of one frame as new bytes (the convenient, slower form)."""
        out = bytearray(max(len(body) - AEAD_TAG_LEN, 0))
        self.open_into(header, body, memoryview(out))
        return bytes(out)
