"""Tests for rekey.py: the key schedule inside a session (PROTOCOL.md, section 13).

The schedule does no I/O, so the tests drive it directly: frames are bytes handed from one
side's schedule to the other's, and the clock is a number. The rekey handshake is checked
against the independent ``noiseprotocol`` package in both roles, the triggers (time, bytes in
either direction, silence, dead peer) with an injected clock and small limits, and every
frame that must not arrive is checked to end the session.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from framing import AEAD_TAG_LEN, HEADER, HEADER_LEN, FrameType, encode_header
from handshake import PROTOCOL_NAME, Initiator, Responder, public_key
from messages import ClientHello, tai64n
from rekey import (
    FRAME_CHARGE,
    KEEPALIVE,
    REJECT_AFTER_BYTES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_BYTES,
    REKEY_AFTER_TIME,
    Action,
    InitiatorRole,
    KeySchedule,
    Policy,
    ProtocolError,
    ResponderRole,
    SessionExpired,
)
from session import PROLOGUE, ReplayGuard
from transport import DecryptError, ReceiveState, SendState

CLIENT_STATIC = bytes(range(1, 33))
SERVER_STATIC = bytes(range(65, 97))
OTHER_STATIC = bytes(range(200, 232))
PSK = bytes(range(129, 161))
CLIENT_PUBLIC = public_key(CLIENT_STATIC)
SERVER_PUBLIC = public_key(SERVER_STATIC)
T0_NS = 1_700_000_000 * 10**9
"""Wall clock of the first handshake; rekeys use later times."""


@dataclass
class Side:
    """One end of a session: its schedule plus the running plaintext totals a PeerLink keeps."""

    keys: KeySchedule
    tx_bytes: int = 0
    rx_bytes: int = 0
    received: list[bytes] = field(default_factory=list)

    def data(self, plaintext: bytes) -> bytes:
        self.tx_bytes += len(plaintext)
        return self.keys.send.seal(plaintext)

    def receive(self, frame: bytes, now: float = 0.0) -> bytes:
        """Take one frame as PeerLink does; return the frame to send back (or b"")."""
        length, frame_type = HEADER.unpack_from(frame)
        header, body = frame[:HEADER_LEN], frame[HEADER_LEN:]
        assert len(body) == length
        if frame_type == FrameType.DATA:
            plaintext = self.keys.recv.open(header, body)
            self.rx_bytes += len(plaintext)
            self.received.append(plaintext)
            return b""
        return self.keys.receive_control(
            frame_type, header, body, now=now, tx_bytes=self.tx_bytes, rx_bytes=self.rx_bytes
        )

    def poll(self, now: float) -> Action:
        return self.keys.poll(now, self.tx_bytes, self.rx_bytes)


def session_pair(
    client_policy: Policy | None = None, server_policy: Policy | None = None, now: float = 0.0
) -> tuple[Side, Side, ReplayGuard]:
    """A client and a server right after the first handshake (made with our own handshake.py)."""
    initiator = Initiator(CLIENT_STATIC, SERVER_PUBLIC, PSK, PROLOGUE)
    responder = Responder(SERVER_STATIC, PROLOGUE)
    responder.read_init(initiator.write_init(ClientHello(tai64n(T0_NS)).encode()))
    message2, server_keys = responder.write_response(PSK, b"{}")
    _, client_keys = initiator.read_response(message2)
    guard = ReplayGuard()
    assert guard.confirm(CLIENT_PUBLIC, tai64n(T0_NS))
    client = KeySchedule(
        SendState(client_keys.send_key),
        ReceiveState(client_keys.recv_key),
        now,
        policy=client_policy,
        role=InitiatorRole(CLIENT_STATIC, SERVER_PUBLIC, PSK, PROLOGUE),
    )
    server = KeySchedule(
        SendState(server_keys.send_key),
        ReceiveState(server_keys.recv_key),
        now,
        policy=server_policy,
        role=ResponderRole(SERVER_STATIC, CLIENT_PUBLIC, PSK, PROLOGUE, guard.confirm),
    )
    return Side(client), Side(server), guard


def rekey(client: Side, server: Side, unix_ns: int = T0_NS + 10**9, now: float = 1.0) -> None:
    """One complete rekey with nothing else in flight."""
    response = server.receive(client.keys.begin_rekey(unix_ns), now)
    confirm = client.receive(response, now)
    assert server.receive(confirm, now) == b""


def frame_type_of(frame: bytes) -> int:
    return HEADER.unpack_from(frame)[1]


# -- the exchange ----------------------------------------------------------------------


def test_rekey_switches_every_key_while_data_flows_both_ways() -> None:
    client, server, _ = session_pair()
    old_client_send, old_server_send = client.keys.send, server.keys.send

    init = client.keys.begin_rekey(T0_NS + 10**9)
    assert frame_type_of(init) == FrameType.REKEY_INIT
    in_flight_up = client.data(b"up, sealed before the rekey finished")  # under the old key
    in_flight_down = server.data(b"down, sealed before the server saw REKEY_INIT")

    response = server.receive(init)
    assert frame_type_of(response) == FrameType.REKEY_RESPONSE
    assert server.keys.send is not old_server_send  # switched right after the response
    down_new = server.data(b"down, new key")
    assert server.receive(in_flight_up) == b""  # the server still opens the old key

    assert client.receive(in_flight_down) == b""
    confirm = client.receive(response)
    assert frame_type_of(confirm) == FrameType.REKEY_CONFIRM
    assert client.keys.send is not old_client_send
    assert client.keys.send.counter == 1  # the confirm was counter 0 of the new key
    assert client.receive(down_new) == b""
    up_new = client.data(b"up, new key")

    assert server.receive(confirm) == b""
    assert server.receive(up_new) == b""
    assert client.received == [b"down, sealed before the server saw REKEY_INIT", b"down, new key"]
    assert server.received == [b"up, sealed before the rekey finished", b"up, new key"]
    assert client.keys.rekeys == server.keys.rekeys == 1
    assert not client.keys.rekeying
    assert not server.keys.rekeying
    # The old keys are gone for good: a frame under one no longer opens.
    with pytest.raises(DecryptError):
        server.receive(old_client_send.seal(b"late"))


def test_wire_layout_of_the_control_frames() -> None:
    client, server, _ = session_pair()
    keepalive = client.keys.keepalive()
    assert keepalive[:HEADER_LEN] == encode_header(FrameType.KEEPALIVE, AEAD_TAG_LEN)
    assert len(keepalive) == HEADER_LEN + AEAD_TAG_LEN
    assert server.receive(keepalive) == b""
    init = client.keys.begin_rekey(T0_NS + 10**9)
    # Noise message 1 with a 14-byte hello: 32 + 48 + 14 + 16 = 110 bytes, then the frame's tag.
    assert init[:HEADER_LEN] == encode_header(FrameType.REKEY_INIT, 110 + AEAD_TAG_LEN)
    response = server.receive(init)
    # Noise message 2 with an empty payload: 32 + 16 = 48 bytes, then the frame's tag.
    assert response[:HEADER_LEN] == encode_header(FrameType.REKEY_RESPONSE, 48 + AEAD_TAG_LEN)
    confirm = client.receive(response)
    assert confirm[:HEADER_LEN] == encode_header(FrameType.REKEY_CONFIRM, AEAD_TAG_LEN)


def test_rekey_timestamps_move_forward_even_if_the_clock_goes_back() -> None:
    client, server, guard = session_pair()
    rekey(client, server, unix_ns=T0_NS + 5 * 10**9)
    rekey(client, server, unix_ns=T0_NS + 6 * 10**9)
    assert guard.confirmed[CLIENT_PUBLIC] == tai64n(T0_NS + 6 * 10**9)
    # A clock stepped back before the first handshake: the hello still gets a newer label,
    # one nanosecond later than the last one the client sent.
    rekey(client, server, unix_ns=T0_NS - 10**9)
    assert guard.confirmed[CLIENT_PUBLIC] == tai64n(T0_NS + 6 * 10**9 + 1)
    assert client.keys.rekeys == server.keys.rekeys == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["up", "down", "deliver_up", "deliver_down", "rekey"]), max_size=80))
def test_any_interleaving_delivers_everything_in_order_and_never_reuses_a_nonce(steps: list[str]) -> None:
    """Two FIFO pipes (TCP), data sealed by both sides at any moment, rekeys started at any
    moment: every frame opens, every packet arrives once and in order, and no (key, counter)
    pair seals twice."""
    client, server, _ = session_pair()
    up: list[bytes] = []
    down: list[bytes] = []
    sealed: set[tuple[int, int]] = set()
    keep_alive: list[SendState] = []  # keeps ids unique while the test runs
    sent_up: list[bytes] = []
    sent_down: list[bytes] = []
    unix_ns = T0_NS

    def seal(side: Side, pipe: list[bytes], sent: list[bytes], frame: bytes | None = None) -> None:
        state = side.keys.send
        keep_alive.append(state)
        if frame is None:
            plaintext = b"%d" % len(sent)
            sent.append(plaintext)
            frame = side.data(plaintext)
            mark = (id(state), state.counter - 1)
            assert mark not in sealed
            sealed.add(mark)
        pipe.append(frame)

    def deliver(pipe: list[bytes], to: Side, back: list[bytes]) -> None:
        if pipe:
            answer = to.receive(pipe.pop(0))
            if answer:
                back.append(answer)

    for step in steps:
        if step == "up":
            seal(client, up, sent_up)
        elif step == "down":
            seal(server, down, sent_down)
        elif step == "deliver_up":
            deliver(up, server, down)
        elif step == "deliver_down":
            deliver(down, client, up)
        elif not client.keys.rekeying:
            unix_ns += 1
            up.append(client.keys.begin_rekey(unix_ns))
    while up or down:
        deliver(up, server, down)
        deliver(down, client, up)
    assert server.received == sent_up
    assert client.received == sent_down
    assert client.keys.rekeys == server.keys.rekeys


# -- the oracle: noiseprotocol on the other side -----------------------------------------


def noise_party(*, initiator: bool) -> NoiseConnection:
    connection = NoiseConnection.from_name(PROTOCOL_NAME)
    connection.set_psks(PSK)
    connection.set_prologue(PROLOGUE)
    if initiator:
        connection.set_as_initiator()
        connection.set_keypair_from_private_bytes(Keypair.STATIC, CLIENT_STATIC)
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, SERVER_PUBLIC)
    else:
        connection.set_as_responder()
        connection.set_keypair_from_private_bytes(Keypair.STATIC, SERVER_STATIC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        connection.start_handshake()
    return connection


def test_client_rekey_is_noise_ikpsk2_against_noiseprotocol() -> None:
    client, server, _ = session_pair()
    init = client.keys.begin_rekey(T0_NS + 10**9)
    message1 = server.keys.recv.open(init[:HEADER_LEN], init[HEADER_LEN:])  # old client->server key
    theirs = noise_party(initiator=False)
    assert theirs.read_message(message1) == ClientHello(tai64n(T0_NS + 10**9)).encode()
    message2 = theirs.write_message(b"")
    assert theirs.handshake_finished

    confirm = client.receive(server.keys.send.seal(message2, FrameType.REKEY_RESPONSE))
    their_state = theirs.noise_protocol
    assert their_state.cipher_state_decrypt.decrypt_with_ad(confirm[:HEADER_LEN], confirm[HEADER_LEN:]) == b""
    up = client.data(b"to noiseprotocol")
    assert their_state.cipher_state_decrypt.decrypt_with_ad(up[:HEADER_LEN], up[HEADER_LEN:]) == b"to noiseprotocol"
    header = encode_header(FrameType.DATA, len(b"from noiseprotocol") + AEAD_TAG_LEN)
    down = header + their_state.cipher_state_encrypt.encrypt_with_ad(header, b"from noiseprotocol")
    client.receive(down)
    assert client.received == [b"from noiseprotocol"]


def test_server_answers_a_noiseprotocol_rekey() -> None:
    client, server, guard = session_pair()
    theirs = noise_party(initiator=True)
    hello = ClientHello(tai64n(T0_NS + 10**9)).encode()
    response = server.receive(client.keys.send.seal(theirs.write_message(hello), FrameType.REKEY_INIT))
    assert guard.confirmed[CLIENT_PUBLIC] == tai64n(T0_NS + 10**9)
    message2 = client.keys.recv.open(response[:HEADER_LEN], response[HEADER_LEN:])  # old server->client key
    assert theirs.read_message(message2) == b""
    assert theirs.handshake_finished

    their_state = theirs.noise_protocol
    header = encode_header(FrameType.REKEY_CONFIRM, AEAD_TAG_LEN)
    assert server.receive(header + their_state.cipher_state_encrypt.encrypt_with_ad(header, b"")) == b""
    assert server.keys.rekeys == 1
    down = server.data(b"to noiseprotocol")
    assert their_state.cipher_state_decrypt.decrypt_with_ad(down[:HEADER_LEN], down[HEADER_LEN:]) == b"to noiseprotocol"


# -- frames that must not arrive -------------------------------------------------------------


def test_stray_rekey_frames_are_protocol_errors() -> None:
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="REKEY_RESPONSE without a rekey"):
        client.receive(server.keys.send.seal(b"x" * 48, FrameType.REKEY_RESPONSE))
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="REKEY_CONFIRM without a rekey"):
        server.receive(client.keys.send.seal(b"", FrameType.REKEY_CONFIRM))
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="REKEY_INIT received by the side that initiates"):
        client.receive(server.keys.send.seal(b"x" * 110, FrameType.REKEY_INIT))
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="REKEY_CONFIRM without a rekey"):
        client.receive(server.keys.send.seal(b"", FrameType.REKEY_CONFIRM))
    for frame_type in (FrameType.HANDSHAKE_INIT, FrameType.REJECT, 0x09, 0xFF):
        client, server, _ = session_pair()
        with pytest.raises(ProtocolError, match="unexpected frame type"):
            server.receive(client.keys.send.seal(b"", frame_type))


def test_duplicate_rekey_frames_are_protocol_errors() -> None:
    client, server, _ = session_pair()
    server.receive(client.keys.begin_rekey(T0_NS + 1))
    second = Initiator(CLIENT_STATIC, SERVER_PUBLIC, PSK, PROLOGUE).write_init(ClientHello(tai64n(T0_NS + 2)).encode())
    with pytest.raises(ProtocolError, match="previous rekey is unconfirmed"):
        server.receive(client.keys.send.seal(second, FrameType.REKEY_INIT))

    client, server, _ = session_pair()
    rekey(client, server)
    with pytest.raises(ProtocolError, match="REKEY_CONFIRM without a rekey"):
        server.receive(client.keys.send.seal(b"", FrameType.REKEY_CONFIRM))

    client, server, _ = session_pair()
    client.keys.begin_rekey(T0_NS + 1)
    with pytest.raises(ProtocolError, match="already under way"):
        client.keys.begin_rekey(T0_NS + 2)
    with pytest.raises(ProtocolError, match="only the client"):
        server.keys.begin_rekey(T0_NS + 3)


def test_a_replayed_rekey_frame_ends_the_session() -> None:
    """Out of turn (ProtocolError) or, were it in turn, under a counter already used (DecryptError)."""
    client, server, _ = session_pair()
    init = client.keys.begin_rekey(T0_NS + 1)
    response = server.receive(init)
    with pytest.raises((ProtocolError, DecryptError)):
        server.receive(init)
    confirm = client.receive(response)
    with pytest.raises((ProtocolError, DecryptError)):
        client.receive(response)
    server.receive(confirm)
    with pytest.raises((ProtocolError, DecryptError)):
        server.receive(confirm)
    rekey(client, server, unix_ns=T0_NS + 2)
    with pytest.raises(DecryptError):
        server.receive(init)  # in turn again, but sealed under a retired key


@pytest.mark.parametrize(
    ("static", "timestamp_ns", "message"),
    [
        (OTHER_STATIC, T0_NS + 10**9, "another static key"),
        (CLIENT_STATIC, T0_NS, "not newer"),
        (CLIENT_STATIC, T0_NS - 1, "not newer"),
    ],
)
def test_server_refuses_a_rekey_from_another_key_or_with_an_old_timestamp(
    static: bytes, timestamp_ns: int, message: str
) -> None:
    client, server, guard = session_pair()
    message1 = Initiator(static, SERVER_PUBLIC, PSK, PROLOGUE).write_init(ClientHello(tai64n(timestamp_ns)).encode())
    with pytest.raises(ProtocolError, match=message):
        server.receive(client.keys.send.seal(message1, FrameType.REKEY_INIT))
    assert guard.confirmed[CLIENT_PUBLIC] == tai64n(T0_NS)


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"\x00" * 95, b"not a noise message" * 10],
)
def test_server_refuses_a_rekey_init_that_is_not_a_message_1(plaintext: bytes) -> None:
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="bad REKEY_INIT"):
        server.receive(client.keys.send.seal(plaintext, FrameType.REKEY_INIT))


def test_client_refuses_a_bad_or_non_empty_response() -> None:
    client, server, _ = session_pair()
    client.keys.begin_rekey(T0_NS + 1)
    with pytest.raises(ProtocolError, match="bad REKEY_RESPONSE"):
        client.receive(server.keys.send.seal(bytes(48), FrameType.REKEY_RESPONSE))

    client, server, _ = session_pair()
    message1 = server.keys.recv.open(*split(client.keys.begin_rekey(T0_NS + 1)))
    responder = Responder(SERVER_STATIC, PROLOGUE)
    responder.read_init(message1)
    message2, _ = responder.write_response(PSK, b"settings do not change mid-session")
    with pytest.raises(ProtocolError, match="non-empty payload"):
        client.receive(server.keys.send.seal(message2, FrameType.REKEY_RESPONSE))


def test_keepalive_and_confirm_must_be_empty() -> None:
    client, server, _ = session_pair()
    with pytest.raises(ProtocolError, match="KEEPALIVE with a non-empty plaintext"):
        server.receive(client.keys.send.seal(b"x", FrameType.KEEPALIVE))
    # A confirm with content, sealed under the right new key (noiseprotocol's), is still refused.
    client, server, _ = session_pair()
    theirs = noise_party(initiator=True)
    hello = ClientHello(tai64n(T0_NS + 1)).encode()
    response = server.receive(client.keys.send.seal(theirs.write_message(hello), FrameType.REKEY_INIT))
    theirs.read_message(client.keys.recv.open(*split(response)))
    header = encode_header(FrameType.REKEY_CONFIRM, 1 + AEAD_TAG_LEN)
    with pytest.raises(ProtocolError, match="REKEY_CONFIRM with a non-empty plaintext"):
        server.receive(header + theirs.noise_protocol.cipher_state_encrypt.encrypt_with_ad(header, b"x"))


def split(frame: bytes) -> tuple[bytes, bytes]:
    return frame[:HEADER_LEN], frame[HEADER_LEN:]


# -- timers and limits ---------------------------------------------------------------------


def test_policy_defaults_and_derived_timers() -> None:
    policy = Policy()
    assert (policy.rekey_after_time, policy.keepalive) == (REKEY_AFTER_TIME, KEEPALIVE) == (120, 25)
    assert policy.reject_after_time == REJECT_AFTER_TIME == 180
    assert policy.dead_peer_timeout == 2 * 25 + 5
    assert policy.tick == 1.0
    assert (policy.rekey_after_bytes, policy.reject_after_bytes) == (REKEY_AFTER_BYTES, REJECT_AFTER_BYTES)
    fast = Policy.for_server(2, 1)
    assert fast.reject_after_time == 7  # at least REKEY_TIMEOUT past the rekey
    assert fast.dead_peer_timeout == 7
    assert fast.tick == 0.2
    assert Policy.for_server(100, 25).reject_after_time == 150  # 1.5 x
    client = Policy.for_client(120, 25, server_rekey_after=2, server_keepalive=10)
    assert (client.rekey_after_time, client.keepalive, client.peer_keepalive) == (2, 10, 10)
    client = Policy.for_client(1, 3, server_rekey_after=120, server_keepalive=25)
    assert (client.rekey_after_time, client.keepalive, client.peer_keepalive) == (1, 3, 25)
    assert client.dead_peer_timeout == 55  # judged by how often the server sends


def test_byte_limits_keep_aes_gcm_within_the_cfrg_bound() -> None:
    """PROTOCOL.md, section 13.5: usage / 16 bounds blocks + messages; (that + 1)^2 / 2^129 is
    the confidentiality advantage of draft-irtf-cfrg-aead-limits for AES-GCM."""
    units = REJECT_AFTER_BYTES // 16
    assert (units + 1) ** 2 / 2**129 < 2**-60
    assert REKEY_AFTER_BYTES * 4 == REJECT_AFTER_BYTES
    # The charge per frame covers the partial last block and the message term of the bound.
    assert FRAME_CHARGE == 2 * 16


def test_client_rekeys_after_rekey_after_time() -> None:
    client, server, _ = session_pair(Policy(rekey_after_time=10, keepalive=25), Policy(rekey_after_time=10))
    assert client.poll(9.9) is Action.NONE
    assert client.poll(10.0) is Action.REKEY
    client.keys.begin_rekey(T0_NS + 1)
    assert client.poll(12.0) is Action.NONE  # one rekey at a time
    assert server.poll(10.0) is Action.NONE  # the server never starts one


def test_rekeys_are_due_one_interval_after_the_previous_one_began() -> None:
    """Rekeys keep their rhythm (the handshake's round trip does not stretch the interval);
    key age, for REJECT_AFTER_TIME, counts from the switch."""
    client, server, _ = session_pair(Policy(rekey_after_time=10), Policy(rekey_after_time=10))
    assert client.poll(9.95) is Action.NONE
    assert client.keys.next_poll == 10.0  # not 9.95 + the 1 s tick: the rekey would be late
    assert client.poll(10.0) is Action.REKEY
    rekey(client, server, now=10.5)
    assert client.keys.installed_at == server.keys.installed_at == 10.5
    assert client.poll(19.9) is Action.NONE
    assert client.poll(20.0) is Action.REKEY


def test_keys_past_reject_after_time_end_the_session_on_both_sides() -> None:
    client, server, _ = session_pair(Policy(rekey_after_time=10), Policy(rekey_after_time=10))
    client.receive(server.keys.keepalive())  # no dead peer in this test
    server.receive(client.keys.keepalive())
    client.keys.begin_rekey(T0_NS + 1)  # never answered
    with pytest.raises(SessionExpired, match="no rekey within 15"):
        client.poll(15.0)
    with pytest.raises(SessionExpired, match="no rekey within 15"):
        server.poll(15.0)


def test_client_rekeys_after_rekey_after_bytes_in_either_direction() -> None:
    small = Policy(rekey_after_bytes=1000, reject_after_bytes=4000)
    client, server, _ = session_pair(small, small)
    assert client.keys.tx_due == client.keys.rx_due == 1000
    assert server.keys.tx_due == server.keys.rx_due == 4000  # the server only enforces
    client.data(b"x" * (1000 - FRAME_CHARGE - 1))
    assert client.tx_bytes + FRAME_CHARGE * client.keys.send.counter == 999
    assert client.poll(0.0) is Action.NONE
    client.data(b"")  # one more frame: its charge crosses the line
    assert client.poll(0.0) is Action.REKEY
    client.keys.begin_rekey(T0_NS + 1)
    assert client.keys.tx_due == 4000  # now only the reject limit is left

    # Downloads count too: bytes received under one key start a rekey.
    client, server, _ = session_pair(small, small)
    client.receive(server.data(b"y" * 1000))
    assert client.keys.rx_due == 1000
    assert client.rx_bytes + FRAME_CHARGE * client.keys.recv.counter > 1000
    assert client.poll(0.0) is Action.REKEY


def test_byte_thresholds_move_with_each_switch() -> None:
    small = Policy(rekey_after_bytes=1000, reject_after_bytes=4000)
    client, server, _ = session_pair(small, small)
    server.receive(client.data(b"x" * 500))
    client.receive(server.data(b"y" * 300))
    rekey(client, server)
    assert client.keys.tx_due == client.tx_bytes + 1000
    assert client.keys.rx_due == client.rx_bytes + 1000
    assert server.keys.rx_due == server.rx_bytes + 4000
    assert client.poll(1.0) is Action.NONE


def test_usage_past_the_reject_limit_ends_the_session() -> None:
    small = Policy(rekey_after_bytes=1000, reject_after_bytes=4000)
    client, server, _ = session_pair(small, small)
    for _ in range(4):
        server.receive(client.data(b"x" * 1000))
    with pytest.raises(SessionExpired, match="no rekey within 4000"):
        server.poll(0.0)
    with pytest.raises(SessionExpired, match="no rekey within 4000"):
        client.poll(0.0)


def test_keepalive_after_send_silence_only() -> None:
    _, server, _ = session_pair(Policy(keepalive=2, peer_keepalive=2), Policy(keepalive=2, peer_keepalive=2))
    assert server.poll(1.0) is Action.NONE
    server.data(b"packet")  # activity is seen through the counter at the next poll
    assert server.poll(1.5) is Action.NONE
    assert server.poll(3.4) is Action.NONE  # 1.9 s since the poll that saw the packet
    assert server.poll(3.5) is Action.KEEPALIVE
    assert server.poll(3.6) is Action.NONE  # one per interval, even if the caller sent none
    server.keys.keepalive()
    assert server.poll(5.5) is Action.NONE  # the keepalive itself was sent
    assert server.poll(7.5) is Action.KEEPALIVE


def test_a_silent_peer_is_dead_after_two_keepalives_and_rekey_timeout() -> None:
    client, server, _ = session_pair(Policy(keepalive=1, peer_keepalive=1), Policy(keepalive=1, peer_keepalive=1))
    assert client.poll(3.0) is Action.KEEPALIVE
    client.receive(server.keys.keepalive())  # any frame, keepalives included, is life
    assert client.poll(4.0) is Action.KEEPALIVE
    assert client.poll(10.9) is Action.KEEPALIVE
    with pytest.raises(SessionExpired, match=r"no frame from the peer for 7\.0 s"):
        client.poll(11.0)


# -- the examples of PROTOCOL.md, section 13.6 ---------------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "PROTOCOL.md"


@pytest.mark.parametrize(
    ("key", "counter", "frame_type", "header_hex", "tag_hex"),
    [
        (bytes(range(1, 33)), 5, FrameType.KEEPALIVE, "0000001005", "70deb19b500d66ed5a7a99612cb3ed37"),
        (bytes(range(33, 65)), 0, FrameType.REKEY_CONFIRM, "0000001008", "975a36a0bf1f3cf341aeae1178961c3f"),
    ],
)
def test_control_frame_examples(key: bytes, counter: int, frame_type: int, header_hex: str, tag_hex: str) -> None:
    """Each example is recomputed twice, with AES-GCM directly (nonce = 4 zero bytes || u64be
    counter, AD = header) and with transport.SendState, and must appear in PROTOCOL.md."""
    header = bytes.fromhex(header_hex)
    assert AESGCM(key).encrypt(bytes(4) + counter.to_bytes(8, "big"), b"", header) == bytes.fromhex(tag_hex)
    send = SendState(key)
    send.counter = counter
    assert send.seal(b"", frame_type) == header + bytes.fromhex(tag_hex)
    text = PROTOCOL_MD.read_text()
    section = text[text.index("### 13.6") :]
    assert f"  {header_hex}  " in section
    assert f"  {tag_hex}  " in section
