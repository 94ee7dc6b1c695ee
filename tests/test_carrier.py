"""carrier.py: TLS 1.3 with ALPN and SNI over a socket pair; both directions at once from two
threads each way; the pushback of bytes read early; certificates made by init."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from carrier import (
    TlsCarrier,
    TlsEndpoint,
    TlsError,
    certificate_names,
    client_handshake_tls,
    make_self_signed,
    server_context,
)

SERVER_NAME = "www.example.test"


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = make_self_signed(SERVER_NAME)
    directory = tmp_path_factory.mktemp("cert")
    (directory / "c.pem").write_bytes(cert)
    (directory / "k.pem").write_bytes(key)
    return str(directory / "c.pem"), str(directory / "k.pem")


def server_side(sock: socket.socket, context: ssl.SSLContext, received: bytes = b"") -> TlsCarrier:
    """The server's TLS handshake, driven by hand as the port-share front does."""
    endpoint = TlsEndpoint(context, server_side=True)
    buf = bytearray(65536)
    while True:
        done = endpoint.handshake()
        out = endpoint.outgoing.read()
        if out:
            sock.sendall(out)
        if done:
            return TlsCarrier(sock, endpoint, received)
        count = sock.recv_into(buf)
        assert count, "client closed during the handshake"
        endpoint.incoming.write(buf[:count])


def connected_pair(cert_files: tuple[str, str], sni_seen: list | None = None) -> tuple[TlsCarrier, TlsCarrier]:
    a, b = socket.socketpair()
    context = server_context(*cert_files)
    if sni_seen is not None:
        context.sni_callback = lambda _obj, name, _ctx: sni_seen.append(name)
    result: list[TlsCarrier] = []
    thread = threading.Thread(target=lambda: result.append(server_side(b, context)))
    thread.start()
    client = client_handshake_tls(a, SERVER_NAME, 5)
    thread.join(5)
    return client, result[0]


def test_tls13_alpn_and_sni(cert_files: tuple[str, str]) -> None:
    sni: list[str] = []
    client, server = connected_pair(cert_files, sni)
    assert client.endpoint.version == server.endpoint.version == "TLSv1.3"
    assert client.endpoint.alpn == server.endpoint.alpn == "http/1.1"
    assert sni == [SERVER_NAME]
    client.close()
    server.close()


def test_both_directions_at_once_two_threads_each_way(cert_files: tuple[str, str]) -> None:
    """The data path's shape: per end, one thread sends while another receives; 8 MB each way."""
    client, server = connected_pair(cert_files)
    payloads = {"up": os.urandom(8 << 20), "down": os.urandom(8 << 20)}
    digests: dict[str, str] = {}

    def send(carrier: TlsCarrier, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(data), 300_000):  # odd sizes: records split across sends
            carrier.sendall(view[start : start + 300_000])

    def receive(carrier: TlsCarrier, name: str, size: int) -> None:
        digest, total, buf = hashlib.sha256(), 0, bytearray(1 << 20)
        while total < size:
            count = carrier.recv_into(buf)
            assert count
            digest.update(memoryview(buf)[:count])
            total += count
        digests[name] = digest.hexdigest()

    threads = [
        threading.Thread(target=send, args=(client, payloads["up"])),
        threading.Thread(target=send, args=(server, payloads["down"])),
        threading.Thread(target=receive, args=(server, "up", len(payloads["up"]))),
        threading.Thread(target=receive, args=(client, "down", len(payloads["down"]))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert digests == {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    client.close()
    server.close()


def test_bytes_read_early_come_first(cert_files: tuple[str, str]) -> None:
    a, b = socket.socketpair()
    context = server_context(*cert_files)
    result: list[TlsCarrier] = []
    thread = threading.Thread(target=lambda: result.append(server_side(b, context, b"early ")))
    thread.start()
    client = client_handshake_tls(a, SERVER_NAME, 5)
    thread.join(5)
    client.sendall(b"late")
    buf = bytearray(100)
    got = b""
    while len(got) < 10:
        count = result[0].recv_into(buf)
        got += bytes(buf[:count])
    assert got == b"early late"
    assert result[0].first_bytes == b"early "


def test_close_notify_and_plain_eof_end_the_stream(cert_files: tuple[str, str]) -> None:
    client, server = connected_pair(cert_files)
    client.shutdown(socket.SHUT_RDWR)  # sends close_notify
    assert server.recv_into(bytearray(10)) == 0
    client, server = connected_pair(cert_files)
    client.sock.shutdown(socket.SHUT_WR)  # TCP FIN without close_notify
    assert server.recv_into(bytearray(10)) == 0


def test_a_forged_record_is_an_error(cert_files: tuple[str, str]) -> None:
    client, server = connected_pair(cert_files)
    client.sock.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # application data, wrong tag
    with pytest.raises(OSError, match="TLS record rejected"):
        server.recv_into(bytearray(100))


def test_client_handshake_against_a_non_tls_server() -> None:
    a, b = socket.socketpair()
    b.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    b.close()
    with pytest.raises(TlsError):
        client_handshake_tls(a, SERVER_NAME, 5)


def test_self_signed_certificate_names_and_loads(cert_files: tuple[str, str]) -> None:
    assert certificate_names(Path(cert_files[0]).read_bytes()) == [SERVER_NAME]
    server_context(*cert_files)  # the pair matches


def test_nonblocking_send_keeps_the_stream_when_the_socket_is_full(cert_files: tuple[str, str]) -> None:
    """As PeerLink.send_now uses it: what ``send`` did not take is offered again, first, with more
    behind it; a blocking ``sendall`` finishes. The reader must see exactly the stream offered."""
    client, server = connected_pair(cert_files)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = os.urandom(4 << 20)
    got = bytearray()

    def read_all() -> None:
        buf = bytearray(1 << 16)
        while len(got) < len(stream):
            count = server.recv_into(buf)
            assert count
            got.extend(buf[:count])

    reader = threading.Thread(target=read_all)
    reader.start()
    offered, unsent, partial = 0, b"", 0
    while offered < len(stream):
        chunk = unsent + stream[offered : offered + 100_000]
        offered = min(offered + 100_000, len(stream))
        taken = client.send(chunk, socket.MSG_DONTWAIT)
        partial += taken < len(chunk)
        unsent = chunk[taken:]
    client.sendall(unsent)
    reader.join(30)
    assert partial, "the socket never refused: the test did not test the refusal"
    assert hashlib.sha256(got).digest() == hashlib.sha256(stream).digest()
