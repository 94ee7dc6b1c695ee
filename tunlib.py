"""The data path: moving IP packets between a TUN device and an encrypted TCP connection.

Follow one packet from an application on the client to the server:

1. The kernel routes it to the client's TUN; :func:`pump_tun_to_link` reads it (``readv``
   into a reusable buffer, no allocation).
2. :meth:`PeerLink.append` seals it with AES-GCM straight into an output buffer, as one
   frame. While the TUN has more packets ready, more frames join the same buffer;
   :meth:`PeerLink.flush` then sends them all with one ``sendall``.
3. On the server, :meth:`PeerLink.receive_packets` receives many frames with one
   ``recv_into``, opens each with the next counter nonce, and hands the plaintext to the
   server's router (:class:`ServerRouter`). The packet core (core.py) decides, and the router
   does what it says: write the packet to the server's TUN, put it in another client's queue,
   or drop and count it.

The way back: the server's TUN reader (:meth:`ServerRouter.pump_tun`) routes each packet by
destination address. When that client's queue is empty and its carrier takes the bytes at
once, the TUN reader seals and sends them itself, non-blocking (one thread wake-up less per
round trip); otherwise they wait in the client's fair, bounded :class:`PacketQueue` for its
sender thread (:func:`pump_queue_to_link`), so a slow client never stalls the others.

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
from collections.abc import Callable, Iterator
from typing import Protocol

from core import TUN_SOURCE, Counters, FairQueue, ServerCore, Verdict, client_verdict
from framing import AEAD_TAG_LEN, HEADER_LEN, MAX_FRAME_BODY, MAX_PACKET_LEN, FrameDecoder, FrameError, FrameType
from packets import IPV4_MIN_HEADER_LEN
from rekey import FRAME_CHARGE, Action, InitiatorRole, KeySchedule, Policy, ProtocolError, ResponderRole, SessionExpired
from transport import DecryptError, NonceExhausted, ReceiveState, SendState
from tundev import TunDevice

log = logging.getLogger(__name__)

RECV_BUFFER_SIZE = 1 << 20
"""One ``recv_into`` can bring in this much: dozens of plain frames, or 16 super-packets."""
SEND_BUFFER_SIZE = 1 << 19
"""Frames are collected up to this size before one ``sendall``."""
SEND_QUEUE_PACKETS = 256
SEND_QUEUE_BYTES = 2 << 20
"""The two bounds of each client's queue on the server (see :class:`core.FairQueue`)."""
FAIR_PACKET_COST = 16 << 10
"""What the fair queue charges per packet on top of its length: sealing and sending one packet
costs about as much as copying 16 KB more, so fairness is in the sender's time, not in bytes."""
FAIR_QUANTUM = MAX_PACKET_LEN + FAIR_PACKET_COST
"""What a source may spend per deficit-round-robin turn: one packet of any size, at least."""
TUN_BATCH_BYTES = 256 << 10
"""The server's TUN reader hands on what it read once this much waits, even if the TUN has more."""


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

    def send_now(self, packets: list[bytes]) -> bool:
        """Seal and send ``packets`` from a thread that must never block (the server's TUN reader).

        Returns False, having done nothing, when another thread is sending or earlier bytes still
        wait: the caller queues the packets instead. Otherwise the packets are sealed and the
        socket takes what it can at once; whatever it did not take stays in the output buffer,
        :attr:`backlogged` turns True, and the caller must have the sender thread :meth:`flush`.
        ``packets`` must fit the output buffer (the TUN reader hands on TUN_BATCH_BYTES at most),
        so :meth:`append` never has to flush, which would block. When these bytes would bring the
        key schedule due (a rekey to start, a limit to check), it refuses too: the sender
        thread's :meth:`flush` runs the schedule, which may block, and this thread must not.
        """
        if not self.send_lock.acquire(blocking=False):
            return False
        try:
            counters = self.counters
            due = counters.tx_bytes + FRAME_CHARGE * (self._send.counter + len(packets)) + sum(map(len, packets))
            if self._out_len or due >= self._tx_due:
                return False
            for packet in packets:
                self.append(packet)
                counters.tx_packets += 1
                counters.tx_bytes += len(packet)
            try:
                sent = self.sock.send(self._out[: self._out_len], socket.MSG_DONTWAIT)
            except OSError:
                sent = 0  # full (EAGAIN), or broken: the sender thread's flush finds out which
            rest = self._out_len - sent
            if rest:
                buf = self._out.obj
                buf[:rest] = buf[sent : self._out_len]
            self._out_len = rest
            return True
        finally:
            self.send_lock.release()

    @property
    def backlogged(self) -> bool:
        """Sealed bytes wait for a :meth:`flush` (after a :meth:`send_now` the socket refused in part)."""
        return self._out_len > 0

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


class StopFlag(Protocol):
    """What the pump threads need of the stop flag (``runtime.StopSignal``): a descriptor that
    polls readable once the flag is raised, so a thread asleep in ``poll`` on a TUN wakes."""

    def fileno(self) -> int: ...


def _wait_readable(poller: select.poll, tun_fd: int) -> bool:
    """Block until the TUN has a packet (True) or the stop flag went up (False)."""
    return all(fd == tun_fd for fd, _ in poller.poll())


def _make_poller(tun: TunDevice, stop: StopFlag) -> select.poll:
    os.set_blocking(tun.fd, False)
    poller = select.poll()
    poller.register(tun.fd, select.POLLIN)
    poller.register(stop.fileno(), select.POLLIN)
    return poller


def read_tun(tun: TunDevice, stop: StopFlag, counters: Counters) -> Iterator[memoryview | None]:
    """Yield every IPv4 packet the TUN has ready, then ``None`` once it is drained.

    The TUN is non-blocking: we read until EAGAIN, which is the moment to send what was
    collected (the ``None``), then sleep in ``poll`` until more arrives or the stop flag goes up
    (the generator then ends). Each packet is a view into one reusable buffer, valid until the next
    one is read. Anything but IPv4 is dropped and counted: the tunnel carries IPv4 only. The
    counters touched here (``dropped_ipv6``, ``dropped_tun_short``) belong to the reading thread.
    A deleted interface raises :class:`TunGone`; our own shutdown never closes the descriptor
    before this loop has ended (the TUN outlives every thread that touches it).
    """
    poller = _make_poller(tun, stop)
    buf = memoryview(bytearray(MAX_PACKET_LEN))
    bufs = [buf]
    readv, fd = os.readv, tun.fd
    version_at, minimum = tun.vnet_hdr_len, tun.vnet_hdr_len + IPV4_MIN_HEADER_LEN
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
                counters.dropped_tun_short += 1
            elif buf[version_at] >> 4 != 4:
                counters.dropped_ipv6 += 1
            else:
                yield buf[:length]
        yield None


def pump_tun_to_link(tun: TunDevice, link: PeerLink, stop: StopFlag) -> None:
    """Client thread 1: TUN -> seal -> socket, one ``sendall`` for all the TUN had ready.

    Under load a batch holds many packets; when idle, a lone ping goes out immediately.
    """
    counters = link.counters
    append, flush, lock = link.append, link.flush, link.send_lock
    for packet in read_tun(tun, stop, counters):
        with lock:  # the receiver thread may send an ICMP reply: same buffer, same counters
            if packet is None:
                flush()
                continue
            append(packet)
            counters.tx_packets += 1
            counters.tx_bytes += len(packet)


class PacketQueue:
    """One client's send queue on the server: a :class:`core.FairQueue` made thread-safe.

    Several threads put (the TUN reader, other clients' receivers, the client's own receiver
    for ping replies); one sender thread takes. A plain lock keeps the fair queue consistent,
    and a :class:`threading.Event` wakes the sender only when it sleeps. The queue also knows
    whether the sender is busy with a batch, so the TUN reader may send past it (see
    :meth:`claim_idle`) only when that cannot reorder anything.
    """

    def __init__(self, max_packets: int = SEND_QUEUE_PACKETS, max_bytes: int = SEND_QUEUE_BYTES) -> None:
        self._fair = FairQueue(max_packets, max_bytes, FAIR_QUANTUM, FAIR_PACKET_COST)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self._flush_wanted = False
        self._busy = False
        """The sender holds a batch, or a TUN reader is sending past the queue."""

    @property
    def dropped(self) -> int:
        return self._fair.dropped

    @property
    def dropped_by_source(self) -> dict[bytes, int]:
        """Drops so far, by source (a copy)."""
        with self._lock:
            return dict(self._fair.dropped_by_source)

    def put(self, source: bytes, packet: bytes) -> bool:
        """Queue ``packet`` from ``source``; False if it (or nothing) was dropped for room: counted."""
        with self._lock:
            queued = self._fair.push(source, packet)
        if not self._ready.is_set():
            self._ready.set()
        return queued

    def claim_idle(self) -> bool:
        """True, and the caller may send past the queue, if nothing is queued or being sent.

        The caller must :meth:`release` afterwards. Nothing can overtake a queued packet this
        way, so every source's packets stay in order.
        """
        with self._lock:
            if self._busy or self._closed or self._fair.packets:
                return False
            self._busy = True
            return True

    def release(self) -> None:
        """End a :meth:`claim_idle` or a batch from :meth:`get_batch`."""
        with self._lock:
            self._busy = False

    def want_flush(self) -> None:
        """Wake the sender to flush what a non-blocking send left behind."""
        with self._lock:
            self._flush_wanted = True
        self._ready.set()

    def close(self) -> None:
        """Make the sender's :meth:`get_batch` return None."""
        with self._lock:
            self._closed = True
        self._ready.set()

    def get_batch(self, limit: int = 64) -> list[bytes] | None:
        """Block until there is work; return up to ``limit`` packets (maybe none: just flush),
        or None once closed. The caller calls :meth:`release` when the batch is sent."""
        fair, lock, ready = self._fair, self._lock, self._ready
        while True:
            with lock:
                if self._closed:
                    return None
                if fair.packets or self._flush_wanted:
                    self._flush_wanted = False
                    self._busy = True
                    return fair.pop_batch(limit)
                ready.clear()
            ready.wait()


def pump_queue_to_link(queue: PacketQueue, link: PeerLink) -> None:
    """Server sender thread, one per client: queue -> seal -> socket."""
    get_batch, send_packets, release = queue.get_batch, link.send_packets, queue.release
    while (batch := get_batch()) is not None:
        try:
            send_packets(batch)  # an empty batch flushes what a non-blocking send left
        finally:
            release()


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


def make_client_deliver(
    tun: TunDevice, link: PeerLink, own_address: bytes, answer_icmp: bool
) -> Callable[[memoryview], None]:
    """Client thread 2's per-packet step: the core decides, this writes to the TUN or replies."""
    fd, offset, counters = tun.fd, tun.vnet_hdr_len, link.counters
    tun_action, reply_action = Verdict.TUN, Verdict.REPLY

    def deliver(packet: memoryview) -> None:
        action, data = client_verdict(packet, offset, own_address, answer_icmp, counters)
        if action == tun_action:
            write_to_tun(fd, packet, counters)
        elif action == reply_action:
            counters.icmp_replies += 1
            link.send_packets([data])

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
        drops = self.queue.dropped_by_source
        total = sum(drops.values())
        text = f" dropped_queue_full={total}" if total else ""
        if drops.get(TUN_SOURCE):  # the server's own packets lost their share: worth knowing apart
            text += f" dropped_queue_full_from_tun={drops[TUN_SOURCE]}"
        return self.link.counters.summary() + text

    def close(self) -> None:
        self.queue.close()
        self.link.close()


class ServerRouter:
    """Carries out the :class:`core.ServerCore`'s decisions between the TUN and the sessions.

    The core holds the routing table (address -> :class:`ClientSession`); this class adds the
    lock that guards changes to it and the I/O each decision needs.
    """

    def __init__(self, tun: TunDevice, own_address: bytes, answer_icmp: bool, isolate_clients: bool = False) -> None:
        self.tun = tun
        self.core: ServerCore[ClientSession] = ServerCore(own_address, tun.vnet_hdr_len, answer_icmp, isolate_clients)
        self.sessions = self.core.routes
        self.lock = threading.Lock()
        self.counters = Counters()
        """The TUN reader's: packets from the TUN that no client owns, or that were malformed."""

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

    def pump_tun(self, stop: StopFlag) -> None:
        """The server's TUN reader thread: route each packet to its client, directly or queued.

        Packets are collected per client while the TUN has more (up to TUN_BATCH_BYTES), then
        handed on: sealed and sent from this thread when the client's queue is idle and its
        socket takes them without blocking, queued for its sender thread otherwise.
        """
        from_tun, counters = self.core.from_tun, self.counters
        pending: dict[ClientSession, list[bytes]] = {}
        pending_bytes = 0
        for packet in read_tun(self.tun, stop, counters):
            if packet is not None:
                session = from_tun(packet, counters)
                if session is None:
                    continue
                batch = pending.get(session)
                if batch is None:
                    batch = pending[session] = []
                batch.append(bytes(packet))
                pending_bytes += len(packet)
                if pending_bytes < TUN_BATCH_BYTES:
                    continue
            for session, batch in pending.items():
                hand_on(session, batch)
            pending.clear()
            pending_bytes = 0

    def make_deliver(self, session: ClientSession) -> Callable[[memoryview], None]:
        """The per-packet step of one client's receiver thread."""
        fd, counters, source = self.tun.fd, session.link.counters, session.address
        from_client = self.core.from_client
        tun_action, client_action, reply_action = Verdict.TUN, Verdict.CLIENT, Verdict.REPLY

        def deliver(packet: memoryview) -> None:
            action, peer, data = from_client(source, packet, counters)
            if action == tun_action:
                write_to_tun(fd, packet, counters)
            elif action == client_action:
                peer.queue.put(source, bytes(packet))  # a full queue drops and counts
            elif action == reply_action and session.queue.put(source, data):
                counters.icmp_replies += 1

        return deliver


def hand_on(session: ClientSession, batch: list[bytes]) -> None:
    """Send ``batch`` (packets from the TUN) to ``session`` now if that blocks nothing, else queue it."""
    queue = session.queue
    if queue.claim_idle():
        try:
            sent = session.link.send_now(batch)
        except LinkClosed:  # its send key is used up: end that session, never this thread
            session.close()
            return
        finally:
            queue.release()
        if sent:
            if session.link.backlogged:
                queue.want_flush()
            return
    put = queue.put
    for packet in batch:
        put(TUN_SOURCE, packet)
