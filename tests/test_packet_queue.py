"""The server's per-client queue: bounded in packets and in bytes, drop-newest, never blocking."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tunlib import SEND_QUEUE_BYTES, SEND_QUEUE_PACKETS, PacketQueue


def test_the_default_bounds_are_the_documented_ones() -> None:
    queue = PacketQueue()
    assert (queue.max_packets, queue.max_bytes) == (SEND_QUEUE_PACKETS, SEND_QUEUE_BYTES) == (256, 2 << 20)


def test_packet_bound_drops_the_newest_and_counts_it() -> None:
    queue = PacketQueue(max_packets=3, max_bytes=10_000)
    assert all(queue.put(bytes([n])) for n in range(3))
    assert not queue.put(b"late")
    assert queue.dropped == 1
    assert queue.get_batch() == [b"\x00", b"\x01", b"\x02"]


def test_byte_bound_keeps_super_packets_from_piling_up_but_leaves_room_for_small_ones() -> None:
    queue = PacketQueue(max_packets=100, max_bytes=200_000)
    big = bytes(65_536)
    assert [queue.put(big) for _ in range(4)] == [True, True, True, False]
    assert queue.put(b"a small inner ACK")
    assert queue.dropped == 1
    assert len(queue.get_batch()) == 4
    assert queue.put(big)  # space is given back as packets are taken


def test_get_batch_respects_its_limit_and_keeps_order() -> None:
    queue = PacketQueue()
    for n in range(10):
        queue.put(bytes([n]))
    assert queue.get_batch(limit=4) == [bytes([n]) for n in range(4)]
    assert queue.get_batch(limit=100) == [bytes([n]) for n in range(4, 10)]


def test_close_wakes_a_sleeping_consumer_with_an_empty_batch() -> None:
    queue = PacketQueue()
    result: list[list[bytes]] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch()))
    consumer.start()
    queue.close()
    consumer.join(5)
    assert not consumer.is_alive() and result == [[]]


def test_a_put_wakes_a_sleeping_consumer() -> None:
    queue = PacketQueue()
    result: list[list[bytes]] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch()))
    consumer.start()
    queue.put(b"packet")
    consumer.join(5)
    assert result == [[b"packet"]]


@given(st.lists(st.binary(max_size=300), max_size=200), st.integers(1, 50), st.integers(1, 5_000))
def test_what_comes_out_is_what_was_accepted_in_order(packets: list[bytes], max_packets: int, max_bytes: int) -> None:
    queue = PacketQueue(max_packets=max_packets, max_bytes=max_bytes)
    accepted, out = [], []
    for packet in packets:
        if queue.put(packet):
            accepted.append(packet)
        if len(accepted) - len(out) >= max_packets:
            out += queue.get_batch(limit=7)
    while len(out) < len(accepted):
        out += queue.get_batch()
    assert out == accepted
    assert queue.dropped == len(packets) - len(accepted)


def test_concurrent_producers_keep_the_byte_count_exact() -> None:
    queue = PacketQueue(max_packets=10**6, max_bytes=10**9)
    producers = [threading.Thread(target=lambda: [queue.put(bytes(100)) for _ in range(5_000)]) for _ in range(4)]
    for producer in producers:
        producer.start()
    taken = 0
    while taken < 20_000:
        taken += len(queue.get_batch(limit=1_000))
    for producer in producers:
        producer.join()
    assert queue._bytes == 0 and queue.dropped == 0
