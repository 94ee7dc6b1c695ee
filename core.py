"""The packet core: every per-packet decision of the data path, and no I/O.

The threads in tunlib.py read and write file descriptors; everything they must *decide* about
a packet happens here, in plain objects that take bytes and return what to do, as boringtun's
``Tunn::encapsulate`` and ``decapsulate`` do:

* :func:`check_plaintext` - may a plaintext from the peer go on at all (IPv4 behind a
  virtio-net header the kernel will take)?
* :class:`ServerCore` - where a packet goes on the server: from a client to the TUN, to
  another client, back as a ping reply, or nowhere (spoofed source, isolated clients); from
  the TUN to the client that owns the destination address, or nowhere.
* :func:`client_verdict` - the same for the client, which has only its TUN and the server.
* :class:`FairQueue` - what waits for one client's carrier, and what a full queue drops: one
  sub-queue per source (the TUN, and each other client), served by deficit round robin, so
  a flooding source gets its share and no more.

Each decision counts what it drops in a :class:`Counters` owned by the calling thread.
Nothing here locks, sleeps or touches a clock; the unit tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Generic, TypeVar

from packets import IPV4_DST, IPV4_MIN_HEADER_LEN, IPV4_SRC, echo_reply_for
from vnet import PLAIN_VNET_HDR, vnet_problem

Buffer = bytes | bytearray | memoryview
Route = TypeVar("Route")

TUN_SOURCE = b"tun"
"""The source key of packets the server's TUN hands us: the server itself and everything
routed behind it. Client sources are their 4-byte tunnel addresses."""


@dataclass
class Counters:
    """Statistics of one thread's direction, logged at exit and on SIGUSR1.

    Plain ints, so an increment costs almost nothing; every instance is written by one thread
    only (or under one lock), and :meth:`summary` merges several for the log.
    """

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    dropped_ipv6: int = 0
    dropped_tun_short: int = 0
    """Reads from our own TUN too short for an IPv4 header (the TUN reader's; the kernel's fault)."""
    dropped_malformed: int = 0
    dropped_spoofed: int = 0
    dropped_no_route: int = 0
    dropped_isolated: int = 0
    dropped_bad_vnet: int = 0
    dropped_tun_write: int = 0
    icmp_replies: int = 0
    keepalives_sent: int = 0
    """A send counter (under ``send_lock``)."""
    rekeys: int = 0
    """Completed rekeys; written by the receiving thread alone (rekey.KeySchedule.rekeys)."""

    def summary(self, *others: Counters) -> str:
        """``name=value`` for every non-zero counter, summed over ``self`` and ``others``."""
        totals = {f.name: sum(getattr(c, f.name) for c in (self, *others)) for f in fields(self)}
        return " ".join(f"{name}={value}" for name, value in totals.items() if value)


def check_plaintext(packet: Buffer, vnet_hdr_len: int, counters: Counters) -> bool:
    """Whether a plaintext from the peer may go on: an IPv4 packet behind a virtio-net header
    the kernel will take (offload mode). Anything else is dropped and counted, never fatal.

    Malformed (PROTOCOL.md 7.3): shorter than an IPv4 header, not version 4, a header length
    (IHL) under 5 words, or a total length past the end of the plaintext. These cost a few
    byte reads; the header checksum and fragments are left to the kernel, which counts them.
    The whole plaintext is checked before the caller looks at its addresses.
    """
    ip = vnet_hdr_len
    if (
        len(packet) < ip + IPV4_MIN_HEADER_LEN
        or packet[ip] >> 4 != 4
        or packet[ip] & 0x0F < 5
        or (packet[ip + 2] << 8 | packet[ip + 3]) > len(packet) - ip
    ):
        counters.dropped_malformed += 1
        return False
    if vnet_hdr_len and vnet_problem(packet) is not None:
        counters.dropped_bad_vnet += 1
        return False
    return True


def icmp_reply(packet: Buffer, own_address: bytes, vnet_hdr_len: int) -> bytes | None:
    """The user-space echo reply for ``packet`` (which may carry a virtio-net header), or None.

    A packet with a virtio-net header qualifies only if the header asks for nothing
    (no GSO, no checksum to finish): ICMP packets always look like that.
    """
    if vnet_hdr_len:
        if any(packet[:vnet_hdr_len]):
            return None
        reply = echo_reply_for(packet[vnet_hdr_len:], own_address)
        return None if reply is None else PLAIN_VNET_HDR + reply
    return echo_reply_for(packet, own_address)


class Verdict(IntEnum):
    """What to do with a packet that came out of a session."""

    DROP = 0
    """Nothing: it was counted."""
    TUN = 1
    """Write it to the TUN."""
    CLIENT = 2
    """Give it to another client (server only)."""
    REPLY = 3
    """Send the returned reply back to the peer it came from."""


def client_verdict(
    packet: Buffer, vnet_hdr_len: int, own_address: bytes, answer_icmp: bool, counters: Counters
) -> tuple[Verdict, Buffer | None]:
    """The client's decision for a plaintext from the server: (action, bytes to act on)."""
    if not check_plaintext(packet, vnet_hdr_len, counters):
        return Verdict.DROP, None
    if answer_icmp and packet[vnet_hdr_len + IPV4_DST : vnet_hdr_len + IPV4_DST + 4] == own_address:
        reply = icmp_reply(packet, own_address, vnet_hdr_len)
        if reply is not None:
            return Verdict.REPLY, reply
    return Verdict.TUN, packet


class ServerCore(Generic[Route]):
    """The server's routing decisions between its one TUN and many clients.

    The tunnel gives each client one /32, so a dict from 4-byte address to the client's route
    (whatever the driver wants back: its session) is the whole routing table. Client-to-client
    packets go from one client straight to the other, without a trip through the kernel (so the
    server needs no IP forwarding for them), unless ``isolate_clients`` drops them.
    The driver mutates :attr:`routes` under its own lock; lookups are single dict reads.
    """

    def __init__(self, own_address: bytes, vnet_hdr_len: int, answer_icmp: bool, isolate_clients: bool) -> None:
        self.own_address = own_address
        self.vnet_hdr_len = vnet_hdr_len
        self.answer_icmp = answer_icmp
        self.isolate_clients = isolate_clients
        self.routes: dict[bytes, Route] = {}
        self._src = slice(vnet_hdr_len + IPV4_SRC, vnet_hdr_len + IPV4_SRC + 4)
        self._dst = slice(vnet_hdr_len + IPV4_DST, vnet_hdr_len + IPV4_DST + 4)

    def from_client(
        self, source: bytes, packet: Buffer, counters: Counters
    ) -> tuple[Verdict, Route | None, Buffer | None]:
        """Decide for a plaintext from the client whose tunnel address is ``source``.

        Returns the action, the destination client (CLIENT only) and the bytes to act on
        (the packet itself, or the reply for REPLY). The order of checks is PROTOCOL.md 7.3's:
        IPv4 and the virtio-net header, then the source address, then the destination.
        """
        offset = self.vnet_hdr_len
        if not check_plaintext(packet, offset, counters):
            return Verdict.DROP, None, None
        if packet[self._src] != source:
            counters.dropped_spoofed += 1
            return Verdict.DROP, None, None
        dst = bytes(packet[self._dst])
        peer = self.routes.get(dst)
        if peer is not None:
            if self.isolate_clients:
                counters.dropped_isolated += 1
                return Verdict.DROP, None, None
            return Verdict.CLIENT, peer, packet
        if self.answer_icmp and dst == self.own_address:
            reply = icmp_reply(packet, dst, offset)
            if reply is not None:
                return Verdict.REPLY, None, reply
        return Verdict.TUN, None, packet

    def from_tun(self, packet: Buffer, counters: Counters) -> Route | None:
        """The client a packet read from the TUN goes to, or None (counted as no route)."""
        route = self.routes.get(bytes(packet[self._dst]))
        if route is None:
            counters.dropped_no_route += 1
        return route


class FairQueue:
    """What waits for one client's carrier: bounded, and shared fairly among its sources.

    Every source (the TUN, each other client) has its own FIFO sub-queue. Deficit round robin
    (Shreedhar and Varghese, 1995) serves them: each turn a backlogged source may spend up to
    ``quantum`` more than it has, so every busy source gets the same share of the sender's
    work whatever its packet sizes, and a lone source gets everything. A packet costs its
    length plus ``packet_cost``: sealing and sending has a fixed cost per packet, so a flood of
    small packets must not buy with its bytes many times the sender's time that the same bytes
    cost in 64 KB super-packets.

    Two bounds hold for the whole queue: ``max_packets`` (so small inner ACKs are not starved
    of slots) and ``max_bytes`` (so 64 KB super-packets cannot pile up megabytes of latency).
    A packet that does not fit makes room by dropping from the *longest* sub-queue, counted
    bytes (as fq_codel does): the flooder loses its own packets, never its victims'. If the
    newcomer's own source is the longest, the newcomer is dropped. A full queue drops rather
    than blocks: the inner TCP sees a loss and slows down instead of a growing wall of latency.

    Not thread-safe: :class:`tunlib.PacketQueue` adds the lock and the wake-up.
    """

    def __init__(self, max_packets: int, max_bytes: int, quantum: int, packet_cost: int = 0) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.quantum = quantum
        self.packet_cost = packet_cost
        self.packets = 0
        self.bytes = 0
        self.dropped = 0
        self.dropped_by_source: dict[bytes, int] = {}
        self._queues: dict[bytes, deque[bytes]] = {}
        self._bytes_of: dict[bytes, int] = {}
        self._deficit: dict[bytes, int] = {}
        self._active: deque[bytes] = deque()
        """Sources with packets waiting, in round-robin order; the head's turn may be under way."""
        self._new_turn = True
        """False when the head source's turn was cut short by a batch limit and goes on."""

    def __len__(self) -> int:
        return self.packets

    def push(self, source: bytes, packet: bytes) -> bool:
        """Queue ``packet`` from ``source``; False if it was dropped (counted) for lack of room."""
        size = len(packet)
        if size > self.max_bytes:
            self._count_drop(source)
            return False
        while self.packets >= self.max_packets or self.bytes + size > self.max_bytes:
            longest = max(self._active, key=self._bytes_of.__getitem__, default=source)
            if longest == source or self._bytes_of[longest] <= self._bytes_of.get(source, 0):
                self._count_drop(source)
                return False
            self._drop_head(longest)
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = deque()
            self._bytes_of[source] = 0
        if not queue:
            self._active.append(source)
            self._deficit[source] = 0
        queue.append(packet)
        self._bytes_of[source] += size
        self.packets += 1
        self.bytes += size
        return True

    def pop_batch(self, max_packets: int) -> list[bytes]:
        """Take up to ``max_packets`` packets in deficit-round-robin order.

        A batch that fills up in the middle of a source's turn leaves that source at the head
        with its remaining credit, so batch boundaries change nothing about the shares.
        """
        batch: list[bytes] = []
        active, queues, deficit, bytes_of = self._active, self._queues, self._deficit, self._bytes_of
        while active and len(batch) < max_packets:
            source = active[0]
            queue = queues[source]
            credit = deficit[source] + (self.quantum if self._new_turn else 0)
            self._new_turn = True
            cost = self.packet_cost
            while queue and len(queue[0]) + cost <= credit:
                if len(batch) == max_packets:
                    deficit[source], self._new_turn = credit, False  # resume this turn next time
                    return batch
                packet = queue.popleft()
                credit -= len(packet) + cost
                bytes_of[source] -= len(packet)
                self.packets -= 1
                self.bytes -= len(packet)
                batch.append(packet)
            active.popleft()
            if queue:
                deficit[source] = credit
                active.append(source)
            else:
                self._forget(source)
        return batch

    def _drop_head(self, source: bytes) -> None:
        packet = self._queues[source].popleft()
        self._bytes_of[source] -= len(packet)
        self.packets -= 1
        self.bytes -= len(packet)
        self._count_drop(source)
        if not self._queues[source]:
            if self._active[0] == source:
                self._new_turn = True
            self._active.remove(source)
            self._forget(source)

    def _forget(self, source: bytes) -> None:
        """An empty sub-queue keeps no state: a source that went quiet starts afresh."""
        del self._queues[source], self._bytes_of[source], self._deficit[source]

    def _count_drop(self, source: bytes) -> None:
        self.dropped += 1
        self.dropped_by_source[source] = self.dropped_by_source.get(source, 0) + 1
