"""Tests for handshake.py.

The oracle is the ``noiseprotocol`` package (an independent implementation): our
Initiator and Responder must interoperate with it, produce the same bytes when given the
same keys, and agree with it on the handshake hash and on transport keys. On top of that,
the official cacophony test vector for this exact protocol name pins the output, and the
rejection tests check that every malformed input ends in HandshakeError and nothing else.
"""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from handshake import (
    DHLEN,
    INIT_OVERHEAD,
    MAX_MESSAGE_LEN,
    PROTOCOL_NAME,
    RESPONSE_OVERHEAD,
    TAGLEN,
    HandshakeError,
    Initiator,
    Responder,
    SessionKeys,
    generate_private_key,
    public_key,
)

PROLOGUE = b"tunlib/2"
# Transport frames are sealed with their 5-byte header as associated data (design.md).
FRAME_HEADER_AD = b"\x00\x00\x05\xdc\x04"

# Fixed keys for the deterministic tests (any 32 bytes are a valid X25519 private key).
CLIENT_STATIC = bytes(range(1, 33))
CLIENT_EPHEMERAL = bytes(range(33, 65))
SERVER_STATIC = bytes(range(65, 97))
SERVER_EPHEMERAL = bytes(range(97, 129))
PSK = bytes(range(129, 161))
INIT_PAYLOAD = b"client hello"
RESPONSE_PAYLOAD = b"server settings"

# Known low-order X25519 points and non-canonical encodings of them: 0, 1, two points of
# order 8, p - 1, p and p + 1. Each makes the shared secret all zeros.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),
    bytes.fromhex("ed" + "ff" * 30 + "7f"),
    bytes.fromhex("ee" + "ff" * 30 + "7f"),
]


def nonce(counter: int) -> bytes:
    """The AESGCM nonce rule of the Noise spec: 4 zero bytes, then a big-endian u64."""
    return bytes(4) + counter.to_bytes(8, "big")


def fresh_initiator(psk: bytes = PSK) -> Initiator:
    """A deterministic Initiator that has sent message 1 and waits for message 2."""
    initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), psk, PROLOGUE, CLIENT_EPHEMERAL)
    initiator.write_init(INIT_PAYLOAD)
    return initiator


def fresh_responder() -> Responder:
    return Responder(SERVER_STATIC, PROLOGUE, SERVER_EPHEMERAL)


def _fixed_messages() -> tuple[bytes, bytes]:
    message1 = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE, CLIENT_EPHEMERAL).write_init(
        INIT_PAYLOAD
    )
    responder = fresh_responder()
    responder.read_init(message1)
    message2, _ = responder.write_response(PSK, RESPONSE_PAYLOAD)
    return message1, message2


MESSAGE1, MESSAGE2 = _fixed_messages()


def their_party(
    *,
    initiator: bool,
    static_private: bytes,
    psk: bytes,
    remote_static: bytes | None = None,
    ephemeral_private: bytes | None = None,
) -> NoiseConnection:
    """A noiseprotocol connection configured like tunlib, ready to start the handshake."""
    connection = NoiseConnection.from_name(PROTOCOL_NAME)
    connection.set_psks(psk)
    connection.set_prologue(PROLOGUE)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    if remote_static is not None:
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    if ephemeral_private is not None:
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
    with warnings.catch_warnings():
        # noiseprotocol warns (rightly, outside tests) when an ephemeral is injected.
        warnings.simplefilter("ignore")
        connection.start_handshake()
    return connection


def assert_transport_interop(keys: SessionKeys, theirs: NoiseConnection) -> None:
    """Our keys + the nonce rule must talk to their CipherStates, both ways, several times."""
    their_state = theirs.noise_protocol
    for counter in range(3):
        ours_plain = b"from tunlib %d" % counter
        sealed = AESGCM(keys.send_key).encrypt(nonce(counter), ours_plain, FRAME_HEADER_AD)
        assert their_state.cipher_state_decrypt.decrypt_with_ad(FRAME_HEADER_AD, sealed) == ours_plain

        their_plain = b"from noiseprotocol %d" % counter
        sealed = their_state.cipher_state_encrypt.encrypt_with_ad(FRAME_HEADER_AD, their_plain)
        assert AESGCM(keys.recv_key).decrypt(nonce(counter), sealed, FRAME_HEADER_AD) == their_plain


# --- keys -------------------------------------------------------------------------------


def test_generate_private_key_gives_distinct_raw_keys() -> None:
    first, second = generate_private_key(), generate_private_key()
    assert len(first) == len(second) == DHLEN
    assert first != second


def test_public_key_matches_cryptography() -> None:
    private = generate_private_key()
    expected = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert public_key(private) == expected


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_public_key_rejects_wrong_length(bad: bytes) -> None:
    with pytest.raises(HandshakeError):
        public_key(bad)


def test_session_keys_repr_hides_keys() -> None:
    keys = SessionKeys(send_key=b"\x11" * 32, recv_key=b"\x22" * 32, handshake_hash=b"\x33" * 32)
    assert "\\x11" not in repr(keys)
    assert "\\x22" not in repr(keys)


# --- interoperability with noiseprotocol -------------------------------------------------

PAYLOADS = [b"", b"hello", bytes(range(256)) * 4]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_our_initiator_with_their_responder(payload: bytes) -> None:
    client_static, server_static = generate_private_key(), generate_private_key()
    ours = Initiator(client_static, public_key(server_static), PSK, PROLOGUE)
    theirs = their_party(initiator=False, static_private=server_static, psk=PSK)

    message1 = ours.write_init(payload)
    assert len(message1) == INIT_OVERHEAD + len(payload)
    assert theirs.read_message(message1) == payload
    assert theirs.noise_protocol.handshake_state.rs.public_bytes == public_key(client_static)

    message2 = bytes(theirs.write_message(payload[::-1]))
    assert len(message2) == RESPONSE_OVERHEAD + len(payload)
    received, keys = ours.read_response(message2)

    assert received == payload[::-1]
    assert theirs.handshake_finished
    assert keys.handshake_hash == theirs.get_handshake_hash()
    assert_transport_interop(keys, theirs)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_their_initiator_with_our_responder(payload: bytes) -> None:
    client_static, server_static = generate_private_key(), generate_private_key()
    theirs = their_party(
        initiator=True,
        static_private=client_static,
        psk=PSK,
        remote_static=public_key(server_static),
    )
    ours = Responder(server_static, PROLOGUE)

    initiator_static, received = ours.read_init(bytes(theirs.write_message(payload)))
    assert initiator_static == public_key(client_static)
    assert received == payload

    message2, keys = ours.write_response(PSK, payload[::-1])
    assert theirs.read_message(message2) == payload[::-1]

    assert theirs.handshake_finished
    assert keys.handshake_hash == theirs.get_handshake_hash()
    assert_transport_interop(keys, theirs)


def test_our_two_sides_agree() -> None:
    client_static, server_static = generate_private_key(), generate_private_key()
    initiator = Initiator(client_static, public_key(server_static), PSK, PROLOGUE)
    responder = Responder(server_static, PROLOGUE)

    initiator_static, payload1 = responder.read_init(initiator.write_init(b"one"))
    message2, responder_keys = responder.write_response(PSK, b"two")
    payload2, initiator_keys = initiator.read_response(message2)

    assert (initiator_static, payload1, payload2) == (public_key(client_static), b"one", b"two")
    assert initiator_keys.send_key == responder_keys.recv_key
    assert initiator_keys.recv_key == responder_keys.send_key
    assert initiator_keys.send_key != initiator_keys.recv_key
    assert initiator_keys.handshake_hash == responder_keys.handshake_hash


def test_fresh_ephemerals_give_fresh_sessions() -> None:
    """Same static keys and psk, two handshakes: different messages and keys."""
    sessions = []
    for _ in range(2):
        initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE)
        responder = Responder(SERVER_STATIC, PROLOGUE)
        responder.read_init(initiator.write_init(b""))
        message2, _ = responder.write_response(PSK, b"")
        sessions.append(initiator.read_response(message2)[1])
    assert sessions[0].send_key != sessions[1].send_key
    assert sessions[0].handshake_hash != sessions[1].handshake_hash


def test_same_keys_give_same_bytes_as_noiseprotocol() -> None:
    """With every key fixed, both implementations must emit identical messages."""
    ours_i = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE, CLIENT_EPHEMERAL)
    theirs_i = their_party(
        initiator=True,
        static_private=CLIENT_STATIC,
        psk=PSK,
        remote_static=public_key(SERVER_STATIC),
        ephemeral_private=CLIENT_EPHEMERAL,
    )
    ours_r = fresh_responder()
    theirs_r = their_party(initiator=False, static_private=SERVER_STATIC, psk=PSK, ephemeral_private=SERVER_EPHEMERAL)

    message1 = ours_i.write_init(INIT_PAYLOAD)
    assert message1 == bytes(theirs_i.write_message(INIT_PAYLOAD)) == MESSAGE1

    assert ours_r.read_init(message1) == (public_key(CLIENT_STATIC), INIT_PAYLOAD)
    assert theirs_r.read_message(message1) == INIT_PAYLOAD
    message2, responder_keys = ours_r.write_response(PSK, RESPONSE_PAYLOAD)
    assert message2 == bytes(theirs_r.write_message(RESPONSE_PAYLOAD)) == MESSAGE2

    assert theirs_i.read_message(message2) == RESPONSE_PAYLOAD
    payload, initiator_keys = ours_i.read_response(message2)
    assert payload == RESPONSE_PAYLOAD

    expected_hash = theirs_i.get_handshake_hash()
    assert theirs_r.get_handshake_hash() == expected_hash
    assert initiator_keys.handshake_hash == responder_keys.handshake_hash == expected_hash
    assert_transport_interop(initiator_keys, theirs_r)
    assert_transport_interop(responder_keys, theirs_i)


# --- official test vector -----------------------------------------------------------------

# "Noise_IKpsk2_25519_AESGCM_SHA256" from the cacophony vectors
# (github.com/haskell-cryptography/cacophony, vectors/cacophony.txt,
# commit 36c1e5c3a799342b226547ce9fdb3579ab60ccd3). Messages 0 and 1 are the handshake;
# 2..5 are transport messages with empty associated data, alternately sent by the
# initiator and the responder.
CACOPHONY_KEYS = {
    "prologue": "4a6f686e2047616c74",
    "psk": "54686973206973206d7920417573747269616e20706572737065637469766521",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "init_remote_static": "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
}
CACOPHONY_MESSAGES = [  # (payload, ciphertext)
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79445a1baf339186d786"
        "7062b0dd31f5de322d370165d217939b2b7ed9e2bae7840458ea65c2ce1554e0e8077fe7334c4bd5"
        "14c658fd04d97b86d216f58f59714a7e24144155045c8f36bed85a2cb0fd9af7",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088432fe8d675e949799d"
        "2a968211a66cc7ba2b0f4cad8eda3c2bd37eae737bbf88",
    ),
    ("462e20412e20486179656b", "38cbf3835c78b7802df0dd0d9640ff8575debd0cb61cfb52590da1"),
    ("4361726c204d656e676572", "ffc365ff6955fc66c5d809b31ac995f812c5770bd29f0df12f0ffd"),
    (
        "4a65616e2d426170746973746520536179",
        "a7f2828174c4ead2491ffeb77c41c890fd1229ee36f23ccb9066a795daff1cad6b",
    ),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "3b86963d5c0e6e3b4153d77153836606393eefc4e5e6dae97796552d1265839ee3825cb80c",
    ),
]


def test_cacophony_vector() -> None:
    def value(name: str) -> bytes:
        return bytes.fromhex(CACOPHONY_KEYS[name])

    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in CACOPHONY_MESSAGES]
    assert public_key(value("resp_static")) == value("init_remote_static")

    initiator = Initiator(
        value("init_static"),
        value("init_remote_static"),
        value("psk"),
        value("prologue"),
        value("init_ephemeral"),
    )
    responder = Responder(value("resp_static"), value("prologue"), value("resp_ephemeral"))

    (payload1, expected1), (payload2, expected2) = messages[:2]
    assert initiator.write_init(payload1) == expected1
    assert responder.read_init(expected1) == (public_key(value("init_static")), payload1)
    message2, responder_keys = responder.write_response(value("psk"), payload2)
    assert message2 == expected2
    received, initiator_keys = initiator.read_response(expected2)
    assert received == payload2

    for index, (plaintext, ciphertext) in enumerate(messages[2:]):
        sender, receiver = (initiator_keys, responder_keys) if index % 2 == 0 else (responder_keys, initiator_keys)
        counter = index // 2
        assert AESGCM(sender.send_key).encrypt(nonce(counter), plaintext, b"") == ciphertext
        assert AESGCM(receiver.recv_key).decrypt(nonce(counter), ciphertext, b"") == plaintext


# --- authentication failures ---------------------------------------------------------------


def test_wrong_pinned_responder_key_is_rejected_by_responder() -> None:
    impostor_pin = public_key(generate_private_key())
    initiator = Initiator(CLIENT_STATIC, impostor_pin, PSK, PROLOGUE)
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(initiator.write_init(INIT_PAYLOAD))


def test_wrong_psk_is_rejected_by_initiator() -> None:
    initiator = fresh_initiator(psk=PSK)
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    # The responder cannot tell: IKpsk2 mixes the psk into message 2 only.
    message2, _ = responder.write_response(bytes(32), RESPONSE_PAYLOAD)
    with pytest.raises(HandshakeError):
        initiator.read_response(message2)


def test_wrong_prologue_is_rejected() -> None:
    with pytest.raises(HandshakeError):
        Responder(SERVER_STATIC, b"tunlib/1", SERVER_EPHEMERAL).read_init(MESSAGE1)


def test_response_to_another_handshake_is_rejected() -> None:
    """A message 2 made for a different client ephemeral fails (the ee/se keys differ)."""
    other = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE)
    other.write_init(INIT_PAYLOAD)
    with pytest.raises(HandshakeError):
        other.read_response(MESSAGE2)


def flip(message: bytes, position: int, mask: int = 0x01) -> bytes:
    changed = bytearray(message)
    changed[position] ^= mask
    return bytes(changed)


@pytest.mark.parametrize("position", range(len(MESSAGE1)))
def test_flipped_byte_in_init_is_rejected(position: int) -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(flip(MESSAGE1, position))


@pytest.mark.parametrize("position", range(len(MESSAGE2)))
def test_flipped_byte_in_response_is_rejected(position: int) -> None:
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(flip(MESSAGE2, position))


@given(st.data())
def test_any_change_in_init_is_rejected(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(MESSAGE1) - 1))
    mask = data.draw(st.integers(1, 255))
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(flip(MESSAGE1, position, mask))


@given(st.data())
def test_any_change_in_response_is_rejected(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(MESSAGE2) - 1))
    mask = data.draw(st.integers(1, 255))
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(flip(MESSAGE2, position, mask))


@pytest.mark.parametrize("length", range(len(MESSAGE1)))
def test_truncated_init_is_rejected(length: int) -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(MESSAGE1[:length])


@pytest.mark.parametrize("length", range(len(MESSAGE2)))
def test_truncated_response_is_rejected(length: int) -> None:
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(MESSAGE2[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * TAGLEN, bytes(MAX_MESSAGE_LEN)])
def test_extended_messages_are_rejected(extra: bytes) -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(MESSAGE1 + extra)
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(MESSAGE2 + extra)


# --- low-order points and bad parameters -----------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_ephemeral_in_init_is_rejected(point: bytes) -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(point + MESSAGE1[DHLEN:])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_ephemeral_in_response_is_rejected(point: bytes) -> None:
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(point + MESSAGE2[DHLEN:])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_pinned_key_is_refused(point: bytes) -> None:
    initiator = Initiator(CLIENT_STATIC, point, PSK, PROLOGUE)
    with pytest.raises(HandshakeError):
        initiator.write_init(INIT_PAYLOAD)


@pytest.mark.parametrize(
    "arguments",
    [
        {"static_private": bytes(31)},
        {"responder_static_public": bytes(33)},
        {"psk": bytes(16)},
        {"ephemeral_private": b""},
    ],
)
def test_initiator_rejects_bad_key_sizes(arguments: dict[str, bytes]) -> None:
    good = {
        "static_private": CLIENT_STATIC,
        "responder_static_public": public_key(SERVER_STATIC),
        "psk": PSK,
        "prologue": PROLOGUE,
    }
    with pytest.raises(HandshakeError):
        Initiator(**(good | arguments))


@pytest.mark.parametrize("arguments", [{"static_private": bytes(33)}, {"ephemeral_private": bytes(1)}])
def test_responder_rejects_bad_key_sizes(arguments: dict[str, bytes]) -> None:
    good = {"static_private": SERVER_STATIC, "prologue": PROLOGUE}
    with pytest.raises(HandshakeError):
        Responder(**(good | arguments))


def test_write_response_rejects_bad_psk_size() -> None:
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    with pytest.raises(HandshakeError):
        responder.write_response(bytes(31), RESPONSE_PAYLOAD)


def test_largest_payloads_fit_and_one_more_byte_does_not() -> None:
    biggest = bytes(MAX_MESSAGE_LEN - INIT_OVERHEAD)
    initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE)
    responder = Responder(SERVER_STATIC, PROLOGUE)
    message1 = initiator.write_init(biggest)
    assert len(message1) == MAX_MESSAGE_LEN
    assert responder.read_init(message1)[1] == biggest
    message2, _ = responder.write_response(PSK, bytes(MAX_MESSAGE_LEN - RESPONSE_OVERHEAD))
    assert len(message2) == MAX_MESSAGE_LEN
    initiator.read_response(message2)

    with pytest.raises(HandshakeError):
        Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE).write_init(biggest + b"x")
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    with pytest.raises(HandshakeError):
        responder.write_response(PSK, bytes(MAX_MESSAGE_LEN - RESPONSE_OVERHEAD + 1))


# --- call order and single use ------------------------------------------------------------


def test_initiator_read_before_write() -> None:
    initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE, CLIENT_EPHEMERAL)
    with pytest.raises(HandshakeError):
        initiator.read_response(MESSAGE2)


def test_initiator_write_twice() -> None:
    initiator = fresh_initiator()
    with pytest.raises(HandshakeError):
        initiator.write_init(INIT_PAYLOAD)


def test_initiator_is_single_use() -> None:
    initiator = fresh_initiator()
    initiator.read_response(MESSAGE2)
    with pytest.raises(HandshakeError):
        initiator.read_response(MESSAGE2)
    with pytest.raises(HandshakeError):
        initiator.write_init(INIT_PAYLOAD)


def test_responder_write_before_read() -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().write_response(PSK, RESPONSE_PAYLOAD)


def test_responder_read_twice() -> None:
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    with pytest.raises(HandshakeError):
        responder.read_init(MESSAGE1)


def test_responder_is_single_use() -> None:
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    responder.write_response(PSK, RESPONSE_PAYLOAD)
    with pytest.raises(HandshakeError):
        responder.write_response(PSK, RESPONSE_PAYLOAD)
    with pytest.raises(HandshakeError):
        responder.read_init(MESSAGE1)


def test_failed_read_init_poisons_the_responder() -> None:
    responder = fresh_responder()
    with pytest.raises(HandshakeError):
        responder.read_init(flip(MESSAGE1, len(MESSAGE1) - 1))
    with pytest.raises(HandshakeError):
        responder.read_init(MESSAGE1)


def test_failed_read_response_poisons_the_initiator() -> None:
    initiator = fresh_initiator()
    with pytest.raises(HandshakeError):
        initiator.read_response(flip(MESSAGE2, len(MESSAGE2) - 1))
    with pytest.raises(HandshakeError):
        initiator.read_response(MESSAGE2)


def test_failed_write_response_poisons_the_responder() -> None:
    responder = fresh_responder()
    responder.read_init(MESSAGE1)
    with pytest.raises(HandshakeError):
        responder.write_response(b"short", RESPONSE_PAYLOAD)
    with pytest.raises(HandshakeError):
        responder.write_response(PSK, RESPONSE_PAYLOAD)


# --- fuzzing: arbitrary input raises HandshakeError and nothing else ----------------------


def prefixed_garbage(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid message's first bytes followed by anything, to get past early checks."""
    return (
        st.tuples(st.integers(0, len(valid)), st.binary(max_size=2 * len(valid)))
        .map(lambda cut: valid[: cut[0]] + cut[1])
        .filter(lambda message: message != valid)
    )


@given(st.one_of(st.binary(max_size=4 * INIT_OVERHEAD), prefixed_garbage(MESSAGE1)))
def test_read_init_fuzz(message: bytes) -> None:
    with pytest.raises(HandshakeError):
        fresh_responder().read_init(message)


@given(st.one_of(st.binary(max_size=4 * RESPONSE_OVERHEAD), prefixed_garbage(MESSAGE2)))
def test_read_response_fuzz(message: bytes) -> None:
    with pytest.raises(HandshakeError):
        fresh_initiator().read_response(message)
