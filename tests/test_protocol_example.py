"""Pins the worked example of PROTOCOL.md, section 9.1, to the code.

The expected bytes are not copied into this file: they are parsed out of PROTOCOL.md, so an
edit to the document that no longer matches the code fails here, and so does a change to
the code that no longer matches the document. The example is recomputed twice:

- from the building blocks (handshake.py with the example's ephemeral keys injected,
  messages.py, framing.py, transport.py, packets.py), value by value;
- through the real session.py client and server, with the same keys and a fixed clock, to
  show that they put exactly these frames on the wire, key confirmation and counter shift
  included.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import ipaddress
import re
import socket
import time
import types
from pathlib import Path

import pytest
from serverside import server_handshake
from wiretools import feed

import session
from config import ClientRecord, Profile
from framing import HEADER, FrameDecoder, FrameType, encode_frame, encode_init_frame, mac1_key, mac1_valid
from handshake import Initiator, Responder, public_key
from messages import ClientHello, SessionSettings, tai64n
from packets import echo_reply_for
from session import PROLOGUE, Admission, client_handshake
from transport import ReceiveState, SendState
from tunlib import LinkClosed

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
UNIX_TIME_NS = 1_700_000_000 * 10**9
"""The hello's clock, as section 9.1 states it (Unix time 1 700 000 000.000000000 s)."""
CLIENT_ADDRESS = ipaddress.IPv4Interface("10.0.0.2/24")
SERVER_ADDRESS = ipaddress.IPv4Address("10.0.0.1")
TIMEOUT = 5.0


# -- reading section 9.1 ------------------------------------------------------------------


def example_block() -> str:
    """The code block of section 9.1."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index("### 9.1 ") : text.index("## 10. ")]
    start = section.index("```\n") + len("```\n")
    return section[start : section.index("```", start)]


PRIVATE_KEY_LINE = re.compile(r"(.+?)\s+[0-9a-f]{2}(?: [0-9a-f]{2})* \.\.\. [0-9a-f]{2}\s+\(bytes (\d+)\.\.(\d+)\)")
"""e.g. "psk   81 82 ... a0   (bytes 129..160)": the key is the bytes 129 to 160."""
VALUE_LINE = re.compile(r"(.+?)\s+([0-9a-f]{64})")
"""e.g. "k1 (client→server) ca44...": a label (named by its words before any parenthesis), 32 bytes."""


def hex_field(line: str) -> bytes | None:
    """The bytes of an indented line: hex groups separated by single spaces, then optionally
    an annotation after two or more spaces. None for a line that is only an annotation."""
    first = re.split(r"\s{2,}", line.strip())[0]
    if not re.fullmatch(r"[0-9a-f]{2}(?:[0-9a-f]{2}| )*", first):
        return None
    return bytes.fromhex(first.replace(" ", ""))


def parse_example() -> dict[str, bytes]:
    """Every value of section 9.1 by name: "client static private", "k1", "frame 3", ...

    A line that starts at column 0 and ends with a colon opens a multi-line item, named by the
    words before its first comma or parenthesis; its bytes are the hex of the indented lines
    below. Its "(N bytes)" is checked against what was read. Other column-0 lines hold one
    value: a private key as "(bytes A..B)", or a label followed by 64 hex digits.
    """
    values: dict[str, bytes] = {}
    declared: dict[str, int] = {}
    current = None
    for line in example_block().splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            current = None
            if line.endswith(":"):
                current = re.split(r"[,(]", line)[0].strip()
                values[current] = b""
                size = re.search(r"\((\d+) bytes", line)
                if size:
                    declared[current] = int(size.group(1))
            elif match := PRIVATE_KEY_LINE.fullmatch(line):
                values[match[1]] = bytes(range(int(match[2]), int(match[3]) + 1))
            elif match := VALUE_LINE.fullmatch(line):
                values[match[1].split(" (")[0]] = bytes.fromhex(match[2])
            else:
                raise AssertionError(f"unparsed line in section 9.1: {line!r}")
            continue
        assert current is not None, f"indented line outside an item: {line!r}"
        if current == "settings":
            values[current] += line.strip().encode()
        else:
            values[current] += hex_field(line) or b""
    for name, size in declared.items():
        assert len(values[name]) == size, f"{name}: the document says {size} bytes, its hex has {len(values[name])}"
    return values


EXAMPLE = parse_example()
CLIENT_STATIC = EXAMPLE["client static private"]
CLIENT_EPHEMERAL = EXAMPLE["client ephemeral private"]
SERVER_STATIC = EXAMPLE["server static private"]
SERVER_EPHEMERAL = EXAMPLE["server ephemeral private"]
PSK = EXAMPLE["psk"]


def example_settings() -> SessionSettings:
    """What the v1 server sends this client: plain mode, default MTU, no --dns."""
    return SessionSettings(address=CLIENT_ADDRESS, server_address=SERVER_ADDRESS)


def test_the_example_has_every_value():
    assert set(EXAMPLE) == {
        "client static private",
        "client ephemeral private",
        "server static private",
        "server ephemeral private",
        "psk",
        "client static public",
        "server static public",
        "client ephemeral public",
        "server ephemeral public",
        "mac1 key",
        "hello",
        "settings",
        "frame 1",
        "frame 2",
        "handshake hash h",
        "k1",
        "k2",
        "frame 3",
        "plaintext 4",
        "frame 4",
        "plaintext 5",
        "frame 5",
    }
    for name in ("client static private", "client ephemeral private", "server static private", "psk"):
        assert len(EXAMPLE[name]) == 32


# -- recomputed from the building blocks --------------------------------------------------


def test_public_keys():
    assert public_key(CLIENT_STATIC) == EXAMPLE["client static public"]
    assert public_key(SERVER_STATIC) == EXAMPLE["server static public"]
    assert public_key(CLIENT_EPHEMERAL) == EXAMPLE["client ephemeral public"]
    assert public_key(SERVER_EPHEMERAL) == EXAMPLE["server ephemeral public"]


def test_payloads():
    assert ClientHello(tai64n(UNIX_TIME_NS)).encode() == EXAMPLE["hello"]
    assert ClientHello.decode(EXAMPLE["hello"]).timestamp == tai64n(UNIX_TIME_NS)
    assert example_settings().encode() == EXAMPLE["settings"]
    assert SessionSettings.decode(EXAMPLE["settings"]) == example_settings()


def run_handshake() -> tuple[bytes, bytes, object, object]:
    """Both sides of the handshake with the example's keys: (message 1, message 2, keys...)."""
    initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE, CLIENT_EPHEMERAL)
    responder = Responder(SERVER_STATIC, PROLOGUE, SERVER_EPHEMERAL)
    message1 = initiator.write_init(EXAMPLE["hello"])
    assert responder.read_init(message1) == (public_key(CLIENT_STATIC), EXAMPLE["hello"])
    message2, server_keys = responder.write_response(PSK, EXAMPLE["settings"])
    settings, client_keys = initiator.read_response(message2)
    assert settings == EXAMPLE["settings"]
    return message1, message2, client_keys, server_keys


def test_handshake_frames():
    message1, message2, _client_keys, _server_keys = run_handshake()
    assert encode_init_frame(public_key(SERVER_STATIC), message1) == EXAMPLE["frame 1"]
    assert encode_frame(FrameType.HANDSHAKE_RESPONSE, message2) == EXAMPLE["frame 2"]
    assert message1[:32] == EXAMPLE["client ephemeral public"]
    assert message2[:32] == EXAMPLE["server ephemeral public"]


def test_mac1():
    """Frame 1 ends with mac1 (section 4.7), recomputed here from hashlib alone."""
    frame, server_public = EXAMPLE["frame 1"], EXAMPLE["server static public"]
    key = hashlib.blake2s(b"mac1----" + server_public).digest()
    assert key == EXAMPLE["mac1 key"] == mac1_key(server_public)
    assert frame[-16:] == hashlib.blake2s(frame[:-16], key=key, digest_size=16).digest()
    assert mac1_valid(server_public, frame[:5], frame[5:])
    assert not mac1_valid(EXAMPLE["client static public"], frame[:5], frame[5:])


def test_session_keys_and_handshake_hash():
    _m1, _m2, client_keys, server_keys = run_handshake()
    assert client_keys.send_key == server_keys.recv_key == EXAMPLE["k1"]
    assert client_keys.recv_key == server_keys.send_key == EXAMPLE["k2"]
    assert client_keys.handshake_hash == server_keys.handshake_hash == EXAMPLE["handshake hash h"]


def test_data_frames():
    client_send = SendState(EXAMPLE["k1"])
    assert client_send.seal(b"") == EXAMPLE["frame 3"]  # key confirmation: counter 0
    assert client_send.seal(EXAMPLE["plaintext 4"]) == EXAMPLE["frame 4"]  # the ping: counter 1
    assert SendState(EXAMPLE["k2"]).seal(EXAMPLE["plaintext 5"]) == EXAMPLE["frame 5"]


def test_data_frames_open_in_order():
    stream = EXAMPLE["frame 3"] + EXAMPLE["frame 4"]
    decoder = FrameDecoder(1024, 4096)
    feed(decoder, stream)
    server_receive = ReceiveState(EXAMPLE["k1"])
    opened = [server_receive.open(header, body) for _type, header, body in decoder.frames()]
    assert opened == [b"", EXAMPLE["plaintext 4"]]
    assert ReceiveState(EXAMPLE["k2"]).open(EXAMPLE["frame 5"][:5], EXAMPLE["frame 5"][5:]) == EXAMPLE["plaintext 5"]


def test_frame_headers_match_their_bodies():
    for name, frame_type in [
        ("frame 1", FrameType.HANDSHAKE_INIT),
        ("frame 2", FrameType.HANDSHAKE_RESPONSE),
        ("frame 3", FrameType.DATA),
        ("frame 4", FrameType.DATA),
        ("frame 5", FrameType.DATA),
    ]:
        frame = EXAMPLE[name]
        assert HEADER.unpack(frame[:5]) == (len(frame) - 5, frame_type), name


def test_the_reply_is_what_the_echo_responder_builds():
    request, reply = EXAMPLE["plaintext 4"], EXAMPLE["plaintext 5"]
    assert echo_reply_for(request, SERVER_ADDRESS.packed) == reply


# -- the real session code puts exactly these frames on the wire --------------------------


@pytest.fixture
def fixed_handshake(monkeypatch):
    """session.py with the example's ephemeral keys and clock; deadlines keep the real clock."""
    monkeypatch.setattr(session, "Initiator", functools.partial(Initiator, ephemeral_private=CLIENT_EPHEMERAL))
    monkeypatch.setattr(session, "Responder", functools.partial(Responder, ephemeral_private=SERVER_EPHEMERAL))
    monkeypatch.setattr(session, "time", types.SimpleNamespace(time_ns=lambda: UNIX_TIME_NS, monotonic=time.monotonic))


def in_thread(fn, *args) -> concurrent.futures.Future:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    future = executor.submit(fn, *args)
    executor.shutdown(wait=False)
    return future


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def test_real_client_sends_frames_1_3_and_4(fixed_handshake):
    profile = Profile("alice", CLIENT_STATIC, public_key(SERVER_STATIC), PSK, "127.0.0.1:55555")
    client_sock, wire = socket.socketpair()
    with client_sock, wire:
        wire.settimeout(TIMEOUT)
        client = in_thread(client_handshake, client_sock, profile)
        assert recv_exactly(wire, len(EXAMPLE["frame 1"])) == EXAMPLE["frame 1"]
        wire.sendall(EXAMPLE["frame 2"])
        assert recv_exactly(wire, len(EXAMPLE["frame 3"])) == EXAMPLE["frame 3"]
        settings, link = client.result(TIMEOUT)
        assert settings == example_settings()
        link.send_packets([EXAMPLE["plaintext 4"]])
        assert recv_exactly(wire, len(EXAMPLE["frame 4"])) == EXAMPLE["frame 4"]


def test_real_server_answers_with_frame_2_and_accepts_frames_3_and_4(fixed_handshake):
    record = ClientRecord("alice", public_key(CLIENT_STATIC), PSK, CLIENT_ADDRESS.ip)
    confirmed: list[bytes] = []

    def confirm_timestamp(_key: bytes, timestamp: bytes) -> bool:
        confirmed.append(timestamp)
        return True

    admission = Admission(
        SERVER_STATIC,
        lambda key: record if key == record.public_key else None,
        lambda _key, _timestamp: True,
        confirm_timestamp,
        lambda _record, _hello: example_settings(),
    )
    wire, server_sock = socket.socketpair()
    with wire, server_sock:
        wire.settimeout(TIMEOUT)
        server = in_thread(server_handshake, server_sock, admission)
        wire.sendall(EXAMPLE["frame 1"])
        assert recv_exactly(wire, len(EXAMPLE["frame 2"])) == EXAMPLE["frame 2"]
        assert not server.done() and not confirmed  # nothing happens before the confirmation
        wire.sendall(EXAMPLE["frame 3"] + EXAMPLE["frame 4"])
        got_record, settings, link = server.result(TIMEOUT)
        assert (got_record, settings) == (record, example_settings())
        assert confirmed == [EXAMPLE["hello"][:12]]

        received: list[bytes] = []

        def deliver(packet: memoryview) -> None:
            received.append(bytes(packet))
            link.close()

        link.sock.settimeout(TIMEOUT)
        with pytest.raises(LinkClosed):
            link.receive_packets(deliver)
        assert received == [EXAMPLE["plaintext 4"]]  # the confirmation is not delivered as a packet

    wire, server_sock = socket.socketpair()  # the server's direction, on a fresh session
    with wire, server_sock:
        wire.settimeout(TIMEOUT)
        server = in_thread(server_handshake, server_sock, admission)
        wire.sendall(EXAMPLE["frame 1"])
        recv_exactly(wire, len(EXAMPLE["frame 2"]))
        wire.sendall(EXAMPLE["frame 3"])
        _record, _settings, link = server.result(TIMEOUT)
        link.send_packets([EXAMPLE["plaintext 5"]])
        assert recv_exactly(wire, len(EXAMPLE["frame 5"])) == EXAMPLE["frame 5"]
