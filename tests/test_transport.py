"""Tests for transport.py: AES-GCM sealing of DATA frames with implicit counter nonces.

The reference is AESGCM used directly in the test with the documented layout: nonce = 4 zero
bytes || u64 big-endian counter, associated data = the frame's 5-byte header. The counter rule
(accept only the exact next counter, never advance on failure) is what turns replay,
reordering and loss on a TCP stream into authentication failures.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from wiretools import feed

from framing import AEAD_TAG_LEN, HEADER_LEN, FrameDecoder, FrameType, encode_header
from transport import (
    NONCE,
    REJECT_AFTER_MESSAGES,
    DecryptError,
    NonceExhausted,
    ReceiveState,
    SendState,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def reference_frame(key: bytes, counter: int, plaintext: bytes) -> bytes:
    """A DATA frame built independently from the documented wire format."""
    header = struct.pack("!IB", len(plaintext) + 16, 0x04)
    nonce = b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def split(frame: bytes) -> tuple[bytes, bytes]:
    return frame[:HEADER_LEN], frame[HEADER_LEN:]


def sealed(plaintexts: list[bytes], key: bytes = KEY) -> list[bytes]:
    send = SendState(key)
    return [send.seal(p) for p in plaintexts]


# -- known vectors -------------------------------------------------------------------


def test_constants():
    assert REJECT_AFTER_MESSAGES < 2**64 - 1  # Noise reserves nonce 2**64 - 1 (its section 5.1)
    assert NONCE.pack(0) == bytes(12)
    assert NONCE.pack(1) == bytes(11) + b"\x01"
    assert NONCE.pack(0x0102030405060708) == bytes.fromhex("000000000102030405060708")


def test_known_vector_counter_0_and_1():
    send = SendState(KEY)
    f0 = send.seal(b"hello")
    f1 = send.seal(b"hello")
    assert f0 == reference_frame(KEY, 0, b"hello")
    assert f1 == reference_frame(KEY, 1, b"hello")
    assert f0 != f1  # same plaintext, different nonce
    assert f0[:HEADER_LEN] == bytes.fromhex("0000001504")  # 5 + 16 = 21 bytes of body
    assert send.counter == 2


def test_known_vector_pinned_bytes():
    """Pinned output so a change in the reference helper cannot hide a change in both."""
    frame = SendState(bytes(32)).seal(b"")
    assert frame.hex() == "0000001004" + AESGCM(bytes(32)).encrypt(bytes(12), b"", bytes.fromhex("0000001004")).hex()
    assert len(frame) == HEADER_LEN + AEAD_TAG_LEN


def test_receive_opens_independently_sealed_frames():
    recv = ReceiveState(KEY)
    for counter, text in enumerate([b"one", b"", b"three" * 100]):
        assert recv.open(*split(reference_frame(KEY, counter, text))) == text
    assert recv.counter == 3


def test_header_is_associated_data_not_plaintext():
    frame = SendState(KEY).seal(b"abc")
    header, body = split(frame)
    nonce = bytes(12)
    assert AESGCM(KEY).decrypt(nonce, body, header) == b"abc"
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(nonce, body, b"")


# -- round trips -------------------------------------------------------------------


def test_round_trip_sequence():
    texts = [b"", b"a", bytes(range(256)) * 10, b"\xff" * 65547]
    recv = ReceiveState(KEY)
    assert [recv.open(*split(f)) for f in sealed(texts)] == texts


def test_open_into_writes_plaintext_at_start_of_out():
    frame = SendState(KEY).seal(b"payload")
    out = bytearray(b"#" * 32)
    n = ReceiveState(KEY).open_into(*split(frame), memoryview(out))
    assert n == 7
    assert out == b"payload" + b"#" * 25


def test_open_accepts_memoryviews_from_frame_decoder():
    texts = [b"x" * i for i in range(5)]
    decoder = FrameDecoder(1000, 4096)
    feed(decoder, b"".join(sealed(texts)))
    recv = ReceiveState(KEY)
    got = [recv.open(h, b) for t, h, b in decoder.frames() if t == FrameType.DATA]
    assert got == texts


def test_seal_and_seal_into_are_equivalent():
    texts = [b"", b"abc", bytes(1000)]
    a, b = SendState(KEY), SendState(KEY)
    out = bytearray(4096)
    for text in texts:
        frame = a.seal(text)
        n = b.seal_into(text, memoryview(out))
        assert n == HEADER_LEN + len(text) + AEAD_TAG_LEN
        assert bytes(out[:n]) == frame
    assert a.counter == b.counter == len(texts)


def test_seal_into_leaves_bytes_after_the_frame_untouched():
    out = bytearray(b"\xaa" * 100)
    n = SendState(KEY).seal_into(memoryview(b"hi"), memoryview(out))
    assert n == HEADER_LEN + 2 + AEAD_TAG_LEN
    assert out[n:] == b"\xaa" * (100 - n)


def test_seal_into_at_an_offset():
    send = SendState(KEY)
    out = memoryview(bytearray(200))
    n0 = send.seal_into(b"first", out)
    n1 = send.seal_into(b"second", out[n0:])
    assert bytes(out[: n0 + n1]) == reference_frame(KEY, 0, b"first") + reference_frame(KEY, 1, b"second")


@given(texts=st.lists(st.binary(max_size=2000), max_size=20))
def test_round_trip_property(texts):
    recv = ReceiveState(KEY)
    assert [recv.open(*split(f)) for f in sealed(texts)] == texts
    assert recv.counter == len(texts)


@settings(max_examples=50)
@given(texts=st.lists(st.binary(max_size=500), min_size=1, max_size=10), data=st.data())
def test_round_trip_through_decoder_with_random_chunks(texts, data):
    stream = b"".join(sealed(texts))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(600, 8192)
    recv = ReceiveState(KEY)
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        feed(decoder, stream[lo:hi])
        out.extend(recv.open(h, b) for _t, h, b in decoder.frames())
    assert out == texts


@given(key=st.binary(min_size=32, max_size=32), counter=st.integers(0, REJECT_AFTER_MESSAGES - 1), text=st.binary())
def test_matches_reference_at_any_counter(key, counter, text):
    send = SendState(key)
    send.counter = counter
    frame = send.seal(text)
    assert frame == reference_frame(key, counter, text)
    recv = ReceiveState(key)
    recv.counter = counter
    assert recv.open(*split(frame)) == text


# -- counter rules ------------------------------------------------------------------


def assert_rejected(recv: ReceiveState, header: bytes, body: bytes) -> None:
    before = recv.counter
    with pytest.raises(DecryptError):
        recv.open(header, body)
    assert recv.counter == before, "a failed open must not advance the counter"


def test_replayed_frame_rejected():
    f0, f1 = sealed([b"zero", b"one"])
    recv = ReceiveState(KEY)
    assert recv.open(*split(f0)) == b"zero"
    assert_rejected(recv, *split(f0))
    assert recv.open(*split(f1)) == b"one"
    assert_rejected(recv, *split(f1))
    assert_rejected(recv, *split(f0))


def test_reordered_frames_rejected():
    f0, f1, _f2 = sealed([b"zero", b"one", b"two"])
    recv = ReceiveState(KEY)
    assert_rejected(recv, *split(f1))
    assert recv.counter == 0
    assert recv.open(*split(f0)) == b"zero"
    assert recv.open(*split(f1)) == b"one"


def test_dropped_frame_rejected():
    f0, f1, f2 = sealed([b"zero", b"one", b"two"])
    recv = ReceiveState(KEY)
    recv.open(*split(f0))
    assert_rejected(recv, *split(f2))
    assert recv.open(*split(f1)) == b"one"
    assert recv.open(*split(f2)) == b"two"


@pytest.mark.parametrize("index", range(HEADER_LEN))
def test_tampered_header_byte_rejected(index):
    (frame,) = sealed([b"some packet"])
    header, body = split(frame)
    bad = bytearray(header)
    bad[index] ^= 0x01
    recv = ReceiveState(KEY)
    assert_rejected(recv, bytes(bad), body)
    assert recv.open(header, body) == b"some packet"


def test_tampered_type_byte_rejected():
    (frame,) = sealed([b"x"])
    header, body = split(frame)
    assert header == encode_header(FrameType.DATA, len(body))
    for frame_type in (FrameType.HANDSHAKE_INIT, FrameType.HANDSHAKE_RESPONSE, FrameType.REJECT, 0x00, 0xFF):
        assert_rejected(ReceiveState(KEY), encode_header(frame_type, len(body)), body)


def test_tampered_length_in_header_rejected():
    (frame,) = sealed([b"0123456789"])
    header, body = split(frame)
    assert header == encode_header(FrameType.DATA, len(body))
    recv = ReceiveState(KEY)
    assert_rejected(recv, encode_header(FrameType.DATA, len(body) - 1), body)
    assert_rejected(recv, encode_header(FrameType.DATA, len(body) + 1), body)


@given(data=st.data())
def test_tampered_body_rejected(data):
    text = data.draw(st.binary(max_size=100))
    (frame,) = sealed([text])
    header, body = split(frame)
    pos = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(body)
    bad[pos] ^= 1 << bit
    recv = ReceiveState(KEY)
    assert_rejected(recv, header, bytes(bad))
    assert recv.open(header, body) == text


@pytest.mark.parametrize("cut", [1, AEAD_TAG_LEN - 1, AEAD_TAG_LEN, AEAD_TAG_LEN + 5, 30])
def test_truncated_body_rejected(cut):
    (frame,) = sealed([b"a fairly long packet body"])
    header, body = split(frame)
    recv = ReceiveState(KEY)
    assert_rejected(recv, header, body[: len(body) - cut])
    assert recv.open(header, body) == b"a fairly long packet body"


@pytest.mark.parametrize("body", [b"", b"\x00", bytes(AEAD_TAG_LEN - 1)])
def test_body_shorter_than_tag_rejected(body):
    assert_rejected(ReceiveState(KEY), encode_header(FrameType.DATA, len(body)), body)


def test_frame_from_another_key_rejected():
    (frame,) = sealed([b"secret"], key=OTHER_KEY)
    recv = ReceiveState(KEY)
    assert_rejected(recv, *split(frame))


def test_frame_from_other_direction_rejected():
    """Each direction has its own key: a reflected frame does not open."""
    k1, k2 = KEY, OTHER_KEY
    reflected = SendState(k1).seal(b"to server")
    assert_rejected(ReceiveState(k2), *split(reflected))


def test_open_into_failure_leaves_counter():
    (frame,) = sealed([b"abc"], key=OTHER_KEY)
    recv = ReceiveState(KEY)
    with pytest.raises(DecryptError):
        recv.open_into(*split(frame), memoryview(bytearray(100)))
    assert recv.counter == 0


# -- nonce exhaustion ---------------------------------------------------------------


def test_send_nonce_exhausted():
    send = SendState(KEY)
    send.counter = REJECT_AFTER_MESSAGES - 1
    last = send.seal(b"last")
    assert last == reference_frame(KEY, REJECT_AFTER_MESSAGES - 1, b"last")
    assert send.counter == REJECT_AFTER_MESSAGES
    with pytest.raises(NonceExhausted):
        send.seal(b"one too many")
    with pytest.raises(NonceExhausted):
        send.seal_into(b"one too many", memoryview(bytearray(100)))
    assert send.counter == REJECT_AFTER_MESSAGES


def test_receive_nonce_exhausted():
    send = SendState(KEY)
    send.counter = REJECT_AFTER_MESSAGES - 1
    last = send.seal(b"last")
    after = reference_frame(KEY, REJECT_AFTER_MESSAGES, b"after")  # a frame nobody should seal
    recv = ReceiveState(KEY)
    recv.counter = REJECT_AFTER_MESSAGES - 1
    assert recv.open(*split(last)) == b"last"
    assert recv.counter == REJECT_AFTER_MESSAGES
    with pytest.raises(NonceExhausted):
        recv.open(*split(after))
    assert recv.counter == REJECT_AFTER_MESSAGES


def test_counters_start_at_zero():
    assert SendState(KEY).counter == 0
    assert ReceiveState(KEY).counter == 0
