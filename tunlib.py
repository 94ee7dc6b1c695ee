"""The data path: moving IP packets between a TUN device and an encrypted TCP connection.

Follow one packet from an application on the client to the server:

1. The kernel routes it to the client's TUN; :func:`pump_tun_to_link` reads it (``readv``
   into a reusable buffer, no allocation).
2. :meth:`PeerLink.append` seals it with AES-GCM straight into an output buffer, as one
   frame. While the TUN has more packets ready, more frames join the same buffer;
   :meth:`PeerLink.flush` then sends them all with one ``sendall``.
3. On the server, :meth:`PeerLink.receive_packets` receives many frames with one
   ``recv_into``, opens each with the next counter nonce, and hands the plaintext to the
   server's router (:class:`ServerRouter`), which checks the source address and writes the
   packet to the server's TUN, or hands it straight to another client's queue.

The way back is symmetric: the server's TUN reader (:meth:`ServerRouter.pump_tun`) routes
each packet by destination address into that client's bounded :class:`PacketQueue`, and the
client's sender thread (:func:`pump_queue_to_link`) seals and sends it.

Performance rules used throughout (see README, "Speed"): buffers allocated once,
methods bound to locals outside loops, no logging per packet, and counters instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from framing import AEAD_TAG_LEN, HEADER_LEN, MAX_FRAME_BODY, MAX_PACKET_LEN, FrameDecoder, FrameError, FrameType
from packets import echo_reply_for
from rekey import FRAME_CHARGE, Action, InitiatorRole, KeySchedule, Policy, ProtocolError, ResponderRole, SessionExpired
from transport import DecryptError, NonceExhausted, ReceiveState, SendState
from tundev import TunDevice
from vnet import PLAIN_VNET_HDR, vnet_problem

log = logging.getLogger(__name__)

RECV_BUFFER_SIZE = 1 << 20
"""One ``recv_into`` can bring in this much: dozens of plain frames, or 16 super-packets."""
SEND_BUFFER_SIZE = 1 << 19
"""Frames are collected up to this size before one ``sendall``."""
SEND_QUEUE_PACKETS = 256
SEND_QUEUE_BYTES = 2 << 20
"""The two bounds of each client's queue on the server (see :class:`PacketQueue`)."""


@dataclass
class Counters:
    """Per-tunnel statistics, logged at exit and on SIGUSR1. Plain ints, so an increment costs
    almost nothing: the receive counters belong to the receiving thread alone, and the send
    counters are only touched under the link's ``send_lock``."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    dropped_ipv6: int = 0
    dropped_malformed: int = 0
    dropped_spoofed: int = 0
    dropped_no_route: int = 0
    dropped_bad_vnet: int = 0
    dropped_tun_write: int = 0
    icmp_replies: int = 0
    keepalives_sent: int = 0
    """A send counter (under ``send_lock``)."""
    rekeys: int = 0
    """Completed rekeys; written by the receiving thread alone (rekey.KeySchedule.rekeys)."""

    def summary(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))


class LinkClosed(Exception):
    """The peer connection ended (EOF, reset, a protocol violation, or a session limit)."""


class TunGone(Exception):
    """The TUN device was deleted under us (reads fail with EBADFD): no session can go on."""


RECEIVE_ONLY_FRAMES = frozenset({FrameType.KEEPALIVE, FrameType.REKEY_CONFIRM})
"""Control frames that never call for an answer nor touch the send key (rekey.KeySchedule)."""
SO_RCVTIMEO_FORMAT = struct.Struct("@ll")
"""``struct timeval`` for SO_RCVTIMEO: seconds and microseconds, native longs."""


class PeerLink:
    """One established session over TCP: seals packets out, opens frames in, rotates keys.

    The send side is shared by two threads on the client (the TUN reader and the receiver,
    which sends ICMP replies and control frames), so sealing and sending happen under
    ``send_lock``: the counter nonce and the order of bytes on the wire must match.

    Keys, keepalives and limits live in a :class:`rekey.KeySchedule` (``keys``), which does no
    I/O. The link only asks it what is due: the receiver after each ``recv_into`` once the
    clock passes ``keys.next_poll`` (the socket's SO_RCVTIMEO wakes it when nothing arrives),
    and the sender after each ``sendall`` once the bytes sealed under the key pass ``tx_due``.
    Per packet, nothing is added to the data path.
    """

    def __init__(self, sock: socket.socket, send: SendState, recv: ReceiveState, decoder: FrameDecoder) -> None:
        self.sock = sock
        self._decoder = decoder
        decoder.max_body = MAX_FRAME_BODY
        self._out = memoryview(bytearray(SEND_BUFFER_SIZE))
        self._out_len = 0
        self.send_lock = threading.Lock()
        self.counters = Counters()
        self.handshake_at = time.time()
        """Wall-clock time of this link's last handshake (a link is made right after one) or
        rekey: the one place ``status`` reads ``last_handshake`` from, on both ends."""
        self.keys = KeySchedule(send, recv, time.monotonic())
        self._refresh()
        self._set_receive_timeout(self.keys.policy.tick)

    def configure(self, policy: Policy, role: InitiatorRole | ResponderRole) -> None:
        """Set this session's timers and its part in rekeys; call before the threads start."""
        with self.send_lock:
            keys, counters = self.keys, self.counters
            self.keys = KeySchedule(
                keys.send,
                keys.recv,
                time.monotonic(),
                policy=policy,
                role=role,
                tx_bytes=counters.tx_bytes,
                rx_bytes=counters.rx_bytes,
            )
            self._refresh()
        self._set_receive_timeout(policy.tick)

    def _set_receive_timeout(self, seconds: float) -> None:
        """Make a blocking ``recv_into`` give up (EAGAIN) after ``seconds``, so the receiver runs
        the timers of an idle link without a thread of its own and without a second syscall per
        receive, as a Python-level socket timeout would add."""
        whole = int(seconds)
        timeval = SO_RCVTIMEO_FORMAT.pack(whole, int((seconds - whole) * 1e6))
        # Through the descriptor, so it also reaches the TCP socket under a wrapper (TLS) that
        # only offers the socket's I/O methods and fileno(); a wrapper's recv_into then passes
        # the socket's EAGAIN on like a timeout. A closed socket: the receiver finds out itself.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.sock.fileno())) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

    def _refresh(self) -> None:
        """Re-read what the schedule may have switched; call with ``send_lock`` held."""
        keys = self.keys
        self._send = keys.send
        self._tx_due = keys.tx_due
        self._rx_due = keys.rx_due

    # -- sending ------------------------------------------------------------
    def append(self, packet: bytes | memoryview) -> None:
        """Seal one packet into the output buffer, flushing first if it would not fit.

        Call with ``send_lock`` held; call :meth:`flush` when the batch is complete.
        """
        if self._out_len + HEADER_LEN + len(packet) + AEAD_TAG_LEN > SEND_BUFFER_SIZE:
            self.flush()
        try:
            self._out_len += self._send.seal_into(packet, self._out[self._out_len :])
        except NonceExhausted as exc:
            raise LinkClosed(str(exc)) from None

    def _append_frame(self, frame: bytes) -> None:
        """Queue an already sealed control frame behind what the buffer holds (lock held)."""
        if self._out_len + len(frame) > SEND_BUFFER_SIZE:
            self.flush()
        end = self._out_len + len(frame)
        self._out[self._out_len : end] = frame
        self._out_len = end

    def flush(self) -> None:
        """Send every frame collected so far with one ``sendall``; then, if the send key has
        sealed its share of bytes, let the schedule act (start a rekey, or end the session)."""
        if self._out_len:
            try:
                self.sock.sendall(self._out[: self._out_len])
            except OSError as exc:
                raise LinkClosed(f"send failed: {exc.strerror or exc}") from None
            finally:
                self._out_len = 0
            if self.counters.tx_bytes + FRAME_CHARGE * self._send.counter >= self._tx_due:
                self._poll(time.monotonic())

    def send_packets(self, packets: list[bytes]) -> None:
        """Seal and send a list of packets as one batch (thread-safe)."""
        counters = self.counters
        with self.send_lock:
            for packet in packets:
                self.append(packet)
                counters.tx_packets += 1
                counters.tx_bytes += len(packet)
            self.flush()

    def _poll(self, now: float) -> None:
        """Run the schedule's timers and limits and send what it asks for (lock held)."""
        keys, counters = self.keys, self.counters
        try:
            action = keys.poll(now, counters.tx_bytes, counters.rx_bytes)
            if action is Action.KEEPALIVE:
                frame = keys.keepalive()
                counters.keepalives_sent += 1
            elif action is Action.REKEY:
                frame = keys.begin_rekey(time.time_ns())
            else:
                frame = b""
        except (SessionExpired, ProtocolError, NonceExhausted) as exc:
            raise LinkClosed(str(exc)) from None
        self._refresh()  # before flushing: a started rekey raises tx_due, so flush() does not recurse
        if frame:
            self._append_frame(frame)
            self.flush()

    # -- receiving ----------------------------------------------------------
    def receive_packets(self, deliver: Callable[[memoryview], None]) -> None:
        """Receive frames until the connection ends, calling ``deliver`` for each packet.

        The view passed to ``deliver`` is valid only during the call. DATA frames take the
        fast path; every other frame goes to the key schedule. Any frame that does not
        authenticate, or that the schedule refuses, ends the session: with counter nonces over
        TCP, one bad frame means the stream is corrupt, replayed or forged, and nothing after it
        is trusted. Timers run here too, after each receive (see the class docstring).
        """
        decoder = self._decoder
        recv_into = self.sock.recv_into
        plain = memoryview(bytearray(MAX_FRAME_BODY))
        counters, keys, lock = self.counters, self.keys, self.send_lock
        open_into = keys.recv.open_into
        data_type = FrameType.DATA
        monotonic = time.monotonic
        try:
            while True:
                # Frames left over from the handshake read come out on the first pass.
                for frame_type, header, body in decoder.frames():
                    if frame_type == data_type:
                        length = open_into(header, body, plain)
                        counters.rx_packets += 1
                        counters.rx_bytes += length
                        deliver(plain[:length])
                    else:
                        self._receive_control(frame_type, header, body)
                        open_into = keys.recv.open_into
                try:
                    count = recv_into(decoder.free_space())
                except BlockingIOError:
                    count = -1  # SO_RCVTIMEO: nothing arrived for a tick; the timers still run
                except OSError as exc:
                    raise LinkClosed(f"receive failed: {exc.strerror or exc}") from None
                if not count:
                    raise LinkClosed("peer closed the connection")
                if count > 0:
                    decoder.commit(count)
                if (
                    monotonic() >= keys.next_poll
                    or counters.rx_bytes + FRAME_CHARGE * keys.recv.counter >= self._rx_due
                ):
                    # Never wait for the lock here: a sender blocked in sendall holds it until the
                    # peer reads, and the peer's receiver may be waiting for us to read. If the
                    # sender holds it, lowering its threshold makes it poll at its next flush.
                    if lock.acquire(blocking=False):
                        try:
                            self._poll(monotonic())
                        finally:
                            lock.release()
                    else:
                        self._tx_due = -1
        except FrameError as exc:
            raise LinkClosed(f"framing error: {exc}") from None
        except (DecryptError, NonceExhausted) as exc:
            raise LinkClosed(str(exc)) from None

    def _receive_control(self, frame_type: int, header: memoryview, body: memoryview) -> None:
        """Hand a KEEPALIVE or rekey frame to the schedule and send its answer.

        A frame that is answered or switches the send key is handled under ``send_lock``: the
        switch and the frame announcing it must be atomic against the other thread's packets
        (PROTOCOL.md, section 13.2). KEEPALIVE and REKEY_CONFIRM change only receive state,
        which this thread owns, so they take no lock and never wait for a blocked sender.
        """
        counters, keys = self.counters, self.keys
        receive_only = frame_type in RECEIVE_ONLY_FRAMES
        with contextlib.nullcontext() if receive_only else self.send_lock:
            try:
                frame = keys.receive_control(
                    frame_type,
                    header,
                    body,
                    now=time.monotonic(),
                    tx_bytes=counters.tx_bytes,
                    rx_bytes=counters.rx_bytes,
                )
            except ProtocolError as exc:
                raise LinkClosed(f"protocol error: {exc}") from None
            if receive_only:
                self._rx_due = keys.rx_due
            else:
                self._refresh()
            if frame:
                self._append_frame(frame)
                self.flush()
            if keys.rekeys != counters.rekeys:
                counters.rekeys = keys.rekeys
                self.handshake_at = time.time()

    def close(self) -> None:
        """Wake both directions (``shutdown``) and release the socket."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SessionEnd:
    """Why a session ended: the first reason any of its threads gives. Later ones are only
    consequences (the other thread sees the socket it shared close), so they are dropped."""

    def __init__(self) -> None:
        self.reason = ""
        self.error: BaseException | None = None
        """The unexpected exception behind ``reason``, if any (for a debug traceback)."""
        self._lock = threading.Lock()

    def record(self, reason: str, error: BaseException | None = None) -> None:
        with self._lock:
            if not self.reason:
                self.reason, self.error = reason, error


def run_supervised(name: str, body: Callable[[], None], end: SessionEnd, on_exit: Callable[[], None]) -> None:
    """Run ``body``; however it ends (returns, LinkClosed, or any other exception), record why
    in ``end`` and call ``on_exit``, which ends the whole session. So no thread dies alone and
    leaves a half-alive tunnel behind."""
    try:
        body()
    except LinkClosed as exc:
        end.record(str(exc))
    except Exception as exc:
        end.record(f"{name} failed: {type(exc).__name__}: {exc}", exc)
    else:
        end.record(f"{name} stopped")
    finally:
        on_exit()


def supervise(name: str, body: Callable[[], None], end: SessionEnd, on_exit: Callable[[], None]) -> threading.Thread:
    """Start :func:`run_supervised` in a daemon thread called ``name``."""
    thread = threading.Thread(target=run_supervised, args=(name, body, end, on_exit), name=name, daemon=True)
    thread.start()
    return thread


class Waker:
    """A pipe whose only job is to wake threads blocked in ``poll`` on a TUN at shutdown."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"x")

    def drain(self) -> None:
        """Re-arm after a wake, so the next session's threads sleep again."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 64):
                pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def _wait_readable(poller: select.poll, tun_fd: int) -> bool:
    """Block until the TUN has a packet (True) or the waker fired (False)."""
    return all(fd == tun_fd for fd, _ in poller.poll())


def _make_poller(tun: TunDevice, waker: Waker) -> select.poll:
    os.set_blocking(tun.fd, False)
    poller = select.poll()
    poller.register(tun.fd, select.POLLIN)
    poller.register(waker.read_fd, select.POLLIN)
    return poller


def read_tun(tun: TunDevice, waker: Waker, counters: Counters) -> Iterator[memoryview | None]:
    """Yield every IPv4 packet the TUN has ready, then ``None`` once it is drained.

    The TUN is non-blocking: we read until EAGAIN, which is the moment to send what was
    collected (the ``None``), then sleep in ``poll`` until more arrives or the waker fires (the
    generator then ends). Each packet is a view into one reusable buffer, valid until the next
    one is read. Anything but IPv4 is dropped and counted: the tunnel carries IPv4 only.
    A deleted interface raises :class:`TunGone`; our own shutdown never closes the descriptor
    before this loop has ended (the TUN outlives every thread that touches it).
    """
    poller = _make_poller(tun, waker)
    buf = memoryview(bytearray(MAX_PACKET_LEN))
    bufs = [buf]
    readv, fd = os.readv, tun.fd
    version_at, minimum = tun.vnet_hdr_len, tun.vnet_hdr_len + 20
    while _wait_readable(poller, fd):
        while True:
            try:
                length = readv(fd, bufs)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADFD:
                    raise TunGone(f"TUN device {tun.name} was deleted") from None
                raise
            if length < minimum:
                counters.dropped_malformed += 1
            elif buf[version_at] >> 4 != 4:
                counters.dropped_ipv6 += 1
            else:
                yield buf[:length]
        yield None


def pump_tun_to_link(tun: TunDevice, link: PeerLink, waker: Waker) -> None:
    """Client thread 1: TUN -> seal -> socket, one ``sendall`` for all the TUN had ready.

    Under load a batch holds many packets; when idle, a lone ping goes out immediately.
    """
    counters = link.counters
    append, flush, lock = link.append, link.flush, link.send_lock
    for packet in read_tun(tun, waker, counters):
        with lock:  # the receiver thread may send an ICMP reply: same buffer, same counters
            if packet is None:
                flush()
                continue
            append(packet)
            counters.tx_packets += 1
            counters.tx_bytes += len(packet)


class PacketQueue:
    """A bounded queue of packets for one client: drop-newest when full, never block.

    Bounded twice: at most SEND_QUEUE_PACKETS packets (plain mode: about 360 KB) and at most
    SEND_QUEUE_BYTES (offload mode: 32 super-packets), so small inner ACKs are never starved
    of slots by the packet bound, and 64 KB packets cannot pile up 16 MB of latency. A full
    queue drops the packet: the inner TCP sees a loss and slows down instead of a growing wall
    of latency (TCP-over-TCP meltdown). Several threads put (the TUN reader, other clients'
    receivers), one takes; a plain lock keeps the byte count exact, and an
    :class:`threading.Event` wakes the consumer only when it actually sleeps.
    """

    def __init__(self, max_packets: int = SEND_QUEUE_PACKETS, max_bytes: int = SEND_QUEUE_BYTES) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._items: deque[bytes | None] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.dropped = 0

    def put(self, packet: bytes) -> bool:
        """Queue ``packet``; return False, counting it in ``dropped``, if the queue is full."""
        with self._lock:
            if len(self._items) >= self.max_packets or self._bytes + len(packet) > self.max_bytes:
                self.dropped += 1
                return False
            self._items.append(packet)
            self._bytes += len(packet)
        if not self._ready.is_set():
            self._ready.set()
        return True

    def close(self) -> None:
        """Make the consumer's :meth:`get_batch` return an empty list."""
        with self._lock:
            self._items.append(None)
        self._ready.set()

    def get_batch(self, limit: int = 64) -> list[bytes]:
        """Block until something is queued; return up to ``limit`` packets ([] when closed)."""
        items, ready = self._items, self._ready
        while not items:
            ready.clear()
            if items:
                break
            ready.wait()
        batch: list[bytes] = []
        with self._lock:
            while items and len(batch) < limit:
                packet = items.popleft()
                if packet is None:
                    return []
                batch.append(packet)
                self._bytes -= len(packet)
        return batch


def pump_queue_to_link(queue: PacketQueue, link: PeerLink) -> None:
    """Server sender thread, one per client: queue -> seal -> socket."""
    get_batch, send_packets = queue.get_batch, link.send_packets
    while batch := get_batch():
        send_packets(batch)


def write_to_tun(tun_fd: int, packet: memoryview | bytes, counters: Counters) -> None:
    """Write one packet; a packet the kernel rejects is dropped and counted, never fatal.

    EINVAL here means the kernel refused the packet's virtio-net header (offload mode);
    a peer must not be able to stop the tunnel with one odd packet.
    """
    try:
        os.write(tun_fd, packet)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            counters.dropped_bad_vnet += 1
        else:
            counters.dropped_tun_write += 1


def acceptable(packet: memoryview, vnet_hdr_len: int, counters: Counters) -> bool:
    """Whether a plaintext from the peer may go on: an IPv4 packet behind a virtio-net header
    the kernel will take (offload mode). Anything else is dropped and counted, never fatal."""
    if len(packet) < vnet_hdr_len + 20 or packet[vnet_hdr_len] >> 4 != 4:
        counters.dropped_malformed += 1
        return False
    if vnet_hdr_len and vnet_problem(packet) is not None:
        counters.dropped_bad_vnet += 1
        return False
    return True


def icmp_reply(packet: memoryview, own_address: bytes, vnet_hdr_len: int) -> bytes | None:
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


def make_client_deliver(
    tun: TunDevice, link: PeerLink, own_address: bytes, answer_icmp: bool
) -> Callable[[memoryview], None]:
    """Client thread 2's per-packet step: validate and write to the TUN (or answer a ping)."""
    fd, offset, counters = tun.fd, tun.vnet_hdr_len, link.counters

    def deliver(packet: memoryview) -> None:
        if not acceptable(packet, offset, counters):
            return
        if answer_icmp and packet[offset + 16 : offset + 20] == own_address:
            reply = icmp_reply(packet, own_address, offset)
            if reply is not None:
                counters.icmp_replies += 1
                link.send_packets([reply])
                return
        write_to_tun(fd, packet, counters)

    return deliver


class ClientSession:
    """The server's view of one connected client: its link, its queue, its threads."""

    def __init__(self, name: str, public_key: bytes, address: bytes, link: PeerLink) -> None:
        self.name = name
        self.public_key = public_key
        self.address = address
        self.link = link
        self.queue = PacketQueue()

    def stats(self) -> str:
        drops = f" dropped_queue_full={self.queue.dropped}" if self.queue.dropped else ""
        return self.link.counters.summary() + drops

    def close(self) -> None:
        self.queue.close()
        self.link.close()


class ServerRouter:
    """Routes packets between the server's one TUN and many client sessions.

    Routing is by destination address: the tunnel gives each client one /32, so a dict
    from 4-byte address to session is the whole routing table. Client-to-client packets are
    handed from one client's receiver straight to the other's queue, without a trip
    through the kernel (so the server needs no IP forwarding for them).
    """

    def __init__(self, tun: TunDevice, own_address: bytes, answer_icmp: bool) -> None:
        self.tun = tun
        self.own_address = own_address
        self.answer_icmp = answer_icmp
        self.sessions: dict[bytes, ClientSession] = {}
        self.lock = threading.Lock()
        self.counters = Counters()

    def attach(self, session: ClientSession) -> ClientSession | None:
        """Make ``session`` the route for its address; return the session it replaces."""
        with self.lock:
            old = self.sessions.get(session.address)
            self.sessions[session.address] = session
        return old

    def detach(self, session: ClientSession) -> None:
        with self.lock:
            if self.sessions.get(session.address) is session:
                del self.sessions[session.address]

    def pump_tun(self, waker: Waker) -> None:
        """The server's TUN reader thread: route each packet to its client's queue."""
        offset = self.tun.vnet_hdr_len
        destination = slice(offset + 16, offset + 20)
        sessions, counters = self.sessions, self.counters
        for packet in read_tun(self.tun, waker, counters):
            if packet is None:
                continue
            session = sessions.get(bytes(packet[destination]))
            if session is None:
                counters.dropped_no_route += 1
            else:
                session.queue.put(bytes(packet))  # a full queue drops and counts it

    def make_deliver(self, session: ClientSession) -> Callable[[memoryview], None]:
        """The per-packet step of one client's receiver thread."""
        fd, offset = self.tun.fd, self.tun.vnet_hdr_len
        sessions, counters = self.sessions, session.link.counters
        source, own, answer_icmp = session.address, self.own_address, self.answer_icmp
        src_slice, dst_slice = slice(offset + 12, offset + 16), slice(offset + 16, offset + 20)

        def deliver(packet: memoryview) -> None:
            if not acceptable(packet, offset, counters):
                return
            if packet[src_slice] != source:
                counters.dropped_spoofed += 1
                return
            dst = bytes(packet[dst_slice])
            peer = sessions.get(dst)
            if peer is not None:
                peer.queue.put(bytes(packet))
                return
            if answer_icmp and dst == own:
                reply = icmp_reply(packet, own, offset)
                if reply is not None:
                    if session.queue.put(reply):
                        counters.icmp_replies += 1
                    return
            write_to_tun(fd, packet, counters)

        return deliver
