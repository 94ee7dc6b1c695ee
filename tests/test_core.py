"""The packet core (core.py): per-packet decisions and fair queueing, driven without any I/O."""

from __future__ import annotations

import struct
from collections import Counter as Tally

from hypothesis import given, settings
from hypothesis import strategies as st
from wiretools import VirtioNetHdr

from core import TUN_SOURCE, Counters, FairQueue, ServerCore, Verdict, client_verdict, icmp_reply
from packets import internet_checksum
from vnet import PLAIN_VNET_HDR

SERVER = bytes([10, 0, 0, 1])
ALICE = bytes([10, 0, 0, 2])
BOB = bytes([10, 0, 0, 3])
OUTSIDE = bytes([198, 51, 100, 7])


def ipv4(src: bytes, dst: bytes, payload: bytes = b"x" * 8, proto: int = 17) -> bytes:
    """A well-formed IPv4 packet with a correct header checksum."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src, dst))
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def echo_request(src: bytes, dst: bytes) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"ping")
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    return ipv4(src, dst, bytes(icmp), proto=1)


def make_core(vnet: int = 0, answer_icmp: bool = False, isolate: bool = False) -> ServerCore[str]:
    core: ServerCore[str] = ServerCore(SERVER, vnet, answer_icmp, isolate)
    core.routes.update({ALICE: "alice", BOB: "bob"})
    return core


# -- ServerCore.from_client ------------------------------------------------------------


def test_a_packet_to_the_outside_goes_to_the_tun_unchanged() -> None:
    counters, packet = Counters(), ipv4(ALICE, OUTSIDE)
    assert make_core().from_client(ALICE, packet, counters) == (Verdict.TUN, None, packet)
    assert counters == Counters()


def test_a_packet_to_another_client_goes_to_that_client() -> None:
    packet = ipv4(ALICE, BOB)
    assert make_core().from_client(ALICE, packet, Counters()) == (Verdict.CLIENT, "bob", packet)


def test_isolated_clients_cannot_reach_each_other_and_the_drop_is_counted() -> None:
    counters = Counters()
    assert make_core(isolate=True).from_client(ALICE, ipv4(ALICE, BOB), counters) == (Verdict.DROP, None, None)
    assert counters.dropped_isolated == 1
    # ...but the server and the world behind it still can be reached.
    assert make_core(isolate=True).from_client(ALICE, ipv4(ALICE, SERVER), counters)[0] == Verdict.TUN


def test_a_spoofed_source_is_dropped_and_counted_even_towards_another_client() -> None:
    counters = Counters()
    assert make_core().from_client(ALICE, ipv4(BOB, BOB), counters) == (Verdict.DROP, None, None)
    assert counters.dropped_spoofed == 1


def test_a_ping_to_the_server_is_answered_in_user_space_only_when_asked() -> None:
    request = echo_request(ALICE, SERVER)
    action, _, reply = make_core(answer_icmp=True).from_client(ALICE, request, Counters())
    assert action == Verdict.REPLY
    assert reply[12:16] == SERVER and reply[16:20] == ALICE and reply[20] == 0  # echo reply from us to alice
    assert make_core(answer_icmp=False).from_client(ALICE, request, Counters())[0] == Verdict.TUN


def test_offload_mode_reads_the_addresses_behind_the_virtio_header() -> None:
    core, packet = make_core(vnet=10), PLAIN_VNET_HDR + ipv4(ALICE, BOB)
    assert core.from_client(ALICE, packet, Counters()) == (Verdict.CLIENT, "bob", packet)
    action, _, reply = make_core(vnet=10, answer_icmp=True).from_client(
        ALICE, PLAIN_VNET_HDR + echo_request(ALICE, SERVER), Counters()
    )
    assert action == Verdict.REPLY and reply[:10] == PLAIN_VNET_HDR and reply[10 + 16 : 10 + 20] == ALICE


def test_a_bad_virtio_header_is_dropped_as_bad_vnet_before_the_source_is_looked_at() -> None:
    counters = Counters()
    bad = VirtioNetHdr(flags=0, gso_type=1, gso_size=0).pack() + ipv4(BOB, BOB)  # also spoofed
    assert make_core(vnet=10).from_client(ALICE, bad, counters)[0] == Verdict.DROP
    assert (counters.dropped_bad_vnet, counters.dropped_spoofed) == (1, 0)


@given(st.binary(max_size=64), st.sampled_from([0, 10]), st.booleans(), st.booleans())
def test_any_bytes_get_a_verdict_and_every_drop_is_counted_once(
    data: bytes, vnet: int, answer_icmp: bool, isolate: bool
) -> None:
    counters = Counters()
    action, peer, out = make_core(vnet, answer_icmp, isolate).from_client(ALICE, data, counters)
    drops = counters.dropped_malformed + counters.dropped_bad_vnet + counters.dropped_spoofed
    drops += counters.dropped_isolated
    assert drops == (1 if action == Verdict.DROP else 0)
    if action in (Verdict.TUN, Verdict.CLIENT):
        assert out == data and data[vnet + 12 : vnet + 16] == ALICE  # nothing leaves with a forged source
    assert (peer is not None) == (action == Verdict.CLIENT)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.booleans())
def test_routing_from_a_client_follows_the_destination(src: bytes, dst: bytes, isolate: bool) -> None:
    counters = Counters()
    action, peer, _ = make_core(isolate=isolate).from_client(src, ipv4(src, dst), counters)
    if dst in (ALICE, BOB):
        expected = Verdict.DROP if isolate else Verdict.CLIENT
        assert (action, peer) == (expected, None if isolate else {ALICE: "alice", BOB: "bob"}[dst])
    else:
        assert action == Verdict.TUN


# -- ServerCore.from_tun and the client ----------------------------------------------


def test_from_tun_routes_by_destination_and_counts_the_unroutable() -> None:
    core, counters = make_core(), Counters()
    assert core.from_tun(ipv4(OUTSIDE, BOB), counters) == "bob"
    assert core.from_tun(ipv4(OUTSIDE, OUTSIDE), counters) is None
    assert counters.dropped_no_route == 1


def test_the_client_writes_what_the_server_sends_and_answers_its_own_pings_if_asked() -> None:
    counters, packet = Counters(), ipv4(OUTSIDE, ALICE)
    assert client_verdict(packet, 0, ALICE, True, counters) == (Verdict.TUN, packet)
    action, reply = client_verdict(echo_request(SERVER, ALICE), 0, ALICE, True, counters)
    assert action == Verdict.REPLY and reply == icmp_reply(echo_request(SERVER, ALICE), ALICE, 0)
    assert client_verdict(b"\x60" + bytes(40), 0, ALICE, True, counters) == (Verdict.DROP, None)
    assert counters.dropped_malformed == 1


def test_counters_summary_adds_up_several_threads_and_skips_zeros() -> None:
    one, two = Counters(rx_packets=2, dropped_spoofed=1), Counters(rx_packets=3)
    assert one.summary(two) == "rx_packets=5 dropped_spoofed=1"


# -- FairQueue -------------------------------------------------------------------------


def drain(queue: FairQueue, limit: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while batch := queue.pop_batch(limit):
        out += batch
    return out


def test_a_lone_source_gets_everything_in_order() -> None:
    queue = FairQueue(max_packets=10, max_bytes=10_000, quantum=1500)
    packets = [bytes([n]) * 100 for n in range(10)]
    assert all(queue.push(ALICE, p) for p in packets)
    assert drain(queue, limit=3) == packets
    assert (queue.packets, queue.bytes, queue.dropped) == (0, 0, 0)


def test_two_backlogged_sources_take_turns_by_bytes_not_packets() -> None:
    queue = FairQueue(max_packets=1000, max_bytes=10**6, quantum=1500)
    for _ in range(40):
        queue.push(ALICE, b"a" * 1500)  # big packets
    for _ in range(200):
        queue.push(BOB, b"b" * 100)  # small ones
    sent = Tally()
    while sent[b"a"] < 10 * 1500:
        for packet in queue.pop_batch(3):
            sent[packet[:1]] += len(packet)
    assert abs(sent[b"a"] - sent[b"b"]) <= 1500  # within one quantum


def test_a_flood_fills_the_queue_then_loses_its_own_packets_not_the_victims() -> None:
    queue = FairQueue(max_packets=50, max_bytes=10**6, quantum=1500)
    for _ in range(500):
        queue.push(ALICE, b"f" * 1000)  # the flooder fills every slot
    assert queue.packets == 50
    for n in range(20):
        assert queue.push(TUN_SOURCE, b"v%d" % n)  # the victim's packets still get in...
    out = queue.pop_batch(1000)
    victims = [p for p in out if p.startswith(b"v")]
    assert victims == [b"v%d" % n for n in range(20)]  # ...all of them, in order
    assert queue.dropped_by_source == {ALICE: 450 + 20}


def test_the_byte_bound_holds_and_a_packet_larger_than_the_queue_is_dropped() -> None:
    queue = FairQueue(max_packets=100, max_bytes=3000, quantum=1500)
    assert not queue.push(ALICE, bytes(3001))
    assert queue.push(ALICE, bytes(1500)) and queue.push(ALICE, bytes(1500))
    assert not queue.push(ALICE, bytes(1))  # its own source is the longest: the newcomer goes
    assert queue.push(BOB, bytes(1000))  # another source pushes one of ALICE's out
    assert queue.bytes == 2500 and queue.dropped == 3


operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from([TUN_SOURCE, ALICE, BOB]), st.integers(1, 3000)),
        st.tuples(st.just("pop"), st.integers(1, 20)),
    ),
    max_size=300,
)


@settings(max_examples=200)
@given(operations, st.integers(1, 40), st.integers(3000, 30_000), st.integers(1, 4000))
def test_bounds_hold_nothing_is_invented_and_each_source_stays_in_order(
    ops: list[tuple], max_packets: int, max_bytes: int, quantum: int
) -> None:
    queue = FairQueue(max_packets, max_bytes, quantum)
    pushed: dict[bytes, list[bytes]] = {}
    popped: dict[bytes, list[bytes]] = {}
    serial = 0
    for op in ops:
        if op[0] == "push":
            _, source, size = op
            packet = source + struct.pack("!I", serial) + bytes(max(0, size - len(source) - 4))
            serial += 1
            pushed.setdefault(source, []).append(packet)
            queue.push(source, packet)
        else:
            for packet in queue.pop_batch(op[1]):
                source = TUN_SOURCE if packet.startswith(TUN_SOURCE) else packet[:4]
                popped.setdefault(source, []).append(packet)
        assert queue.packets <= max_packets and queue.bytes <= max_bytes
    for source, packets in popped.items():
        iterator = iter(pushed[source])
        assert all(packet in iterator for packet in packets)  # a subsequence: order kept
    left = drain(queue)
    total_out = sum(len(p) for p in popped.values()) + len(left)
    assert total_out + queue.dropped == sum(len(p) for p in pushed.values())


@given(st.integers(2, 6), st.integers(1, 3000), st.sampled_from([0, 500, 16_384]))
def test_every_backlogged_source_gets_an_equal_share_of_cost(sources: int, quantum: int, packet_cost: int) -> None:
    """Cost = length + packet_cost: equal shares of bytes when packets are free, of packets
    (the sender's time) when the fixed cost per packet dominates."""
    queue = FairQueue(max_packets=10**5, max_bytes=10**9, quantum=quantum, packet_cost=packet_cost)
    names = [bytes([10, 0, 1, n]) for n in range(sources)]
    for i, name in enumerate(names):
        for _ in range(300):
            queue.push(name, name + bytes(100 * (i + 1)))  # different packet sizes per source
    spent = Tally(dict.fromkeys(names, 0))
    while min(spent.values()) < 5 * (quantum + packet_cost):  # every source still backlogged here
        batch = queue.pop_batch(5)
        assert batch, "a source ran dry before the others caught up"
        for packet in batch:
            spent[packet[:4]] += len(packet) + packet_cost
    spread = max(spent.values()) - min(spent.values())
    assert spread <= quantum + 2 * (100 * sources + 4 + packet_cost)


def test_a_flood_of_small_packets_buys_no_more_sender_time_than_big_packets() -> None:
    queue = FairQueue(max_packets=10**4, max_bytes=10**8, quantum=65_536 + 16_384, packet_cost=16_384)
    for _ in range(200):
        queue.push(ALICE, bytes(100))  # small flood packets
        queue.push(TUN_SOURCE, bytes(65_536))  # super-packets
    out = queue.pop_batch(60)
    small, big = sum(len(p) == 100 for p in out), sum(len(p) == 65_536 for p in out)
    assert 4 * big <= small <= 6 * big  # about (64 KB + 16 KB) / (100 B + 16 KB) = 5 small per big


def test_ihl_below_five_and_a_total_length_past_the_plaintext_are_malformed() -> None:
    good = ipv4(ALICE, OUTSIDE)
    short_ihl = bytes([0x44]) + good[1:]
    too_long = good[:2] + (len(good) + 1).to_bytes(2, "big") + good[4:]
    trailing = good + b"pad"  # bytes after the IP packet: the kernel trims them, so they pass
    for bad in (short_ihl, too_long):
        counters = Counters()
        assert make_core().from_client(ALICE, bad, counters)[0] == Verdict.DROP
        assert counters.dropped_malformed == 1
    assert make_core().from_client(ALICE, trailing, Counters())[0] == Verdict.TUN
