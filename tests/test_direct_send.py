"""PeerLink.send_now and hand_on: the TUN reader sends past an idle queue without ever blocking.

Driven over a real socketpair (no root): what arrives must be the same frames, whole and in
order, whether the socket took everything at once or the sender thread had to flush a rest.
"""

from __future__ import annotations

import socket
import threading

import pytest

from core import TUN_SOURCE
from framing import MAX_FRAME_BODY, FrameDecoder, FrameType
from transport import ReceiveState, SendState
from tunlib import ClientSession, PeerLink, hand_on

KEY = bytes(range(32))


def pair() -> tuple[PeerLink, socket.socket]:
    ours, theirs = socket.socketpair()
    link = PeerLink(ours, SendState(KEY), ReceiveState(bytes(32)), FrameDecoder(MAX_FRAME_BODY, 1 << 20))
    return link, theirs


def receive_all(sock: socket.socket, count: int) -> list[bytes]:
    """Read and open ``count`` DATA frames sealed with KEY."""
    decoder, recv, out = FrameDecoder(MAX_FRAME_BODY, 1 << 20), ReceiveState(KEY), []
    while len(out) < count:
        got = sock.recv_into(decoder.free_space())
        assert got, "the link closed early"
        decoder.commit(got)
        for frame_type, header, body in decoder.frames():
            assert frame_type == FrameType.DATA
            out.append(recv.open(header, body))
    return out


def test_an_idle_link_sends_at_once_and_counts() -> None:
    link, theirs = pair()
    packets = [bytes([n]) * (100 + n) for n in range(5)]
    assert link.send_now(packets) and not link.backlogged
    assert receive_all(theirs, 5) == packets
    assert (link.counters.tx_packets, link.counters.tx_bytes) == (5, sum(map(len, packets)))


def test_a_busy_link_is_left_alone() -> None:
    link, theirs = pair()
    with link.send_lock:  # the sender thread is mid-batch
        result: list[bool] = []
        other = threading.Thread(target=lambda: result.append(link.send_now([b"x" * 40])))
        other.start()
        other.join(5)
        assert result == [False]
    assert link.counters.tx_packets == 0
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing was written
        theirs.recv(100)


def test_what_a_full_socket_refuses_waits_and_a_flush_sends_it_whole() -> None:
    link, theirs = pair()
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    packets = [bytes([n % 256]) * 1400 for n in range(150)]  # far more than the socket takes
    assert link.send_now(packets)
    assert link.backlogged
    assert not link.send_now([b"must wait behind the rest"])  # never interleaved with the rest
    flusher = threading.Thread(target=lambda: link.send_packets([b"after"]))
    flusher.start()
    got = receive_all(theirs, 151)
    flusher.join(5)
    assert got == [*packets, b"after"]
    assert not link.backlogged


def test_hand_on_queues_behind_a_backlog_and_sends_directly_when_idle() -> None:
    link, theirs = pair()
    session = ClientSession("bob", bytes(32), bytes([10, 0, 0, 3]), link)
    session.queue.put(TUN_SOURCE, b"queued first")
    hand_on(session, [b"second"])  # the queue is not empty: no overtaking
    assert session.queue.get_batch() == [b"queued first", b"second"]
    session.queue.release()
    hand_on(session, [b"direct"])  # now idle: straight to the socket
    assert receive_all(theirs, 1) == [b"direct"]
