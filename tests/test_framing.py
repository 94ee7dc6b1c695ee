"""Tests for framing.py: the 5-byte header and the incremental FrameDecoder.

The decoder is checked against the simplest possible model: whatever way a byte stream is
cut into recv() chunks, the same frames must come out, in order, and nothing else.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wiretools import feed

import handshake
from framing import (
    AEAD_TAG_LEN,
    HEADER,
    HEADER_LEN,
    MAC1_LEN,
    MAX_FRAME_BODY,
    MAX_HANDSHAKE_BODY,
    MAX_PACKET_LEN,
    NOISE_INIT_MIN,
    FirstFrame,
    FrameDecoder,
    FrameError,
    FrameType,
    RejectReason,
    classify_first_frame,
    compute_mac1,
    encode_frame,
    encode_header,
    encode_init_frame,
    mac1_valid,
)

MAX_BODY = 300
BUFFER = 4096


def drain(decoder: FrameDecoder) -> list[tuple[int, bytes, bytes]]:
    """Copy out every complete frame (the views are only valid until the next free_space)."""
    return [(t, bytes(h), bytes(b)) for t, h, b in decoder.frames()]


def decode_in_chunks(stream: bytes, cuts: list[int], max_body: int = MAX_BODY, buffer: int = BUFFER) -> list:
    decoder = FrameDecoder(max_body, buffer)
    out = []
    bounds = [0, *sorted(cuts), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        feed(decoder, stream[lo:hi])
        out.extend(drain(decoder))
    assert decoder.buffered == 0
    return out


def expected(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes, bytes]]:
    return [(t, struct.pack("!IB", len(b), t), b) for t, b in frames]


# -- constants and encoding ---------------------------------------------------------


def test_wire_constants():
    assert HEADER_LEN == 5
    assert AEAD_TAG_LEN == 16
    assert MAX_PACKET_LEN == 65535 + 12
    assert MAX_FRAME_BODY == 65535 + 12 + 16
    assert MAX_HANDSHAKE_BODY == 1024
    assert [int(t) for t in FrameType] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert FrameType.HANDSHAKE_INIT == 0x01
    assert FrameType.HANDSHAKE_RESPONSE == 0x02
    assert FrameType.REJECT == 0x03
    assert FrameType.DATA == 0x04
    assert [int(r) for r in RejectReason] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("frame_type", "length", "wire"),
    [
        (FrameType.DATA, 1500, "000005dc04"),
        (FrameType.HANDSHAKE_INIT, 0, "0000000001"),
        (FrameType.HANDSHAKE_RESPONSE, 0x01020304, "0102030402"),
        (FrameType.REJECT, 1, "0000000103"),
        (FrameType.DATA, 2**32 - 1, "ffffffff04"),
        (0xFF, 65563, "0001001bff"),
    ],
)
def test_encode_header_known_vectors(frame_type, length, wire):
    assert encode_header(frame_type, length) == bytes.fromhex(wire)


def test_encode_header_rejects_length_beyond_u32():
    with pytest.raises(struct.error):
        encode_header(FrameType.DATA, 2**32)


@pytest.mark.parametrize(
    ("frame_type", "body", "wire"),
    [
        (FrameType.REJECT, bytes([RejectReason.UNKNOWN_CLIENT]), "000000010302"),
        (FrameType.HANDSHAKE_INIT, b"", "0000000001"),
        (FrameType.HANDSHAKE_RESPONSE, b"abc", "0000000302616263"),
        (FrameType.DATA, bytes(range(10)), "0000000a04" + bytes(range(10)).hex()),
    ],
)
def test_encode_frame_known_vectors(frame_type, body, wire):
    assert encode_frame(frame_type, body) == bytes.fromhex(wire)


def test_header_struct_is_length_then_type():
    assert HEADER.unpack(bytes.fromhex("000005dc04")) == (1500, 4)


# -- decoder: basic behaviour -------------------------------------------------------


def test_decoder_rejects_buffer_smaller_than_one_max_frame():
    with pytest.raises(ValueError, match="buffer"):
        FrameDecoder(100, HEADER_LEN + 99)
    FrameDecoder(100, HEADER_LEN + 100)  # exactly one maximum frame is enough


def test_decoder_yields_header_and_body_views():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(FrameType.DATA, b"hello") + encode_frame(FrameType.REJECT, b"\x01"))
    frames = drain(decoder)
    assert frames == [
        (FrameType.DATA, bytes.fromhex("0000000504"), b"hello"),
        (FrameType.REJECT, bytes.fromhex("0000000103"), b"\x01"),
    ]
    assert decoder.buffered == 0
    assert drain(decoder) == []


def test_decoder_empty_body_and_unknown_type_pass_through():
    """Types are the caller's business: the decoder only cuts the stream."""
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(0x99, b"") + encode_frame(0x00, b"x"))
    assert drain(decoder) == [(0x99, bytes.fromhex("0000000099"), b""), (0x00, bytes.fromhex("0000000100"), b"x")]


def test_buffered_counts_partial_frame_bytes():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    frame = encode_frame(FrameType.DATA, b"x" * 20)
    assert decoder.buffered == 0
    feed(decoder, frame[:3])
    assert drain(decoder) == []
    assert decoder.buffered == 3
    feed(decoder, frame[3:10])
    assert drain(decoder) == []
    assert decoder.buffered == 10
    feed(decoder, frame[10:] + frame[:7])
    assert drain(decoder) == [(FrameType.DATA, frame[:5], b"x" * 20)]
    assert decoder.buffered == 7


def test_free_space_commit_path_like_recv_into():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    stream = encode_frame(1, b"abc") + encode_frame(2, b"defg")
    space = decoder.free_space()
    assert len(space) == BUFFER
    space[: len(stream)] = stream
    decoder.commit(len(stream))
    assert drain(decoder) == expected([(1, b"abc"), (2, b"defg")])


def test_free_space_compacts_partial_frame_to_the_front():
    """After compaction the whole buffer minus the pending partial frame is free, so a
    maximum-size frame always fits behind it."""
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(1, b"a" * 100) + encode_frame(2, b"b" * 50)[:20])
    drain(decoder)
    assert decoder.buffered == 20
    assert len(decoder.free_space()) == BUFFER - 20


def test_max_frame_fits_exactly_sized_buffer_after_partial_consumption():
    max_body = 100
    decoder = FrameDecoder(max_body, HEADER_LEN + max_body)
    small = encode_frame(1, b"s" * 10)
    big = encode_frame(2, b"B" * max_body)
    feed(decoder, small + big[:50])
    assert drain(decoder) == expected([(1, b"s" * 10)])
    feed(decoder, big[50:])
    assert drain(decoder) == expected([(2, b"B" * max_body)])


def test_frames_stops_at_first_frame_when_caller_breaks_out():
    """read_handshake_frame returns after one frame; the rest must stay buffered."""
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(1, b"first") + encode_frame(4, b"second") + encode_frame(4, b"thi"))
    for frame_type, _header, body in decoder.frames():
        assert (frame_type, bytes(body)) == (1, b"first")
        break
    assert decoder.buffered == len(encode_frame(4, b"second")) + len(encode_frame(4, b"thi"))
    assert drain(decoder) == expected([(4, b"second"), (4, b"thi")])


# -- decoder: limits ---------------------------------------------------------------


def test_oversized_length_rejected_from_header_alone():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_header(FrameType.DATA, MAX_BODY + 1))  # no body at all
    with pytest.raises(FrameError, match=str(MAX_BODY + 1)):
        drain(decoder)


def test_length_at_the_limit_waits_for_the_body():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_header(FrameType.DATA, MAX_BODY))
    assert drain(decoder) == []
    feed(decoder, b"z" * MAX_BODY)
    assert drain(decoder) == expected([(FrameType.DATA, b"z" * MAX_BODY)])


def test_huge_length_rejected_even_with_a_huge_buffer():
    decoder = FrameDecoder(MAX_FRAME_BODY, 1 << 20)
    feed(decoder, encode_header(FrameType.DATA, 2**32 - 1))
    with pytest.raises(FrameError):
        drain(decoder)


def test_frames_before_an_oversized_header_are_still_delivered():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(4, b"ok") + encode_header(4, MAX_BODY + 1))
    got = []
    with pytest.raises(FrameError):
        for t, _h, b in decoder.frames():
            got.append((t, bytes(b)))
    assert got == [(4, b"ok")]


def test_max_body_can_be_raised_after_the_handshake():
    """session.py creates its decoder with MAX_HANDSHAKE_BODY and raises the limit itself when it
    hands the decoder to the PeerLink; nobody else changes it."""
    decoder = FrameDecoder(MAX_FRAME_BODY, 1 << 20)
    decoder.max_body = MAX_HANDSHAKE_BODY
    feed(decoder, encode_header(FrameType.DATA, MAX_HANDSHAKE_BODY + 1))
    with pytest.raises(FrameError):
        drain(decoder)
    decoder = FrameDecoder(MAX_FRAME_BODY, 1 << 20)
    decoder.max_body = MAX_HANDSHAKE_BODY
    decoder.max_body = MAX_FRAME_BODY
    feed(decoder, encode_frame(FrameType.DATA, bytes(MAX_HANDSHAKE_BODY + 1)))
    assert len(drain(decoder)) == 1


def test_feed_overflow_raises_frame_error():
    decoder = FrameDecoder(100, HEADER_LEN + 100)
    with pytest.raises(FrameError, match="full"):
        feed(decoder, bytes(HEADER_LEN + 101))


def test_feed_overflow_when_unconsumed_frames_fill_the_buffer():
    decoder = FrameDecoder(10, 30)
    feed(decoder, encode_frame(1, b"0123456789") * 2)  # exactly 30 bytes, nothing consumed
    with pytest.raises(FrameError, match="full"):
        feed(decoder, b"\x00")


def test_feed_fills_buffer_exactly_without_error():
    decoder = FrameDecoder(10, 30)
    feed(decoder, encode_frame(1, b"0123456789") * 2)
    assert decoder.buffered == 30
    assert len(drain(decoder)) == 2
    feed(decoder, encode_frame(1, b"0123456789") * 2)  # space is reclaimed after consuming
    assert len(drain(decoder)) == 2


# -- decoder: views ----------------------------------------------------------------


def test_views_stay_valid_until_next_free_space():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(1, b"AAAA") + encode_frame(2, b"BBBB") + encode_frame(3, b"CCCCCC")[:7])
    views = list(decoder.frames())
    assert [(t, bytes(b)) for t, _h, b in views] == [(1, b"AAAA"), (2, b"BBBB")]
    # No free_space() yet: the views still show the frames, all at once.
    assert [bytes(h) for _t, h, _b in views] == [encode_header(1, 4), encode_header(2, 4)]
    assert [bytes(b) for _t, _h, b in views] == [b"AAAA", b"BBBB"]
    copies = [bytes(b) for _t, _h, b in views]
    # free_space() compacts the partial frame to the front, overwriting where frame 1 was:
    # this is why the contract says "copy before the next free_space()".
    decoder.free_space()
    assert bytes(views[0][1]) != encode_header(1, 4)
    assert copies == [b"AAAA", b"BBBB"]
    feed(decoder, b"CCCC")
    assert drain(decoder) == expected([(3, b"CCCCCC")])


def test_views_are_memoryviews_of_exact_size():
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_frame(4, b"payload"))
    ((_t, header, body),) = list(decoder.frames())
    assert isinstance(header, memoryview)
    assert isinstance(body, memoryview)
    assert len(header) == HEADER_LEN
    assert len(body) == 7


# -- decoder: every split point / random chunking ------------------------------------

STREAM_FRAMES = [(1, b"init-message"), (4, b""), (3, b"\x02"), (4, bytes(range(40))), (2, b"r")]
STREAM = b"".join(encode_frame(t, b) for t, b in STREAM_FRAMES)


def test_every_single_split_point():
    for cut in range(len(STREAM) + 1):
        assert decode_in_chunks(STREAM, [cut]) == expected(STREAM_FRAMES), cut


def test_every_pair_of_split_points():
    n = len(STREAM)
    want = expected(STREAM_FRAMES)
    for a in range(n + 1):
        for b in range(a, n + 1):
            assert decode_in_chunks(STREAM, [a, b]) == want, (a, b)


def test_one_byte_at_a_time():
    assert decode_in_chunks(STREAM, list(range(len(STREAM)))) == expected(STREAM_FRAMES)


frame_lists = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=MAX_BODY)),
    max_size=12,
)


@given(frames=frame_lists, data=st.data())
def test_random_frames_random_chunking(frames, data):
    stream = b"".join(encode_frame(t, b) for t, b in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_in_chunks(stream, cuts) == expected(frames)


@settings(max_examples=60)
@given(frames=frame_lists, data=st.data())
def test_random_chunking_through_recv_into_path(frames, data):
    """Same property through free_space()/commit(), with chunks capped by a small buffer."""
    stream = b"".join(encode_frame(t, b) for t, b in frames)
    decoder = FrameDecoder(MAX_BODY, HEADER_LEN + MAX_BODY)  # tightest legal buffer
    out = []
    pos = 0
    while pos < len(stream):
        space = decoder.free_space()
        assert len(space) > 0
        n = data.draw(st.integers(1, min(len(space), len(stream) - pos)))
        space[:n] = stream[pos : pos + n]
        decoder.commit(n)
        pos += n
        out.extend(drain(decoder))
    assert out == expected(frames)
    assert decoder.buffered == 0


@given(length=st.integers(MAX_BODY + 1, 2**32 - 1), frame_type=st.integers(0, 255))
def test_any_oversized_header_rejected(length, frame_type):
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, encode_header(frame_type, length))
    with pytest.raises(FrameError):
        drain(decoder)


@given(prefix=st.binary(max_size=4))
def test_incomplete_header_yields_nothing(prefix):
    decoder = FrameDecoder(MAX_BODY, BUFFER)
    feed(decoder, prefix)
    assert drain(decoder) == []
    assert decoder.buffered == len(prefix)


# -- mac1 ------------------------------------------------------------------------------

SERVER_PUBLIC = bytes(range(32))
OTHER_PUBLIC = bytes(range(1, 33))
NOISE_MESSAGE = bytes(range(110))


def test_mac1_constants_match_the_handshake():
    assert NOISE_INIT_MIN == handshake.INIT_OVERHEAD


def test_init_frame_layout():
    frame = encode_init_frame(SERVER_PUBLIC, NOISE_MESSAGE)
    assert HEADER.unpack(frame[:HEADER_LEN]) == (len(NOISE_MESSAGE) + MAC1_LEN, FrameType.HANDSHAKE_INIT)
    assert frame[HEADER_LEN:-MAC1_LEN] == NOISE_MESSAGE
    assert frame[-MAC1_LEN:] == compute_mac1(SERVER_PUBLIC, frame[:HEADER_LEN], NOISE_MESSAGE)
    assert mac1_valid(SERVER_PUBLIC, frame[:HEADER_LEN], frame[HEADER_LEN:])


def test_mac1_of_another_server_is_invalid():
    frame = encode_init_frame(OTHER_PUBLIC, NOISE_MESSAGE)
    assert not mac1_valid(SERVER_PUBLIC, frame[:HEADER_LEN], frame[HEADER_LEN:])
    assert classify_first_frame(SERVER_PUBLIC, frame) is FirstFrame.FOREIGN


@given(position=st.integers(0, HEADER_LEN + len(NOISE_MESSAGE) + MAC1_LEN - 1), flip=st.integers(1, 255))
def test_any_flipped_byte_breaks_mac1(position, flip):
    """The header is covered too: a changed length or type fails like a changed body."""
    frame = bytearray(encode_init_frame(SERVER_PUBLIC, NOISE_MESSAGE))
    frame[position] ^= flip
    assert not mac1_valid(SERVER_PUBLIC, bytes(frame[:HEADER_LEN]), bytes(frame[HEADER_LEN:]))


@given(body=st.binary(max_size=400))
def test_garbage_never_has_a_valid_mac1(body):
    header = encode_header(FrameType.HANDSHAKE_INIT, len(body))
    assert not mac1_valid(SERVER_PUBLIC, header, body)


def test_classify_first_frame():
    frame = encode_init_frame(SERVER_PUBLIC, NOISE_MESSAGE)
    for cut in range(len(frame)):
        assert classify_first_frame(SERVER_PUBLIC, frame[:cut]) is FirstFrame.INCOMPLETE, cut
    assert classify_first_frame(SERVER_PUBLIC, frame) is FirstFrame.TUNLIB
    assert classify_first_frame(SERVER_PUBLIC, frame + b"more") is FirstFrame.TUNLIB


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # TLS handshake record
        b"SSH-2.0-OpenSSH_9.6\r\n",
        encode_header(FrameType.DATA, 100),
        encode_header(FrameType.HANDSHAKE_INIT, NOISE_INIT_MIN + MAC1_LEN - 1),  # too short to be one
        encode_header(FrameType.HANDSHAKE_INIT, MAX_HANDSHAKE_BODY + 1),
    ],
)
def test_classify_other_protocols_from_the_header_alone(first_bytes):
    assert classify_first_frame(SERVER_PUBLIC, first_bytes) is FirstFrame.FOREIGN
