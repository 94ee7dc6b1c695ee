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
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverside import server_handshake
from wiretools import feed

import session
from config import ClientRecord, Profile
from framing import (
    AEAD_TAG_LEN,
    MAC1_LEN,
    MAX_HANDSHAKE_BODY,
    MAX_PACKET_LEN,
    FrameDecoder,
    FrameType,
    RejectReason,
    encode_frame,
    encode_header,
    encode_init_frame,
)
from handshake import Initiator, Responder, generate_private_key, public_key
from messages import ClientHello, SessionSettings, tai64n
from session import (
    REJECT_MESSAGES,
    Admission,
    Established,
    HandshakeFailed,
    Refuse,
    ReplayGuard,
    Send,
    ServerHandshake,
    client_handshake,
)
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
        responder.read_init(body[:-MAC1_LEN])
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
    assert "closed the connection without an answer" in str(client_result)  # mac1 failed: no REJECT
    assert "server PublicKey" in str(client_result)
    assert isinstance(server_result, HandshakeFailed)
    assert "mac1" in str(server_result)


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
    sock.sendall(init_frame(initiator, hello))
    return initiator


def init_frame(initiator: Initiator, hello: bytes | None = None, server_public: bytes | None = None) -> bytes:
    payload = ClientHello(tai64n(time.time_ns())).encode() if hello is None else hello
    return encode_init_frame(server_public or public_key(SERVER_PRIVATE), initiator.write_init(payload))


# -- the server's state machine, driven directly (no sockets, a made-up clock) -------------


T0 = 1000.0
"""The made-up clock's start: ServerHandshake takes ``now`` from its caller."""


def machine(registry: Registry | None = None) -> ServerHandshake:
    return ServerHandshake((registry or Registry(ALICE)).admission(), T0)


def only_refusal(actions: list) -> tuple[bytes, Refuse]:
    """The bytes sent before a refusal (a REJECT, or nothing), and the refusal."""
    assert isinstance(actions[-1], Refuse), actions
    assert all(isinstance(a, Send) for a in actions[:-1]), actions
    return b"".join(a.data for a in actions[:-1]), actions[-1]


def test_machine_establishes_and_hands_over_leftover_bytes():
    registry = Registry(ALICE)
    server = machine(registry)
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)
    frame = init_frame(initiator)
    assert server.receive(frame[:7]) == []  # a partial frame: wait for more
    (response,) = server.receive(frame[7:])
    assert isinstance(response, Send)
    assert response.data[4] == FrameType.HANDSHAKE_RESPONSE
    settings, keys = initiator.read_response(response.data[5:])
    assert SessionSettings.decode(settings) == Registry.settings_for(ALICE, None)
    send = SendState(keys.send_key)
    confirmation, first = send.seal(b""), send.seal(b"first packet")
    (established,) = server.receive(confirmation + first[:9])
    assert isinstance(established, Established)
    assert established.record == ALICE
    assert established.leftover == first[:9]
    assert established.receive.open(first[:5], first[5:]) == b"first packet"  # counter 1 next
    assert ALICE.public_key in registry.timestamps
    assert server.receive(b"more") == []  # finished: nothing more to say


def test_machine_first_byte_deadline_then_whole_handshake_deadline(monkeypatch):
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 5.0)
    server = machine()
    assert server.deadline == T0 + session.FIRST_BYTE_TIMEOUT
    assert server.expire(T0 + session.FIRST_BYTE_TIMEOUT - 0.01) is None
    assert server.receive(b"\x00") == []
    assert server.deadline == T0 + session.HANDSHAKE_TIMEOUT
    assert server.expire(T0 + session.FIRST_BYTE_TIMEOUT + 0.5) is None  # dripping bytes earns no extra time
    refusal = server.expire(T0 + session.HANDSHAKE_TIMEOUT)
    assert refusal is not None and refusal.reason == "timeout"
    silent = machine()
    assert silent.expire(T0 + session.FIRST_BYTE_TIMEOUT).reason == "timeout"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        encode_frame(FrameType.DATA, bytes(40)),
        encode_frame(FrameType.HANDSHAKE_RESPONSE, bytes(40)),
        encode_frame(FrameType.REJECT, b"\x01"),
        encode_frame(0x77, b""),
        encode_header(FrameType.HANDSHAKE_INIT, MAX_HANDSHAKE_BODY + 1),
        encode_header(FrameType.HANDSHAKE_INIT, 2**32 - 1),
        encode_frame(FrameType.HANDSHAKE_INIT, os.urandom(200)),  # garbage with a plausible header
        encode_frame(FrameType.HANDSHAKE_INIT, os.urandom(MAX_HANDSHAKE_BODY)),
    ],
)
def test_machine_closes_silently_on_anything_but_a_valid_mac1(data):
    """No REJECT before mac1 checks out: a scanner learns nothing, and no DH was spent."""
    sent, refusal = only_refusal(machine().receive(data))
    assert sent == b""
    assert refusal.reason == "foreign"


def test_machine_closes_silently_on_a_message_1_for_another_server():
    other_server = generate_private_key()
    initiator = Initiator(CLIENT_PRIVATE, public_key(other_server), PSK, session.PROLOGUE)
    sent, refusal = only_refusal(machine().receive(init_frame(initiator, server_public=public_key(other_server))))
    assert (sent, refusal.reason) == (b"", "foreign")


def test_machine_rejects_a_valid_mac1_that_does_not_decrypt():
    """Only someone who knows this server's public key gets this far, and is told why."""
    noise = os.urandom(150)
    frame = encode_init_frame(public_key(SERVER_PRIVATE), noise)
    sent, refusal = only_refusal(machine().receive(frame))
    assert sent == encode_frame(FrameType.REJECT, bytes([RejectReason.UNDECRYPTABLE]))
    assert refusal.reason == "undecryptable"


@pytest.mark.parametrize(
    ("registry", "hello", "reject", "reason"),
    [
        (Registry(), None, RejectReason.UNKNOWN_CLIENT, "unknown-client"),
        (Registry(ALICE), tai64n(1) + b"not json", RejectReason.BAD_HELLO, "bad-hello"),
        (Registry(ALICE), b"", RejectReason.BAD_HELLO, "bad-hello"),
        (Registry(ALICE), bytes(11), RejectReason.BAD_HELLO, "bad-hello"),
        (Registry(ALICE), tai64n(1) + b"[]", RejectReason.BAD_HELLO, "bad-hello"),
    ],
)
def test_machine_rejects_unknown_clients_and_bad_hellos(registry, hello, reject, reason):
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)
    sent, refusal = only_refusal(machine(registry).receive(init_frame(initiator, hello)))
    assert sent == encode_frame(FrameType.REJECT, bytes([reject]))
    assert refusal.reason == reason


def test_machine_rejects_a_stale_timestamp_and_remembers_nothing_new():
    registry = Registry(ALICE)
    future = tai64n(time.time_ns() + 3600 * 10**9)
    registry.timestamps[ALICE.public_key] = future
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)
    sent, refusal = only_refusal(machine(registry).receive(init_frame(initiator)))
    assert sent == encode_frame(FrameType.REJECT, bytes([RejectReason.STALE_TIMESTAMP]))
    assert refusal.reason == "stale"
    assert registry.timestamps[ALICE.public_key] == future


@pytest.mark.parametrize(
    ("confirmation", "message"),
    [
        (encode_frame(FrameType.DATA, os.urandom(AEAD_TAG_LEN)), "key confirmation failed"),
        (encode_frame(FrameType.DATA, b""), "key confirmation failed"),
        (encode_frame(FrameType.HANDSHAKE_INIT, bytes(20)), "expected key confirmation"),
        (encode_frame(FrameType.REJECT, b"\x01"), "expected key confirmation"),
        (encode_header(FrameType.DATA, MAX_HANDSHAKE_BODY + 1), "exceeds the limit"),
    ],
)
def test_machine_requires_key_confirmation(confirmation, message):
    """Message 1 alone (a stolen static key, or a replay) must not make a session or record a timestamp."""
    registry = Registry(ALICE)
    server = machine(registry)
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)
    (response,) = server.receive(init_frame(initiator))
    assert isinstance(response, Send)
    _sent, refusal = only_refusal(server.receive(confirmation))
    assert refusal.reason == "confirmation"
    assert message in refusal.detail
    assert registry.timestamps == {}


def test_machine_confirmation_with_the_wrong_psk_is_refused():
    registry = Registry(ALICE)
    server = machine(registry)
    initiator = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), os.urandom(32), session.PROLOGUE)
    server.receive(init_frame(initiator))
    forged = SendState(os.urandom(32)).seal(b"")
    _sent, refusal = only_refusal(server.receive(forged))
    assert "wrong preshared key" in refusal.detail
    assert registry.timestamps == {}


def test_machine_peer_closed_and_timeout_while_awaiting_confirmation():
    registry = Registry(ALICE)
    server = machine(registry)
    server.receive(init_frame(Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)))
    assert server.expire(T0 + session.HANDSHAKE_TIMEOUT).reason == "timeout"
    assert server.receive(b"late") == []
    assert machine(registry).peer_closed().reason == "closed"
    assert registry.timestamps == {}


def test_unconfirmed_handshake_does_not_lock_out_the_real_client():
    registry = Registry(ALICE)
    intruder = Initiator(CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, session.PROLOGUE)
    machine(registry).receive(init_frame(intruder, ClientHello(tai64n(time.time_ns() + 3600 * 10**9)).encode()))
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: encode_frame(FrameType.HANDSHAKE_INIT, b)),
        max_size=4,
    )
)
def test_machine_arbitrary_input_never_raises_and_never_rejects_without_mac1(chunks):
    server = machine()
    actions = []
    for chunk in chunks:
        actions += server.receive(chunk)
    assert not any(isinstance(a, Established) for a in actions)
    assert [a for a in actions if isinstance(a, Send)] == []


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
        responder.read_init(body[:-MAC1_LEN])
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
    _key, payload = Responder(SERVER_PRIVATE, session.PROLOGUE).read_init(body[:-MAC1_LEN])
    server_sock.close()
    with pytest.raises(HandshakeFailed):
        client.result(RESULT_TIMEOUT)
    hello = ClientHello.decode(payload)
    assert before <= hello.timestamp <= after
