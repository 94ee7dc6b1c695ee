"""Tests for session.py: the two-message handshake over a real socket, without the network.

Both ends run over ``socket.socketpair()``; the client and the server run in two threads when
both must talk. Since key confirmation, the client's first (empty) DATA frame completes the
handshake on the server, and only then is the client's timestamp recorded. Hostile and broken
peers are played by the test writing raw bytes into the other end of the pair.
HANDSHAKE_TIMEOUT is shortened for every test so that a regression that waits when it should
fail shows up as a failure, not a hang.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wiretools import feed

import session
from config import ClientRecord, Profile
from framing import (
    AEAD_TAG_LEN,
    MAX_HANDSHAKE_BODY,
    MAX_PACKET_LEN,
    FrameDecoder,
    FrameType,
    RejectReason,
    encode_frame,
    encode_header,
)
from handshake import Initiator, Responder, generate_private_key, public_key
from messages import ClientHello, SessionSettings, tai64n
from session import REJECT_MESSAGES, Admission, HandshakeFailed, ReplayGuard, client_handshake, server_handshake
from transport import SendState
from tunlib import LinkClosed, PeerLink

SERVER_PRIVATE = generate_private_key()
CLIENT_PRIVATE = generate_private_key()
PSK = os.urandom(32)
ALICE = ClientRecord("alice", public_key(CLIENT_PRIVATE), PSK, ipaddress.IPv4Address("10.0.0.2"))
PROFILE = Profile("alice", CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, "127.0.0.1:55555")
RESULT_TIMEOUT = 10.0


class Registry:
    """The server's admission policy, as server.py wires it, over an in-memory registry."""

    def __init__(self, *records: ClientRecord) -> None:
        self.records = {r.public_key: r for r in records}
        self.replay = ReplayGuard()
        self.timestamps = self.replay.confirmed  # what the tests inspect and seed

    def lookup(self, key: bytes) -> ClientRecord | None:
        return self.records.get(key)

    @staticmethod
    def settings_for(record: ClientRecord, _hello: ClientHello) -> SessionSettings:
        return SessionSettings(
            address=ipaddress.IPv4Interface(f"{record.address}/24"),
            server_address=ipaddress.IPv4Address("10.0.0.1"),
            mtu=1420,
        )

    def admission(self, static_private: bytes = SERVER_PRIVATE) -> Admission:
        return Admission(static_private, self.lookup, self.replay.is_new, self.replay.confirm, self.settings_for)


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 2.0)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def in_thread(fn, *args) -> concurrent.futures.Future:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    future = executor.submit(fn, *args)
    executor.shutdown(wait=False)
    return future


def read_frame(sock: socket.socket, timeout: float = 2.0) -> tuple[int, bytes]:
    """Read one raw frame from ``sock`` (the test's view of the wire)."""
    sock.settimeout(timeout)
    decoder = FrameDecoder(MAX_HANDSHAKE_BODY, 4096)
    while True:
        for frame_type, _h, body in decoder.frames():
            return frame_type, bytes(body)
        data = sock.recv(4096)
        if not data:
            raise EOFError("peer closed")
        feed(decoder, data)


def handshake_both(pair, profile: Profile = PROFILE, registry: Registry | None = None):
    """Run both sides; return (client outcome, server outcome), each a result or an exception."""
    client_sock, server_sock = pair
    registry = registry or Registry(ALICE)
    server = in_thread(server_handshake, server_sock, registry.admission())
    try:
        client_result = client_handshake(client_sock, profile)
    except HandshakeFailed as exc:
        client_result = exc
        client_sock.close()  # as client.py does; the server is then not left waiting
    try:
        server_result = server.result(RESULT_TIMEOUT)
    except HandshakeFailed as exc:
        server_result = exc
    return client_result, server_result


def receive_n(link: PeerLink, n: int) -> list[bytes]:
    """Collect n packets, then stop the way the programs do: by closing the link."""
    got: list[bytes] = []

    def deliver(packet: memoryview) -> None:
        got.append(bytes(packet))
        if len(got) == n:
            link.close()

    link.sock.settimeout(5.0)  # a missing packet fails the test instead of hanging it
    with pytest.raises(LinkClosed):
        link.receive_packets(deliver)
    return got


# -- success ---------------------------------------------------------------------------


def test_handshake_success_gives_matching_settings(pair):
    (client_settings, client_link), (record, server_settings, server_link) = handshake_both(pair)
    assert record == ALICE
    assert client_settings == server_settings == Registry.settings_for(ALICE, None)
    assert client_settings.address == ipaddress.IPv4Interface("10.0.0.2/24")
    assert isinstance(client_link, PeerLink)
    assert isinstance(server_link, PeerLink)
    assert client_link.sock.gettimeout() is None
    assert server_link.sock.gettimeout() is None


def test_links_exchange_packets_both_ways(pair):
    (_cs, client_link), (_r, _ss, server_link) = handshake_both(pair)
    up = [bytes([i]) * (i * 7 + 1) for i in range(40)]
    down = [os.urandom(20 + i) for i in range(30)]
    client_tx_before = client_link.counters.tx_packets  # the key confirmation frame may count
    client_link.send_packets(up)
    server_link.send_packets(down)
    server_got = in_thread(receive_n, server_link, len(up))
    assert receive_n(client_link, len(down)) == down
    assert server_got.result(RESULT_TIMEOUT) == up
    assert client_link.counters.tx_packets - client_tx_before == len(up)
    assert client_link.counters.rx_packets == len(down)
    assert client_link.counters.rx_bytes == sum(map(len, down))
    assert server_link.counters.rx_packets == len(up)
    assert server_link.counters.rx_bytes == sum(map(len, up))


def test_links_carry_maximum_size_packets(pair):
    (_cs, client_link), (_r, _ss, server_link) = handshake_both(pair)
    big = [bytes([n]) * MAX_PACKET_LEN for n in range(3)] + [b""]
    sender = in_thread(client_link.send_packets, big)
    assert receive_n(server_link, len(big)) == big
    sender.result(RESULT_TIMEOUT)


def test_each_direction_has_its_own_key(pair):
    """A frame the client sealed, reflected back to it, must not open (k1 != k2)."""
    (_cs, client_link), (_r, _ss, server_link) = handshake_both(pair)
    client_sock, server_sock = pair
    client_link.send_packets([b"reflect me"])
    frame = server_sock.recv(4096)
    server_sock.sendall(frame)  # send the client's own frame back to it
    client_sock.settimeout(2.0)
    with pytest.raises(LinkClosed, match="authentication"):
        client_link.receive_packets(lambda _p: None)
    server_link.close()


def test_data_sent_right_behind_the_response_is_not_lost(pair):
    """A fast server's first DATA frame may arrive in the same recv() as its response."""
    client_sock, server_sock = pair

    def eager_server() -> None:
        frame_type, body = read_frame(server_sock)
        assert frame_type == FrameType.HANDSHAKE_INIT
        responder = Responder(SERVER_PRIVATE, session.PROLOGUE)
        responder.read_init(body)
        message, keys = responder.write_response(PSK, Registry.settings_for(ALICE, None).encode())
        send = SendState(keys.send_key)
        server_sock.sendall(
            encode_frame(FrameType.HANDSHAKE_RESPONSE, message) + send.seal(b"early 1") + send.seal(b"early 2")
        )

    server = in_thread(eager_server)
    _settings, link = client_handshake(client_sock, PROFILE)
    server.result(RESULT_TIMEOUT)
    assert receive_n(link, 2) == [b"early 1", b"early 2"]


def test_two_sessions_in_a_row_are_both_accepted():
    registry = Registry(ALICE)
    for _ in range(2):
        a, b = socket.socketpair()
        with a, b:
            (_client_settings, _l1), (record, _s, _l2) = handshake_both((a, b), registry=registry)
            assert record == ALICE


# -- refusals --------------------------------------------------------------------------


def test_wrong_server_key(pair):
    profile = Profile("alice", CLIENT_PRIVATE, public_key(generate_private_key()), PSK, "x:1")
    client_result, server_result = handshake_both(pair, profile)
    assert isinstance(client_result, HandshakeFailed)
    assert "server PublicKey does not match" in str(client_result)
    assert str(client_result) == f"server refused the handshake: {REJECT_MESSAGES[RejectReason.UNDECRYPTABLE]}"
    assert isinstance(server_result, HandshakeFailed)
    assert "did not decrypt" in str(server_result)


def test_wrong_preshared_key(pair):
    """The client detects a wrong psk on message 2; the server, with no confirmation, records nothing."""
    registry = Registry(ALICE)
    profile = Profile("alice", CLIENT_PRIVATE, public_key(SERVER_PRIVATE), os.urandom(32), "x:1")
    client_result, server_result = handshake_both(pair, profile, registry)
    assert isinstance(client_result, HandshakeFailed)
    assert "did not authenticate" in str(client_result)
    assert "preshared key" in str(client_result)
    assert isinstance(server_result, HandshakeFailed)
    assert registry.timestamps == {}


def test_low_order_server_key_in_profile():
    profile = Profile("alice", CLIENT_PRIVATE, bytes(32), PSK, "x:1")
    a, b = socket.socketpair()
    with a, b, pytest.raises(HandshakeFailed, match="server key"):
        client_handshake(a, profile)


def test_unknown_client(pair):
    client_result, server_result = handshake_both(pair, registry=Registry())
    assert isinstance(client_result, HandshakeFailed)
    assert REJECT_MESSAGES[RejectReason.UNKNOWN_CLIENT] in str(client_result)
    assert isinstance(server_result, HandshakeFailed)
    assert "unknown client" in str(server_result)


def test_removed_client_key_mismatch(pair):
    """A registry entry with the right name but another key is still an unknown client."""
    other = ClientRecord("alice", public_key(generate_private_key()), PSK, ALICE.address)
    client_result, _server_result = handshake_both(pair, registry=Registry(other))
    assert REJECT_MESSAGES[RejectReason.UNKNOWN_CLIENT] in str(client_result)


def test_stale_timestamp(pair):
    registry = Registry(ALICE)
    future = tai64n(time.time_ns() + 3600 * 10**9)
    registry.timestamps[ALICE.public_key] = future  # a confirmed handshake from the future
    client_result, server_result = handshake_both(pair, registry=registry)
    assert isinstance(client_result, HandshakeFailed)
    assert REJECT_MESSAGES[RejectReason.STALE_TIMESTAMP] in str(client_result)
    assert isinstance(server_result, HandshakeFailed)
    assert "stale" in str(server_result)
    assert registry.timestamps[ALICE.public_key] == future


def test_timestamp_recorded_only_after_confirmation(pair):
    registry = Registry(ALICE)
    before = tai64n(time.time_ns())
    (_settings, _link), (record, _s, _l) = handshake_both(pair, registry=registry)
    assert record == ALICE
    assert before <= registry.timestamps[ALICE.public_key] <= tai64n(time.time_ns())


def test_replayed_message_1_is_refused():
    """A man in the middle records message 1 of a real session; replayed, it is refused."""
    registry = Registry(ALICE)
    client_sock, tap_client = socket.socketpair()
    tap_server, server_sock = socket.socketpair()
    with client_sock, tap_client, tap_server, server_sock:
        server = in_thread(server_handshake, server_sock, registry.admission())
        client = in_thread(client_handshake, client_sock, PROFILE)
        init = encode_frame(*read_frame(tap_client))
        tap_server.sendall(init)
        tap_client.sendall(encode_frame(*read_frame(tap_server)))  # message 2
        confirmation = read_frame(tap_client)
        assert confirmation[0] == FrameType.DATA
        tap_server.sendall(encode_frame(*confirmation))
        client.result(RESULT_TIMEOUT)
        assert server.result(RESULT_TIMEOUT)[0] == ALICE

    a, b = socket.socketpair()
    with a, b:
        a.sendall(init)
        with pytest.raises(HandshakeFailed, match="replayed or stale"):
            server_handshake(b, registry.admission())
        assert read_frame(a) == (FrameType.REJECT, bytes([RejectReason.STALE_TIMESTAMP]))


def start_manual_client(sock: socket.socket, psk: bytes = PSK, hello: bytes | None = None) -> Initiator:
    """Send a genuine message 1 by hand, so the test controls what follows it."""
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), psk, session.PROLOGUE)
    payload = ClientHello(tai64n(time.time_ns())).encode() if hello is None else hello
    sock.sendall(encode_frame(FrameType.HANDSHAKE_INIT, initiator.write_init(payload)))
    return initiator


@pytest.mark.parametrize(
    ("confirmation", "message"),
    [
        (encode_frame(FrameType.DATA, os.urandom(AEAD_TAG_LEN)), "key confirmation failed"),
        (encode_frame(FrameType.DATA, b""), "key confirmation failed"),
        (encode_frame(FrameType.HANDSHAKE_INIT, bytes(20)), "expected key confirmation"),
        (encode_frame(FrameType.REJECT, b"\x01"), "expected key confirmation"),
        (encode_header(FrameType.DATA, MAX_HANDSHAKE_BODY + 1), "exceeds the limit"),
        (b"", "closed the connection"),
    ],
)
def test_server_requires_key_confirmation(pair, confirmation, message):
    """Message 1 alone (a stolen static key, or a replay) must not make a session or record a timestamp."""
    client_sock, server_sock = pair
    registry = Registry(ALICE)
    server = in_thread(server_handshake, server_sock, registry.admission())
    start_manual_client(client_sock)
    assert read_frame(client_sock)[0] == FrameType.HANDSHAKE_RESPONSE
    if confirmation:
        client_sock.sendall(confirmation)
    client_sock.shutdown(socket.SHUT_WR)
    with pytest.raises(HandshakeFailed, match=message):
        server.result(RESULT_TIMEOUT)
    assert registry.timestamps == {}


def test_server_times_out_waiting_for_confirmation(pair, monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.3)
    client_sock, server_sock = pair
    registry = Registry(ALICE)
    server = in_thread(server_handshake, server_sock, registry.admission())
    start_manual_client(client_sock)
    with pytest.raises(HandshakeFailed, match="timed out"):
        server.result(RESULT_TIMEOUT)
    assert registry.timestamps == {}


def test_unconfirmed_handshake_does_not_lock_out_the_real_client():
    registry = Registry(ALICE)
    a, b = socket.socketpair()
    with a, b:
        server = in_thread(server_handshake, b, registry.admission())
        start_manual_client(a, hello=ClientHello(tai64n(time.time_ns() + 3600 * 10**9)).encode())
        read_frame(a)
        a.close()
        with pytest.raises(HandshakeFailed):
            server.result(RESULT_TIMEOUT)
    a, b = socket.socketpair()
    with a, b:
        (_settings, _link), (record, _s, _l) = handshake_both((a, b), registry=registry)
        assert record == ALICE


def test_concurrent_newer_handshake_wins_the_race(pair):
    """If another connection confirmed a newer timestamp meanwhile, this one is dropped."""

    class RacingRegistry(Registry):
        def settings_for(self, record: ClientRecord, hello: ClientHello) -> SessionSettings:
            self.timestamps[record.public_key] = tai64n(time.time_ns() + 10**12)
            return Registry.settings_for(record, hello)

    client_result, server_result = handshake_both(pair, registry=RacingRegistry(ALICE))
    assert not isinstance(client_result, HandshakeFailed)
    assert isinstance(server_result, HandshakeFailed)
    assert "won the race" in str(server_result)


# -- hostile or broken clients (server side) ------------------------------------------


def serve_raw(data: bytes, *, close: bool = True) -> tuple[HandshakeFailed, bytes, float]:
    """Feed ``data`` to server_handshake; return its failure, what it sent back, and the time."""
    a, b = socket.socketpair()
    with a, b:
        if data:
            a.sendall(data)
        if close:
            a.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        with pytest.raises(HandshakeFailed) as exc:
            server_handshake(b, Registry(ALICE).admission())
        elapsed = time.monotonic() - start
        b.close()
        a.settimeout(2.0)
        reply = b"".join(iter(lambda: a.recv(4096), b""))
    return exc.value, reply, elapsed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "closed the connection"),
        (b"\x00\x00", "closed the connection"),
        (encode_header(FrameType.HANDSHAKE_INIT, 200) + bytes(100), "closed the connection"),  # truncated body
        (encode_frame(FrameType.DATA, bytes(40)), "expected a handshake, got frame type 4"),
        (encode_frame(FrameType.HANDSHAKE_RESPONSE, bytes(40)), "expected a handshake"),
        (encode_frame(FrameType.REJECT, b"\x01"), "expected a handshake"),
        (encode_frame(0x77, b""), "expected a handshake"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the limit"),
    ],
)
def test_server_refuses_broken_input(data, message):
    failure, reply, _elapsed = serve_raw(data)
    assert message in str(failure)
    assert reply == b""  # nothing is said to a peer that did not even send a handshake


@pytest.mark.parametrize(
    "body",
    [b"", os.urandom(32), os.urandom(200), os.urandom(MAX_HANDSHAKE_BODY)],
)
def test_server_rejects_undecryptable_init(body):
    failure, reply, _elapsed = serve_raw(encode_frame(FrameType.HANDSHAKE_INIT, body))
    assert "did not decrypt" in str(failure)
    assert reply == encode_frame(FrameType.REJECT, bytes([RejectReason.UNDECRYPTABLE]))


@pytest.mark.parametrize("length", [MAX_HANDSHAKE_BODY + 1, 65563, 2**32 - 1])
def test_server_rejects_oversized_header_without_waiting_for_the_body(monkeypatch, length):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 5.0)
    failure, _reply, elapsed = serve_raw(encode_header(FrameType.HANDSHAKE_INIT, length), close=False)
    assert "exceeds the limit" in str(failure)
    assert elapsed < 2.0  # the timeout is 5 s: the header alone decided


def test_server_times_out_on_silence(monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.2)
    failure, reply, elapsed = serve_raw(b"", close=False)
    assert "timed out" in str(failure)
    assert reply == b""
    assert 0.15 <= elapsed < 1.5


def test_server_times_out_on_truncated_frame(monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.2)
    failure, _reply, elapsed = serve_raw(encode_header(FrameType.HANDSHAKE_INIT, 100) + bytes(50), close=False)
    assert "timed out" in str(failure)
    assert elapsed < 1.5


def test_server_deadline_covers_the_whole_handshake(monkeypatch):
    """A peer dripping one byte at a time must not reset the clock with each byte."""
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.3)
    a, b = socket.socketpair()
    stop = threading.Event()

    def drip() -> None:
        data = encode_header(FrameType.HANDSHAKE_INIT, 500) + bytes(500)
        for byte in data:
            if stop.wait(0.02):
                return
            try:
                a.send(bytes([byte]))
            except OSError:
                return

    dripper = in_thread(drip)
    try:
        start = time.monotonic()
        with pytest.raises(HandshakeFailed, match="timed out"):
            server_handshake(b, Registry(ALICE).admission())
        # The whole drip would take 10 s; a per-recv timeout would wait for all of it.
        assert time.monotonic() - start < 3.0
    finally:
        stop.set()
        dripper.result(RESULT_TIMEOUT)
        a.close()
        b.close()


@pytest.mark.parametrize("hello", [tai64n(1) + b"not json", b"", bytes(11), tai64n(1) + b"[]"])
def test_server_rejects_bad_hello(pair, hello):
    """A registered client whose hello payload is malformed gets BAD_HELLO."""
    client_sock, server_sock = pair
    start_manual_client(client_sock, hello=hello)
    with pytest.raises(HandshakeFailed, match="alice"):
        server_handshake(server_sock, Registry(ALICE).admission())
    assert read_frame(client_sock) == (FrameType.REJECT, bytes([RejectReason.BAD_HELLO]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: encode_frame(FrameType.HANDSHAKE_INIT, b)))
def test_server_arbitrary_input_raises_only_handshake_failed(data):
    failure, reply, _elapsed = serve_raw(data)
    assert isinstance(failure, HandshakeFailed)
    assert reply in (b"", encode_frame(FrameType.REJECT, bytes([RejectReason.UNDECRYPTABLE])))


# -- hostile or broken servers (client side) ------------------------------------------


def client_against_raw(data: bytes, *, close: bool = True) -> HandshakeFailed:
    a, b = socket.socketpair()
    with a, b:
        if data:
            b.sendall(data)  # queued before the client even sends its message 1
        if close:
            b.shutdown(socket.SHUT_WR)
        with pytest.raises(HandshakeFailed) as exc:
            client_handshake(a, PROFILE)
        assert read_frame(b)[0] == FrameType.HANDSHAKE_INIT  # the client did send message 1
    return exc.value


@pytest.mark.parametrize("reason", list(RejectReason))
def test_client_reports_each_reject_reason(reason):
    failure = client_against_raw(encode_frame(FrameType.REJECT, bytes([reason])))
    assert str(failure) == f"server refused the handshake: {REJECT_MESSAGES[reason]}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "closed the connection"),
        (encode_frame(FrameType.REJECT, b"\x09"), "expected a handshake response, got frame type 3"),
        (encode_frame(FrameType.REJECT, b"\x01\x01"), "expected a handshake response"),
        (encode_frame(FrameType.REJECT, b""), "expected a handshake response"),
        (encode_frame(FrameType.DATA, bytes(40)), "got frame type 4"),
        (encode_frame(FrameType.HANDSHAKE_INIT, bytes(40)), "got frame type 1"),
        (encode_frame(FrameType.HANDSHAKE_RESPONSE, bytes(48)), "did not authenticate"),
        (encode_frame(FrameType.HANDSHAKE_RESPONSE, b""), "did not authenticate"),
        (encode_header(FrameType.HANDSHAKE_RESPONSE, MAX_HANDSHAKE_BODY + 1), "bad handshake frame"),
        (encode_header(FrameType.HANDSHAKE_RESPONSE, 2**32 - 1), "exceeds the limit"),
        (encode_header(FrameType.HANDSHAKE_RESPONSE, 30) + bytes(10), "closed the connection"),
    ],
)
def test_client_refuses_broken_response(data, message):
    assert message in str(client_against_raw(data))


def test_client_times_out_on_silent_server(monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.2)
    start = time.monotonic()
    failure = client_against_raw(b"", close=False)
    assert "timed out" in str(failure)
    assert time.monotonic() - start < 1.5


def test_client_refuses_authentic_response_with_bad_settings(pair):
    client_sock, server_sock = pair

    def server_with_bad_settings() -> None:
        _t, body = read_frame(server_sock)
        responder = Responder(SERVER_PRIVATE, session.PROLOGUE)
        responder.read_init(body)
        message, _keys = responder.write_response(PSK, b'{"address": "10.0.0.2/24", "mtu": 1}')
        server_sock.sendall(encode_frame(FrameType.HANDSHAKE_RESPONSE, message))

    server = in_thread(server_with_bad_settings)
    with pytest.raises(HandshakeFailed, match="bad session settings"):
        client_handshake(client_sock, PROFILE)
    server.result(RESULT_TIMEOUT)


def test_client_hello_carries_a_current_timestamp(pair):
    client_sock, server_sock = pair
    before = tai64n(time.time_ns())
    client = in_thread(client_handshake, client_sock, PROFILE)
    _t, body = read_frame(server_sock)
    after = tai64n(time.time_ns())
    _key, payload = Responder(SERVER_PRIVATE, session.PROLOGUE).read_init(body)
    server_sock.close()
    with pytest.raises(HandshakeFailed):
        client.result(RESULT_TIMEOUT)
    hello = ClientHello.decode(payload)
    assert before <= hello.timestamp <= after
