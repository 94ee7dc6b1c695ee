"""Reaching the server through a proxy: HTTP CONNECT (with Basic authentication) and SOCKS5.

Many company and school networks reach the web only through a proxy. Both kinds turn one TCP
connection to the proxy into a byte pipe to the server, after a short exchange:

* HTTP (RFC 9110 section 9.3.6): the client sends ``CONNECT host:port HTTP/1.1`` plus headers; the
  proxy answers with a status line and headers; any 2xx means the pipe is open.
* SOCKS5 (RFC 1928, with RFC 1929 username/password): greeting, method choice, optional
  authentication, then a CONNECT request and a reply carrying a status code.

The top half of this module is pure: it parses proxy URLs and encodes and parses each message,
so tests drive it with bytes. :func:`dial_via_proxy` at the bottom does the socket I/O. Credentials
never appear in any message or log line this module makes: a proxy is shown as
:meth:`ProxyURL.redacted`.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from errors import UserError
from happy_eyeballs import connect_first

DEFAULT_PROXY_PORT = 1080
"""curl's default port for a proxy URL without one."""
SCHEMES = ("http", "socks5", "socks5h")
"""``socks5`` resolves the server's name locally, ``socks5h`` lets the proxy resolve it (as curl)."""
MAX_RESPONSE_HEAD = 16 * 1024
"""An HTTP proxy's answer to CONNECT (status line and headers) may be at most this long."""
MAX_REASON_SHOWN = 80
PROXY_ENV_VARS = ("https_proxy", "HTTPS_PROXY")
"""Where curl looks for the proxy of an https:// URL (tunlib's carrier is HTTPS-like)."""
NO_PROXY_ENV_VARS = ("no_proxy", "NO_PROXY")

SOCKS_VERSION = 5
SOCKS_AUTH_NONE, SOCKS_AUTH_USERPASS, SOCKS_AUTH_NO_ACCEPTABLE = 0x00, 0x02, 0xFF
SOCKS_USERPASS_VERSION = 1
SOCKS_CMD_CONNECT = 1
SOCKS_ATYP_IPV4, SOCKS_ATYP_DOMAIN, SOCKS_ATYP_IPV6 = 1, 3, 4
SOCKS_REPLY_MESSAGES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
"""RFC 1928 section 6, the REP field."""


class ProxyError(UserError):
    """The proxy refused, failed, or spoke something we do not understand; one line, no credentials."""


# -- proxy URLs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyURL:
    """A parsed ``http://[user:pass@]HOST:PORT`` or ``socks5[h]://[user:pass@]HOST:PORT``."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL as it may be shown: credentials replaced by ``***``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{'***@' if self.username is not None else ''}{host}:{self.port}"

    def __repr__(self) -> str:  # a traceback or debug print must not leak the password either
        return f"ProxyURL({self.redacted()})"


def parse_proxy_url(text: str) -> ProxyURL:
    """Parse a proxy URL; a bare ``HOST:PORT`` means ``http://`` (as curl). Errors never echo the URL,
    which may hold a password."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ProxyError("bad proxy URL: expected SCHEME://[USER:PASSWORD@]HOST:PORT") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ProxyError(f"proxy scheme {scheme!r} is not supported: use http://, socks5:// or socks5h://")
    if not parts.hostname:
        raise ProxyError("bad proxy URL: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError("bad proxy URL: expected SCHEME://[USER:PASSWORD@]HOST:PORT and nothing after the port")
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    too_long = (
        username is not None
        and password is not None
        and not (0 < len(username.encode()) <= 255 and len(password.encode()) <= 255)
    )
    if scheme.startswith("socks5") and too_long:
        raise ProxyError("SOCKS5 user name must be 1-255 bytes and password at most 255 bytes")
    return ProxyURL(scheme, parts.hostname, port or DEFAULT_PROXY_PORT, username, password)


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """Whether ``host`` matches a ``no_proxy`` list as curl reads it: comma-separated names, ``*`` for
    all, a name matching itself and its subdomains (a leading dot is ignored), an IP itself."""
    host = host.strip("[]").lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower().lstrip(".").rstrip(".")
        if entry and (entry in ("*", host) or host.endswith("." + entry)):
            return True
    return False


def proxy_from_environment(environ: Mapping[str, str], host: str) -> str | None:
    """The proxy curl would use for ``https://host``: ``https_proxy``, else ``HTTPS_PROXY``, unless
    ``no_proxy``/``NO_PROXY`` names the host."""
    url = next((environ[name] for name in PROXY_ENV_VARS if environ.get(name)), None)
    if url is None:
        return None
    no_proxy = next((environ[name] for name in NO_PROXY_ENV_VARS if environ.get(name)), "")
    return None if bypasses_proxy(host, no_proxy) else url


# -- HTTP CONNECT ---------------------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode_connect(host: str, port: int, username: str | None = None, password: str | None = None) -> bytes:
    """The CONNECT request for ``host:port``, with Basic credentials (RFC 7617, UTF-8) if given."""
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class ConnectResponse:
    status: int
    reason: str
    head_len: int
    """Bytes of the response head, up to and including the blank line; the pipe starts after it."""


def response_head_length(data: bytes) -> int | None:
    """Length of a complete response head at the start of ``data``, or None if it is not all there.

    Raises :class:`ProxyError` once more than MAX_RESPONSE_HEAD bytes came without an end.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD + 4)
    if end < 0:
        if len(data) >= MAX_RESPONSE_HEAD + 4:
            raise ProxyError(f"the proxy's answer to CONNECT is longer than {MAX_RESPONSE_HEAD} bytes")
        return None
    return end + 4


def parse_connect_response(data: bytes) -> ConnectResponse | None:
    """Parse the proxy's answer to CONNECT from the start of ``data``; None if it is incomplete."""
    head_len = response_head_length(data)
    if head_len is None:
        return None
    status_line = data[: data.index(b"\r\n")]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
        raise ProxyError("the proxy did not answer CONNECT with HTTP (is it an HTTP proxy?)")
    reason = parts[2].decode("ascii", "replace") if len(parts) == 3 else ""
    return ConnectResponse(int(parts[1]), printable(reason), head_len)


def printable(text: str) -> str:
    """Text from the network made safe for one log line: printable ASCII, bounded length."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:MAX_REASON_SHOWN]


def connect_refusal(proxy: ProxyURL, target: str, response: ConnectResponse) -> str:
    """The one-line error for a non-2xx answer to CONNECT."""
    what = f"proxy {proxy.redacted()} refused CONNECT to {target}: {response.status} {response.reason}".rstrip()
    if response.status in (401, 407):  # 407 is the standard; tinyproxy, for one, answers 401
        hint = "wrong or missing user:password in the proxy URL" if proxy.username else "it needs user:password@"
        return f"{what} ({hint})"
    if response.status == 403:
        return f"{what} (the proxy's rules forbid this host or port)"
    return what


# -- SOCKS5 ---------------------------------------------------------------------------------------


def encode_socks_greeting(with_credentials: bool) -> bytes:
    """Offer "no authentication", and username/password too when we have credentials."""
    methods = [SOCKS_AUTH_NONE, SOCKS_AUTH_USERPASS] if with_credentials else [SOCKS_AUTH_NONE]
    return bytes([SOCKS_VERSION, len(methods), *methods])


def parse_socks_method(data: bytes, with_credentials: bool) -> int:
    """The method the proxy chose (2 bytes); an error if it chose none we offered."""
    if len(data) != 2 or data[0] != SOCKS_VERSION:
        raise ProxyError("the proxy did not answer like a SOCKS5 server")
    offered = (SOCKS_AUTH_NONE, SOCKS_AUTH_USERPASS) if with_credentials else (SOCKS_AUTH_NONE,)
    if data[1] not in offered:
        need = "" if with_credentials else ": it needs user:password@ in the proxy URL"
        raise ProxyError(f"the SOCKS5 proxy accepts none of our authentication methods{need}")
    return data[1]


def encode_socks_userpass(username: str, password: str) -> bytes:
    """RFC 1929: version 1, then length-prefixed user name and password."""
    user, secret = username.encode(), password.encode()
    if not 0 < len(user) <= 255 or len(secret) > 255:
        raise ProxyError("SOCKS5 user name must be 1-255 bytes and password at most 255 bytes")
    return bytes([SOCKS_USERPASS_VERSION, len(user)]) + user + bytes([len(secret)]) + secret


def parse_socks_auth_reply(data: bytes) -> None:
    """RFC 1929 reply (2 bytes): status 0 is success; anything else means wrong credentials."""
    if len(data) != 2 or data[0] != SOCKS_USERPASS_VERSION:
        raise ProxyError("the SOCKS5 proxy sent a malformed authentication reply")
    if data[1] != 0:
        raise ProxyError("the SOCKS5 proxy refused our user name and password")


def encode_socks_address(host: str, port: int) -> bytes:
    """ATYP, address and port as SOCKS5 writes them in requests and replies."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) <= 255:
            raise ProxyError(f"host name too long for SOCKS5: {host[:64]}") from None
        return bytes([SOCKS_ATYP_DOMAIN, len(name)]) + name + port.to_bytes(2, "big")
    atyp = SOCKS_ATYP_IPV4 if ip.version == 4 else SOCKS_ATYP_IPV6
    return bytes([atyp]) + ip.packed + port.to_bytes(2, "big")


def encode_socks_connect(host: str, port: int) -> bytes:
    return bytes([SOCKS_VERSION, SOCKS_CMD_CONNECT, 0]) + encode_socks_address(host, port)


def socks_reply_length(data: bytes) -> int | None:
    """Length of the CONNECT reply at the start of ``data`` (it depends on the address type),
    or None if too few bytes arrived to tell."""
    if len(data) < 5:
        return None
    if data[0] != SOCKS_VERSION:
        raise ProxyError("the SOCKS5 proxy sent a malformed reply")
    atyp = data[3]
    if atyp == SOCKS_ATYP_IPV4:
        return 4 + 4 + 2
    if atyp == SOCKS_ATYP_IPV6:
        return 4 + 16 + 2
    if atyp == SOCKS_ATYP_DOMAIN:
        return 4 + 1 + data[4] + 2
    raise ProxyError(f"the SOCKS5 proxy sent an unknown address type {atyp}")


def parse_socks_reply(data: bytes) -> tuple[str, int]:
    """Check a complete CONNECT reply; return the address the proxy bound (informative only)."""
    if socks_reply_length(data) != len(data):
        raise ProxyError("the SOCKS5 proxy sent a malformed reply")
    if data[1] != 0:
        message = SOCKS_REPLY_MESSAGES.get(data[1], f"error code {data[1]}")
        raise ProxyError(f"the SOCKS5 proxy could not connect: {message}")
    atyp, port = data[3], int.from_bytes(data[-2:], "big")
    if atyp == SOCKS_ATYP_DOMAIN:
        return data[5:-2].decode("ascii", "replace"), port
    return str(ipaddress.ip_address(data[4:-2])), port


# -- I/O ------------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, count: int, deadline: float, proxy: ProxyURL) -> bytes:
    data = bytearray()
    while len(data) < count:
        data += _recv(sock, count - len(data), deadline, proxy, 0)
    return bytes(data)


def _recv(sock: socket.socket, limit: int, deadline: float, proxy: ProxyURL, flags: int) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ProxyError(f"proxy {proxy.redacted()} did not answer in time")
    sock.settimeout(remaining)
    try:
        chunk = sock.recv(limit, flags)
    except TimeoutError:
        raise ProxyError(f"proxy {proxy.redacted()} did not answer in time") from None
    except OSError as exc:
        raise ProxyError(f"connection to proxy {proxy.redacted()} failed: {exc.strerror or exc}") from None
    if not chunk:
        raise ProxyError(f"proxy {proxy.redacted()} closed the connection")
    return chunk


def _http_connect(sock: socket.socket, proxy: ProxyURL, host: str, port: int, deadline: float) -> None:
    sock.sendall(encode_connect(host, port, proxy.username, proxy.password))
    # Peek until the head is complete, then consume exactly the head: the bytes after it belong
    # to the server, and must stay in the socket for the carrier.
    while True:
        peeked = _recv(sock, MAX_RESPONSE_HEAD + 4, deadline, proxy, socket.MSG_PEEK)
        response = parse_connect_response(peeked)
        if response is not None:
            break
        if len(peeked) >= MAX_RESPONSE_HEAD + 4:
            raise ProxyError(f"the proxy's answer to CONNECT is longer than {MAX_RESPONSE_HEAD} bytes")
        time.sleep(0.01)  # MSG_PEEK returns at once while data is waiting: poll gently for the rest
    _recv_exact(sock, response.head_len, deadline, proxy)
    if not 200 <= response.status < 300:
        raise ProxyError(connect_refusal(proxy, _authority(host, port), response))


def _socks5_connect(sock: socket.socket, proxy: ProxyURL, host: str, port: int, deadline: float) -> None:
    with_credentials = proxy.username is not None
    sock.sendall(encode_socks_greeting(with_credentials))
    method = parse_socks_method(_recv_exact(sock, 2, deadline, proxy), with_credentials)
    if method == SOCKS_AUTH_USERPASS:
        sock.sendall(encode_socks_userpass(proxy.username or "", proxy.password or ""))
        parse_socks_auth_reply(_recv_exact(sock, 2, deadline, proxy))
    if proxy.scheme == "socks5":  # curl's meaning: resolve the name here, send the address
        try:
            host = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as exc:
            raise ProxyError(f"cannot resolve server {host} (use socks5h:// to let the proxy resolve it): "
                             f"{exc.strerror}") from None  # fmt: skip
    sock.sendall(encode_socks_connect(host, port))
    head = _recv_exact(sock, 5, deadline, proxy)
    length = socks_reply_length(head)
    assert length is not None
    parse_socks_reply(head + _recv_exact(sock, length - 5, deadline, proxy))


def dial_via_proxy(proxy: ProxyURL, proxy_ips: list[str], host: str, port: int, timeout: float) -> socket.socket:
    """Connect to the proxy (at the first of ``proxy_ips`` that answers, resolved by the caller:
    Happy Eyeballs) and have it open a pipe to ``host:port``. Returns the connected socket, in
    blocking mode; every failure is a ProxyError."""
    deadline = time.monotonic() + timeout
    try:
        sock = connect_first(proxy_ips, proxy.port, timeout)
        sock.settimeout(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise ProxyError(f"proxy {proxy.redacted()} is unreachable: connection timed out") from None
    except OSError as exc:
        raise ProxyError(f"proxy {proxy.redacted()} is unreachable: {exc.strerror or exc}") from None
    try:
        if proxy.scheme == "http":
            _http_connect(sock, proxy, host, port, deadline)
        else:
            _socks5_connect(sock, proxy, host, port, deadline)
    except OSError as exc:
        sock.close()
        raise ProxyError(f"connection to proxy {proxy.redacted()} failed: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock
