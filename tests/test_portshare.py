"""portshare.py: the decision on a TLS port (tunlib client or web visitor) as a pure state
machine, fed by an in-memory TLS client; the minimal web answers; the bounded relay."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from carrier import TlsEndpoint, client_context
from framing import FirstFrame, FrameType, encode_frame, encode_init_frame
from framing import classify_first_frame as classify_for_server
from portshare import BAD_REQUEST, NOT_FOUND, Fallback, Outcome, TlsFront, relay

SERVER_PUBLIC = bytes(range(32))
MESSAGE_1 = encode_init_frame(SERVER_PUBLIC, bytes(range(160)))
classify_first_frame = functools.partial(classify_for_server, SERVER_PUBLIC)


def tls_client_says(front: TlsFront, *messages: bytes) -> TlsEndpoint:
    """Run a TLS client against ``front`` in memory, then send each message as its own record."""
    client = TlsEndpoint(client_context(), server_side=False, server_name="www.example.test")
    for _ in range(10):
        done = client.handshake()
        out = client.outgoing.read()
        if out:
            front.receive(out)
        client.incoming.write(front.outgoing())
        if done and front.tls_up:
            break
    for message in messages:
        client.ssl.write(message)
        front.receive(client.outgoing.read())
    return client


def test_what_the_front_calls_tunlib() -> None:
    """The front uses the handshake's own first-frame check (mac1): a message 1 for another server
    is a web visitor like any other."""
    assert classify_first_frame(MESSAGE_1[:50]) is FirstFrame.INCOMPLETE
    assert classify_first_frame(MESSAGE_1) is FirstFrame.TUNLIB
    assert classify_first_frame(encode_init_frame(bytes(32), bytes(range(160)))) is FirstFrame.FOREIGN
    assert classify_first_frame(encode_frame(FrameType.DATA, bytes(176))) is FirstFrame.FOREIGN


def test_tunlib_message_1_inside_tls(context) -> None:
    front = TlsFront(context, classify_first_frame)
    tls_client_says(front, MESSAGE_1[:40], MESSAGE_1[40:])
    assert front.outcome is Outcome.TUNLIB
    assert front.received == MESSAGE_1


def test_https_request_is_a_web_visitor(context) -> None:
    front = TlsFront(context, classify_first_frame)
    tls_client_says(front, b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
    assert front.outcome is Outcome.WEB_TLS
    assert front.received.startswith(b"GET / HTTP/1.1\r\n")


def test_not_tls_at_all_goes_to_the_web_raw(context) -> None:
    front = TlsFront(context, classify_first_frame)
    front.receive(b"GET / HTTP/1.0\r\n\r\n")
    assert front.outcome is Outcome.WEB_CLEAR
    assert front.received == b"GET / HTTP/1.0\r\n\r\n"
    assert front.outgoing() == b""


def test_garbage_after_a_handshake_byte_fails_like_tls(context) -> None:
    front = TlsFront(context, classify_first_frame)
    front.receive(b"\x16" + os.urandom(300))
    assert front.outcome is Outcome.CLOSE
    assert "TLS" in front.why


def test_silence_before_and_after_tls(context) -> None:
    front = TlsFront(context, classify_first_frame)
    front.timed_out()
    assert front.outcome is Outcome.CLOSE
    front = TlsFront(context, classify_first_frame)
    tls_client_says(front)
    assert front.tls_up and front.outcome is Outcome.PENDING
    front.timed_out()
    assert front.outcome is Outcome.WEB_TLS
    assert front.received == b""


def test_half_message_then_close_is_a_visitor(context) -> None:
    front = TlsFront(context, classify_first_frame)
    tls_client_says(front, MESSAGE_1[:40])
    front.end_of_stream()
    assert front.outcome is Outcome.WEB_TLS


def test_minimal_answers_are_well_formed_http() -> None:
    for answer in (NOT_FOUND, BAD_REQUEST):
        head, body = answer.split(b"\r\n\r\n", 1)
        length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:")).split()[1])
        assert length == len(body)


def test_no_fallback_answers_400_to_non_tls() -> None:
    visitor, server_end = socket.socketpair()
    Fallback(None).serve(server_end, b"\x00garbage", where="test")
    assert visitor.recv(4096) == BAD_REQUEST
    assert visitor.recv(10) == b""


def test_relay_passes_half_closes_and_ends() -> None:
    """The visitor's request and FIN reach the web server; its answer comes back; both close."""
    visitor, front_end = socket.socketpair()
    web_end, web = socket.socketpair()
    visitor.sendall(b"GET / HTTP/1.0\r\n\r\n")
    visitor.shutdown(socket.SHUT_WR)

    def web_server() -> None:
        request = b""
        while chunk := web.recv(100):
            request += chunk
        web.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + request)
        web.close()

    thread = threading.Thread(target=web_server)
    thread.start()
    relay(front_end, web_end, idle=5, deadline=time.monotonic() + 10)
    thread.join(5)
    assert visitor.recv(4096) == b"HTTP/1.0 200 OK\r\n\r\nGET / HTTP/1.0\r\n\r\n"


def test_relay_ends_when_idle() -> None:
    _visitor, front_end = socket.socketpair()
    web_end, _web = socket.socketpair()
    start = time.monotonic()
    relay(front_end, web_end, idle=0.3, deadline=time.monotonic() + 10)
    assert 0.2 < time.monotonic() - start < 3


@given(st.lists(st.binary(min_size=1, max_size=600), max_size=4))
def test_the_front_survives_any_bytes(context, chunks: list[bytes]) -> None:
    """Whatever a stranger sends, in whatever pieces: an outcome or a wait, never an exception."""
    front = TlsFront(context, classify_first_frame)
    for chunk in chunks:
        front.receive(chunk)
        front.outgoing()
    front.timed_out()
    assert front.outcome in (Outcome.WEB_CLEAR, Outcome.WEB_TLS, Outcome.CLOSE)
    if front.outcome is Outcome.WEB_CLEAR:
        assert front.received == chunks[0]
