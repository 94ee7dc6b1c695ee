"""The server's per-client queue (tunlib.PacketQueue): the fair queue made thread-safe, with the
wake-ups and the "idle" claim that lets the TUN reader send past an empty queue."""

from __future__ import annotations

import threading

from core import TUN_SOURCE
from tunlib import SEND_QUEUE_BYTES, SEND_QUEUE_PACKETS, PacketQueue

ALICE = bytes([10, 0, 0, 2])


def test_packet_bound_drops_and_counts() -> None:
    queue = PacketQueue(max_packets=3, max_bytes=10_000)
    assert all(queue.put(TUN_SOURCE, bytes([n])) for n in range(3))
    assert not queue.put(TUN_SOURCE, b"late")
    assert queue.dropped == 1
    assert queue.get_batch() == [b"\x00", b"\x01", b"\x02"]


def test_the_default_byte_bound_keeps_super_packets_from_piling_up() -> None:
    queue = PacketQueue()
    big = bytes(65_536)
    accepted = sum(queue.put(TUN_SOURCE, big) for _ in range(SEND_QUEUE_PACKETS))
    assert accepted == SEND_QUEUE_BYTES // len(big) == 32
    assert queue.put(ALICE, b"a small inner ACK from someone else")  # pushes one super-packet out


def test_close_wakes_a_sleeping_consumer_with_none() -> None:
    queue = PacketQueue()
    result: list[object] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch()))
    consumer.start()
    queue.close()
    consumer.join(5)
    assert not consumer.is_alive() and result == [None]


def test_a_put_wakes_a_sleeping_consumer() -> None:
    queue = PacketQueue()
    result: list[object] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch()))
    consumer.start()
    queue.put(TUN_SOURCE, b"packet")
    consumer.join(5)
    assert result == [[b"packet"]]


def test_want_flush_wakes_the_consumer_with_an_empty_batch() -> None:
    queue = PacketQueue()
    queue.want_flush()
    assert queue.get_batch() == []


def test_the_queue_may_be_bypassed_only_when_empty_and_nobody_sends() -> None:
    queue = PacketQueue()
    assert queue.claim_idle()
    assert not queue.claim_idle()  # one claim at a time
    queue.release()
    queue.put(TUN_SOURCE, b"waiting")
    assert not queue.claim_idle()  # a queued packet must not be overtaken
    assert queue.get_batch() == [b"waiting"]
    assert not queue.claim_idle()  # the sender holds a batch
    queue.release()
    assert queue.claim_idle()
    queue.release()
    queue.close()
    assert not queue.claim_idle()


def test_concurrent_producers_lose_nothing_when_there_is_room() -> None:
    queue = PacketQueue(max_packets=10**6, max_bytes=10**9)
    sources = [bytes([10, 0, 0, n]) for n in range(4)]
    producers = [
        threading.Thread(target=lambda s=s: [queue.put(s, s + bytes(96)) for _ in range(5_000)]) for s in sources
    ]
    for producer in producers:
        producer.start()
    taken = 0
    while taken < 20_000:
        batch = queue.get_batch(limit=1_000)
        assert batch is not None
        taken += len(batch)
        queue.release()
    for producer in producers:
        producer.join()
    assert taken == 20_000 and queue.dropped == 0
