"""A three-namespace lab for tunlib's internet-gateway mode, built on ``netlab.py``.

::

    +---- <prefix>-alice ----+     +-------- <prefix>-internet --------+     +---- <prefix>-server ----+
    | client.py              |     | routes between its two links;     |     | server.py --nat --dns   |
    | veth 192.0.2.6/30  ----+-----+ 192.0.2.5/30       192.0.2.2/30 --+-----+ veth 192.0.2.1/30       |
    | 2001:db8:1::2/64       |     | 2001:db8:1::1/64                  |     | default via 192.0.2.2   |
    | default via 192.0.2.5  |     | web  198.51.100.80, 203.0.113.80  |     +-------------------------+
    +------------------------+     | DNS  198.51.100.53 (pushed),      |
                                   |      203.0.113.53 (the "ISP's")   |
                                   +-----------------------------------+

The "internet" namespace plays every host out there: a web server and two DNS servers on
loopback addresses from TEST-NET-2/3 (RFC 5737), plus an IPv6 web server on the client's link.
All of them run as threads of the test process, on sockets made inside the namespace with
:meth:`netlab.Namespace.socket`, and log the source address of every request, which is how a
test tells "came through the tunnel" (the server's address, after its masquerade) from
"came directly" (the client's own address).

The client side of each check runs as a short command inside the client namespace
(``python3 -m tests.e2e.gatewaylab fetch|resolve ...``, via ``ip netns exec``), so that it sees the
namespace's own ``/etc/resolv.conf`` as the bind mount ``ip netns exec`` makes, exactly as a
user's program would. Namespace and interface names start with ``tlg``.

Needs what ``netlab`` needs (root, iproute2, /dev/net/tun), plus ``nft`` and ``tcpdump``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import netlab
from netlab import NETNS_RUN, Namespace, Peer, Process, TunnelLab

JOURNAL_DIR = Path("/var/lib/tunlib")
"""Where client.py and server.py journal their host changes (journal.JOURNAL_DIR)."""

WEB = "198.51.100.80"
"""The web server the tunnel should carry traffic to (TEST-NET-2)."""
OTHER_WEB = "203.0.113.80"
"""A second web server, outside a split tunnel's routes (TEST-NET-3)."""
PUSHED_DNS = "198.51.100.53"
"""The DNS server ``server.py run --dns`` pushes to clients."""
ISP_DNS = "203.0.113.53"
"""The DNS server in the client's own resolv.conf before the tunnel."""
DNS_NAME = "web.tunlib.test"
"""The one name both DNS servers answer, with :data:`WEB`."""
CLIENT_V6, INTERNET_V6 = "2001:db8:1::2", "2001:db8:1::1"
"""IPv6 on the client's outer link (RFC 3849 documentation prefix)."""
BULK_PATH = "/bulk"


def missing_tools() -> str | None:
    """Why gateway labs cannot run here (besides netlab's reasons), or None."""
    for tool in ("nft", "tcpdump"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    return None


# -- the internet's servers ---------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One request a server in the internet namespace received."""

    source: str
    """The address the request came from: the server's or the client's outer address."""
    destination: str
    """The address it was sent to (which web or DNS server)."""
    what: str
    """The HTTP path, or the DNS query name and type (``web.tunlib.test A``)."""


class Service:
    """Threads serving some sockets until :meth:`stop`; each logs its requests as :class:`Hit`."""

    POLL = 0.2
    """Sockets time out this often so the threads notice :meth:`stop`."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def log(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)

    def mark(self) -> int:
        """The number of hits so far: pass it to :meth:`since` to see only what came after."""
        with self.lock:
            return len(self.hits)

    def since(self, mark: int) -> list[Hit]:
        with self.lock:
            return self.hits[mark:]

    def spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)


class WebServer(Service):
    """A tiny HTTP/1.0 server: ``GET /`` answers a line naming the server, ``GET /bulk`` the bulk bytes."""

    def __init__(self, listeners: list[socket.socket], bulk: bytes) -> None:
        super().__init__()
        self.bulk = bulk
        for listener in listeners:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.settimeout(self.POLL)
            self.spawn(self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by the lab's teardown
            threading.Thread(target=self._serve, args=(conn, peer[0]), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        with conn:
            conn.settimeout(30)
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                path = request.split(b" ", 2)[1].decode(errors="replace")
                local = conn.getsockname()[0]
                self.log(Hit(peer, local, path))
                body = self.bulk if path == BULK_PATH else f"hello from {local}\n".encode()
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                )
                conn.sendall(body)
            except (OSError, IndexError):
                return


def parse_query(packet: bytes) -> tuple[int, bytes, str, int] | None:
    """(id, question section, lower-case name, qtype) of a one-question DNS query, else None."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while pos < len(packet) and packet[pos]:
        length = packet[pos]
        if length > 63:
            return None  # no compression in a question we asked for
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    end = pos + 5
    if end > len(packet):
        return None
    qtype, _qclass = struct.unpack_from("!HH", packet, pos + 1)
    return ident, packet[12:end], ".".join(labels).lower(), qtype


def dns_answer(query: bytes, name: str, address: str) -> bytes | None:
    """The reply to ``query``: ``name`` A ``address``; no data for its other types; NXDOMAIN for other names."""
    parsed = parse_query(query)
    if parsed is None:
        return None
    ident, question, qname, qtype = parsed
    answers = b""
    rcode = 0
    if qname != name:
        rcode = 3
    elif qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    flags = 0x8000 | 0x0400 | 0x0100 | 0x0080 | rcode  # response, authoritative, RD, RA
    return struct.pack("!HHHHHH", ident, flags, 1, 1 if answers else 0, 0, 0) + question + answers


class DnsServer(Service):
    """A UDP DNS responder that knows one name; it logs the source of every query."""

    def __init__(self, sockets: list[socket.socket], name: str, address: str) -> None:
        super().__init__()
        self.name, self.address = name, address
        for sock in sockets:
            sock.settimeout(self.POLL)
            self.spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        local = sock.getsockname()[0]
        while not self.stopping.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            parsed = parse_query(query)
            what = f"{parsed[2]} {parsed[3]}" if parsed else "malformed"
            self.log(Hit(peer[0], local, what))
            reply = dns_answer(query, self.name, self.address)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)


# -- the lab ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The state of a namespace that tunlib changes, as text, for exact before/after comparison."""

    parts: dict[str, str] = field(default_factory=dict)

    def diff(self, other: Snapshot) -> str:
        """A readable account of what differs, or '' when identical."""
        out = []
        for key in sorted(self.parts.keys() | other.parts.keys()):
            a, b = self.parts.get(key, ""), other.parts.get(key, "")
            if a != b:
                out.append(f"--- {key} before:\n{a}--- {key} after:\n{b}")
        return "\n".join(out)


class GatewayLab(TunnelLab):
    """A :class:`netlab.TunnelLab` whose clients reach the server across an "internet" namespace.

    The server namespace and its state directory come from ``TunnelLab``; this class adds the
    internet namespace with its servers, and clients linked to the internet instead of to the
    server. A client :class:`netlab.Peer`'s ``link.address_a`` is the internet's end here.
    """

    def __init__(self, workdir: str | os.PathLike[str], bulk: bytes) -> None:
        super().__init__(workdir)
        self.services: list[Service] = []
        try:
            self.internet = self.add_namespace("internet")
            # First /30: the server takes .1, which is the Endpoint that TunnelLab wrote into profiles.
            uplink = self.connect(self.server, self.internet)
            self.server_outer = uplink.address_a
            self.server.ip("route", "add", "default", "via", uplink.address_b)
            self.internet.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
            for address in (WEB, OTHER_WEB, PUSHED_DNS, ISP_DNS):
                self.internet.ip("address", "add", f"{address}/32", "dev", "lo")
            self.web = WebServer([self._listener(socket.AF_INET, "0.0.0.0", 80)], bulk)
            self.services.append(self.web)
            self.dns = DnsServer(
                [self._udp(PUSHED_DNS, 53), self._udp(ISP_DNS, 53)],
                DNS_NAME,
                WEB,
            )
            self.services.append(self.dns)
        except BaseException:
            self.close()
            raise

    NAME_PREFIX = "tlg"

    def _listener(self, family: int, address: str, port: int) -> socket.socket:
        sock = self.internet.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        return sock

    def _udp(self, address: str, port: int) -> socket.socket:
        sock = self.internet.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        return sock

    # -- clients ------------------------------------------------------------------
    def add_client(self, name: str) -> Peer:
        """A client namespace linked to the internet, with its default route and "ISP" DNS there."""
        ns = self.add_namespace(name)
        link = self.connect(self.internet, ns)
        ns.ip("route", "add", "default", "via", link.address_a)
        resolv = netlab.NETNS_ETC / ns.name / "resolv.conf"
        resolv.write_text(f"# the client's own resolver, before any tunnel\nnameserver {ISP_DNS}\n")
        profile, tunnel_ip = self.register(name)
        peer = Peer(
            name,
            ns,
            link,
            f"{self.server_outer}:{netlab.SERVER_PORT}",
            tunnel_ip,
            profile,
            self.ifname(f"c{len(self.peers)}"),
        )
        self.peers[name] = peer
        return peer

    def add_ipv6(self, peer: Peer) -> None:
        """IPv6 on the client's outer link, and a web server on the internet's end of it."""
        for ns, ifname, address in (
            (peer.ns, peer.link.ifname_b, CLIENT_V6),
            (self.internet, peer.link.ifname_a, INTERNET_V6),
        ):
            ns.ip("-6", "address", "add", f"{address}/64", "dev", ifname, "nodad")
        web6 = WebServer([self._listener(socket.AF_INET6, INTERNET_V6, 80)], b"")
        self.services.append(web6)

    def blackhole_server(self) -> None:
        """Make the internet silently drop all TCP to the server's port, like a server host that
        vanished: a client's dial then hangs until its own timeout instead of being refused."""
        ruleset = (
            "table inet tlg_blackhole {\n"
            "    chain forward {\n"
            "        type filter hook forward priority filter; policy accept;\n"
            f"        ip daddr {self.server_outer} tcp dport {netlab.SERVER_PORT} drop\n"
            "    }\n"
            "}\n"
        )
        self.internet.run("nft", "-f", "-", input=ruleset, check=True)

    def start_server(self, *args: str, name: str = "server") -> Process:
        """Start ``server.py run`` (log ``NAME.log``, so a restart keeps the first log) and wait until it serves."""
        process = self.server.spawn(
            name, sys.executable, "server.py", "run", "--state-dir", self.state_dir, "--tun", self.server_tun, *args
        )
        process.wait_for_log(r"serving on")
        self.server_process = process
        return process

    def client_cli(self, peer: Peer, *args: str) -> subprocess.CompletedProcess[str]:
        return peer.ns.run(sys.executable, "client.py", *args)

    def fetch(self, peer: Peer, url: str, timeout: float = 3.0, bind_device: str | None = None) -> dict:
        """GET ``url`` from inside the client namespace; the result of :func:`http_get` as a dict."""
        args = ["fetch", url, "--timeout", str(timeout)]
        if bind_device:
            args += ["--bind-device", bind_device]
        return self._helper(peer.ns, *args, timeout=timeout + 30)

    def resolve(self, peer: Peer, name: str) -> dict:
        """Look ``name`` up from inside the client namespace (glibc, the namespace's resolv.conf)."""
        return self._helper(peer.ns, "resolve", name, timeout=60)

    def _helper(self, ns: Namespace, *args: str, timeout: float) -> dict:
        # As a module from the repository (the lab's working directory), so it imports netlab.
        result = ns.run(sys.executable, "-m", "tests.e2e.gatewaylab", *args, timeout=timeout)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise AssertionError(f"helper {args} failed: {result.stdout}{result.stderr}") from None

    # -- inspection -----------------------------------------------------------------
    @staticmethod
    def snapshot(ns: Namespace, *, server: bool = False) -> Snapshot:
        """Routes, rules, nftables and DNS (client) or nftables and forwarding (server) of ``ns``."""
        commands = {
            "ip route": ["ip", "route"],
            "ip -6 route": ["ip", "-6", "route"],
            "ip rule": ["ip", "rule"],
            "nft list ruleset": ["nft", "list", "ruleset"],
        }
        if server:
            commands["ip_forward"] = ["sysctl", "net.ipv4.ip_forward"]
        else:
            commands["resolv.conf"] = ["cat", "/etc/resolv.conf"]
        parts = {}
        for key, argv in commands.items():
            result = ns.run(*argv)
            assert result.returncode == 0, f"{key} failed in {ns.name}: {result.stderr}"
            parts[key] = result.stdout
        return Snapshot(parts)

    def close(self) -> None:
        """Stop the internet's servers, then tear the lab down as ``TunnelLab`` does."""
        for service in getattr(self, "services", []):
            service.stop()
        super().close()


def tunlib_journals(ns: Namespace) -> list[Path]:
    """tunlib's journals for ``ns`` (journal.py names them after the namespace's inode)."""
    try:
        inode = os.stat(NETNS_RUN / ns.name).st_ino
    except FileNotFoundError:
        return []
    return sorted(JOURNAL_DIR.glob(f"*-{inode}-*.json"))


def packets_except(pcap: Path, allowed: str) -> list[str]:
    """The packets in ``pcap`` that the tcpdump filter ``allowed`` does not match, one line each."""
    result = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap), f"not ({allowed})"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"tcpdump -r failed: {result.stderr}"
    return result.stdout.splitlines()


def count_packets(pcap: Path, matching: str) -> int:
    result = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), matching], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"tcpdump -r failed: {result.stderr}"
    return len(result.stdout.splitlines())


# -- the client-side helper (runs inside a client namespace) --------------------------------


def http_get(url: str, timeout: float, bind_device: str | None = None) -> dict:
    """One HTTP/1.0 GET with its own socket (no proxy settings, optional SO_BINDTODEVICE).

    Returns ``{"ok": True, "status", "bytes", "sha256", "body"}`` (body: the first 200 bytes)
    or ``{"ok": False, "error"}``; never raises for network errors.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            if bind_device:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bind_device.encode())
            sock.connect(address)
            sock.sendall(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            response = bytearray()
            while chunk := sock.recv(1 << 20):
                response += chunk
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return {
        "ok": status == 200,
        "status": status,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": body[:200].decode(errors="replace"),
        "address": address[0],
    }


def resolve(name: str) -> dict:
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "addresses": sorted({info[4][0] for info in infos})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="client-side probes of the gateway lab (JSON on stdout)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--bind-device")
    p = sub.add_parser("resolve")
    p.add_argument("name")
    args = parser.parse_args(argv)
    result = http_get(args.url, args.timeout, args.bind_device) if args.command == "fetch" else resolve(args.name)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
