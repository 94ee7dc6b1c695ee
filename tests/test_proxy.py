"""proxy.py: proxy URLs, the HTTP CONNECT exchange and SOCKS5 messages, byte by byte."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import (
    ConnectResponse,
    ProxyError,
    ProxyURL,
    bypasses_proxy,
    connect_refusal,
    dial_via_proxy,
    encode_connect,
    encode_socks_address,
    encode_socks_connect,
    encode_socks_greeting,
    encode_socks_userpass,
    parse_connect_response,
    parse_proxy_url,
    parse_socks_auth_reply,
    parse_socks_method,
    parse_socks_reply,
    proxy_from_environment,
    socks_reply_length,
)

secrets_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


# -- URLs -----------------------------------------------------------------------------------------


def test_parse_http_proxy_with_credentials() -> None:
    url = parse_proxy_url("http://alice:s%40cret@proxy.example:3128")
    assert url == ProxyURL("http", "proxy.example", 3128, "alice", "s@cret")


def test_bare_host_port_means_http_and_default_port_is_curls() -> None:
    assert parse_proxy_url("proxy.example:8080") == ProxyURL("http", "proxy.example", 8080)
    assert parse_proxy_url("socks5h://proxy.example").port == 1080


def test_ipv6_proxy_host() -> None:
    url = parse_proxy_url("socks5://[2001:db8::1]:1080")
    assert (url.host, url.port) == ("2001:db8::1", 1080)
    assert url.redacted() == "socks5://[2001:db8::1]:1080"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("https://p:443", "not supported"),
        ("ftp://p:21", "not supported"),
        ("http://p:99999", "bad proxy URL"),
        ("http://:3128", "no host"),
        ("http://p:3128/path", "nothing after the port"),
    ],
)
def test_bad_urls_are_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ProxyError, match=fragment):
        parse_proxy_url(text)


def test_bad_url_errors_never_echo_a_password() -> None:
    with pytest.raises(ProxyError) as info:
        parse_proxy_url("http://alice:hunter2@p:99999")
    assert "hunter2" not in str(info.value)


@given(user=secrets_text, password=secrets_text)
def test_credentials_round_trip_and_never_show(user: str, password: str) -> None:
    quote = urllib.parse.quote
    url = parse_proxy_url(f"http://{quote(user, safe='')}:{quote(password, safe='')}@proxy.example:3128")
    assert (url.username, url.password) == (user, password)
    assert url.redacted() == "http://***@proxy.example:3128"
    assert repr(url) == "ProxyURL(http://***@proxy.example:3128)"


def test_no_proxy_matching_like_curl() -> None:
    assert bypasses_proxy("vpn.example.com", "example.com")
    assert bypasses_proxy("vpn.example.com", "localhost, .example.com")
    assert bypasses_proxy("vpn.example.com", "*")
    assert bypasses_proxy("192.0.2.1", "192.0.2.1")
    assert not bypasses_proxy("vpn.example.com", "ample.com")
    assert not bypasses_proxy("vpn.example.com", "")


def test_environment_lowercase_first_and_no_proxy() -> None:
    env = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"}
    assert proxy_from_environment(env, "vpn.example") == "http://low:1"
    assert proxy_from_environment({"HTTPS_PROXY": "http://up:2"}, "vpn.example") == "http://up:2"
    assert proxy_from_environment({**env, "no_proxy": "vpn.example"}, "vpn.example") is None
    assert proxy_from_environment({"http_proxy": "http://plain:3"}, "vpn.example") is None


# -- HTTP CONNECT ---------------------------------------------------------------------------------


def test_connect_request_bytes_with_rfc7617_example_credentials() -> None:
    assert encode_connect("vpn.example", 443, "Aladdin", "open sesame") == (
        b"CONNECT vpn.example:443 HTTP/1.1\r\n"
        b"Host: vpn.example:443\r\n"
        b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
    )
    assert (
        encode_connect("2001:db8::1", 443) == b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"
    )


@given(user=secrets_text, password=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_connect_basic_token_decodes_to_the_credentials(user: str, password: str) -> None:
    request = encode_connect("h", 1, user, password).decode()
    token = next(line for line in request.split("\r\n") if line.startswith("Proxy-Authorization: Basic "))
    assert base64.b64decode(token.split()[-1]).decode() == f"{user}:{password}"


@given(
    status=st.integers(100, 999),
    reason=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    headers=st.lists(
        st.tuples(st.from_regex(r"[A-Za-z-]{1,12}", fullmatch=True), st.from_regex(r"[ -~]{0,20}", fullmatch=True)),
        max_size=5,
    ),
    tail=st.binary(max_size=20),
)
def test_connect_response_parses_at_any_split(status: int, reason: str, headers: list, tail: bytes) -> None:
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    data = head.encode() + tail
    for cut in range(len(head)):
        assert parse_connect_response(data[:cut]) is None
    response = parse_connect_response(data)
    assert response == ConnectResponse(status, reason, len(head))


def test_connect_response_rejects_non_http_and_endless_heads() -> None:
    with pytest.raises(ProxyError, match="did not answer CONNECT with HTTP"):
        parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ProxyError, match="longer than"):
        parse_connect_response(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000)


def test_refusal_messages_name_the_cause_without_credentials() -> None:
    with_creds = parse_proxy_url("http://alice:hunter2@p:3128")
    line = connect_refusal(with_creds, "vpn:443", ConnectResponse(407, "Proxy Authentication Required", 0))
    assert line == (
        "proxy http://***@p:3128 refused CONNECT to vpn:443: 407 Proxy Authentication Required "
        "(wrong or missing user:password in the proxy URL)"
    )
    bare = parse_proxy_url("http://p:3128")
    assert "it needs user:password@" in connect_refusal(bare, "vpn:443", ConnectResponse(407, "", 0))
    assert "forbid this host or port" in connect_refusal(bare, "vpn:443", ConnectResponse(403, "Forbidden", 0))


# -- SOCKS5 ---------------------------------------------------------------------------------------


def test_socks_greeting_and_method_choice() -> None:
    assert encode_socks_greeting(False) == b"\x05\x01\x00"
    assert encode_socks_greeting(True) == b"\x05\x02\x00\x02"
    assert parse_socks_method(b"\x05\x02", True) == 2
    with pytest.raises(ProxyError, match="needs user:password@"):
        parse_socks_method(b"\x05\x02", False)
    with pytest.raises(ProxyError, match="none of our authentication methods"):
        parse_socks_method(b"\x05\xff", True)
    with pytest.raises(ProxyError, match="SOCKS5 server"):
        parse_socks_method(b"\x04\x00", True)


def test_socks_userpass_rfc1929() -> None:
    assert encode_socks_userpass("bob", "pw") == b"\x01\x03bob\x02pw"
    parse_socks_auth_reply(b"\x01\x00")
    with pytest.raises(ProxyError, match="refused our user name and password"):
        parse_socks_auth_reply(b"\x01\x01")


def test_socks_connect_requests() -> None:
    assert encode_socks_connect("192.0.2.1", 443) == b"\x05\x01\x00\x01\xc0\x00\x02\x01\x01\xbb"
    assert encode_socks_connect("vpn.example", 443) == b"\x05\x01\x00\x03\x0bvpn.example\x01\xbb"
    assert encode_socks_connect("2001:db8::1", 80)[3] == 4


@pytest.mark.parametrize(("code", "text"), [(2, "not allowed by ruleset"), (5, "connection refused"), (42, "code 42")])
def test_socks_reply_errors(code: int, text: str) -> None:
    reply = bytes([5, code, 0]) + encode_socks_address("0.0.0.0", 0)
    with pytest.raises(ProxyError, match=text):
        parse_socks_reply(reply)


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    ),
    port=st.integers(0, 65535),
    tail=st.binary(max_size=8),
)
def test_socks_reply_length_and_round_trip(host: str, port: int, tail: bytes) -> None:
    reply = b"\x05\x00\x00" + encode_socks_address(host, port)
    data = reply + tail
    for cut in range(5):
        assert socks_reply_length(data[:cut]) is None
    assert socks_reply_length(data) == len(reply)
    assert parse_socks_reply(reply) == (host, port)


# -- dialing --------------------------------------------------------------------------------------


def fake_proxy(answer: bytes) -> tuple[socket.socket, list[bytes]]:
    """A one-shot loopback 'proxy' that records the request head and sends ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            seen.append(data)
            conn.sendall(answer)
            with contextlib.suppress(OSError):
                conn.recv(1)  # hold the connection until the client closes

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def test_dial_leaves_the_servers_bytes_in_the_socket() -> None:
    listener, seen = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\nSERVER-FIRST")
    with listener:
        url = parse_proxy_url(f"http://u:p@127.0.0.1:{listener.getsockname()[1]}")
        with dial_via_proxy(url, ["127.0.0.1"], "vpn.example", 443, 5) as sock:
            assert sock.recv(100) == b"SERVER-FIRST"
    assert seen[0].startswith(b"CONNECT vpn.example:443 HTTP/1.1\r\n")


def test_dial_reports_407_as_one_line() -> None:
    listener, _ = fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    with listener:
        url = parse_proxy_url(f"http://u:hunter2@127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(ProxyError, match="407 Proxy Authentication Required") as info:
            dial_via_proxy(url, ["127.0.0.1"], "vpn.example", 443, 5)
    assert "hunter2" not in str(info.value)


def test_dial_unreachable_proxy() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    url = parse_proxy_url(f"http://127.0.0.1:{port}")
    with pytest.raises(ProxyError, match=rf"proxy http://127.0.0.1:{port} is unreachable: Connection refused"):
        dial_via_proxy(url, ["127.0.0.1"], "vpn.example", 443, 5)


def fake_socks5(reply_code: int) -> tuple[socket.socket, list[bytes]]:
    """A one-shot loopback SOCKS5 server wanting user/pass; records the auth and CONNECT messages."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            seen.append(conn.recv(100))  # greeting
            conn.sendall(b"\x05\x02")
            seen.append(conn.recv(600))  # user/pass
            conn.sendall(b"\x01\x00")
            seen.append(conn.recv(300))  # CONNECT
            conn.sendall(bytes([5, reply_code, 0]) + encode_socks_address("192.0.2.99", 4242) + b"SERVER-FIRST")
            with contextlib.suppress(OSError):
                conn.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def test_socks5h_dial_with_credentials() -> None:
    listener, seen = fake_socks5(0)
    with listener:
        url = parse_proxy_url(f"socks5h://bob:pw@127.0.0.1:{listener.getsockname()[1]}")
        with dial_via_proxy(url, ["127.0.0.1"], "vpn.example", 443, 5) as sock:
            assert sock.recv(100) == b"SERVER-FIRST"
    assert seen == [b"\x05\x02\x00\x02", b"\x01\x03bob\x02pw", b"\x05\x01\x00\x03\x0bvpn.example\x01\xbb"]


def test_socks5_refusal_is_one_line() -> None:
    listener, _ = fake_socks5(5)
    with listener:
        url = parse_proxy_url(f"socks5h://bob:pw@127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(ProxyError, match="the SOCKS5 proxy could not connect: connection refused"):
            dial_via_proxy(url, ["127.0.0.1"], "vpn.example", 443, 5)
