"""End-to-end: the TLS carrier through a "company network", port-share probes, and proxies.

The company network is a router namespace between the client and the server::

    alice 192.0.2.6 --- 192.0.2.5 [corp router] 192.0.2.2 --- 192.0.2.1 server (TLS on 443)
                                                                192.0.2.9 --- 192.0.2.10 outsider

The router's nftables forward policy lets only TCP 80 and 443 out (the firewall the TLS
transport is for); in the proxy-only variant it forwards nothing, and the only way out is a
real HTTP proxy (tinyproxy, Basic authentication) running on the router. ``outsider`` plays a
scanner. nginx, started by the test in the server namespace, is the website behind
``--fallback``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import netlab
from carrier import TlsEndpoint, client_context
from config import Profile
from framing import encode_init_frame
from handshake import Initiator
from messages import ClientHello, tai64n
from netlab import Namespace, Peer, TunnelLab
from session import PROLOGUE

SERVER_NAME = "vpn.example.test"
TLS_PORT = 443
PROXY_PORT = 8888
PROXY_USER, PROXY_PASSWORD = "staff", "s3cret-Proxy-pw"
BULK = 20 * 1024 * 1024
SITE_TEXT = "tunlib fallback site: this is the real web server\n"

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("nft", "tcpdump", "nginx", "tinyproxy", "ndpiReader", "tshark")),
    reason="needs nft, tcpdump, nginx, tinyproxy, ndpiReader (libndpi-bin) and tshark",
)


class CompanyLab(TunnelLab):
    """A TLS-mode server, a router namespace and alice behind it; an outsider beside the server."""

    def __init__(self, workdir: Path, *, proxy_only: bool = False) -> None:
        super().__init__(workdir)
        try:
            self.server_cli(
                "init", "--tls", "--server-name", SERVER_NAME, "--listen", f"0.0.0.0:{TLS_PORT}", check=True
            )
            self.corp = self.add_namespace("corp")
            self.uplink = uplink = self.connect(self.server, self.corp)  # 192.0.2.1 <-> 192.0.2.2
            self.endpoint = f"{uplink.address_a}:{TLS_PORT}"
            alice_ns = self.add_namespace("alice")
            lan = self.connect(self.corp, alice_ns)  # 192.0.2.5 <-> 192.0.2.6
            self.server.ip("route", "add", "192.0.2.4/30", "via", uplink.address_b)
            alice_ns.ip("route", "add", "default", "via", lan.address_a)
            self.corp.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
            allowed = "" if proxy_only else f'iifname "{lan.ifname_a}" tcp dport {{ 80, 443 }} accept'
            ruleset = f"""table inet company {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        {allowed}
    }}
}}
"""
            self.corp.run("nft", "-f", "-", input=ruleset, check=True)
            profile, tunnel_ip, tunnel_ip6 = self.register("alice")
            self.alice = Peer("alice", alice_ns, lan, self.endpoint, tunnel_ip, tunnel_ip6, profile, self.ifname("c0"))
            self.proxy_address = lan.address_a
            self.outsider = self.add_namespace("out")
            self.outsider_link = self.connect(self.server, self.outsider)  # 192.0.2.9 <-> 192.0.2.10
        except BaseException:
            self.close()
            raise

    def start_alice(self, *args: str) -> netlab.Process:
        return self.start_client(self.alice, *args, endpoint=self.endpoint)

    def start_nginx(self) -> str:
        """nginx on the server's loopback, port 8080, serving SITE_TEXT: the --fallback website."""
        root = self.workdir / "www"
        root.mkdir()
        (root / "index.html").write_text(SITE_TEXT)
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process off;
user root;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {self.workdir}/nginx-tmp;
    server {{ listen 127.0.0.1:8080; root {root}; }}
}}
""")
        self.server.spawn("nginx", "nginx", "-c", conf, "-p", self.workdir)
        netlab.wait_until(self._nginx_up, 10, "nginx to listen")
        return "127.0.0.1:8080"

    def _nginx_up(self) -> bool:
        return self.server.run("curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/").returncode == 0

    def start_tinyproxy(self) -> None:
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(f"""Port {PROXY_PORT}
Listen {self.proxy_address}
Timeout 60
MaxClients 20
BasicAuth {PROXY_USER} {PROXY_PASSWORD}
ConnectPort {TLS_PORT}
LogLevel Info
""")
        self.tinyproxy = self.corp.spawn("tinyproxy", "tinyproxy", "-d", "-c", conf)
        netlab.wait_until(lambda: f":{PROXY_PORT}" in self.corp.run("ss", "-ltn").stdout, 10, "tinyproxy to listen")

    def proxy_url(self, password: str = PROXY_PASSWORD) -> str:
        return f"http://{PROXY_USER}:{password}@{self.proxy_address}:{PROXY_PORT}"


@pytest.fixture
def company(tmp_path: Path):
    labs: list[CompanyLab] = []

    def make(**kwargs: bool) -> CompanyLab:
        lab = CompanyLab(tmp_path / f"lab{len(labs)}", **kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
            assert not lab.leftovers()


def loaded_transfers(lab: CompanyLab) -> None:
    """20 MB up and 20 MB down at the same time through the tunnel; both keep their sha256."""
    results: dict[str, netlab.StreamResult] = {}
    up, down = os.urandom(BULK), os.urandom(BULK)

    def run(name: str, sender: Namespace, receiver: Namespace, address: str, data: bytes, port: int) -> None:
        results[name] = netlab.tcp_stream(sender, receiver, address, data, port=port)

    threads = [
        threading.Thread(target=run, args=("up", lab.alice.ns, lab.server, lab.server_ip, up, 5301)),
        threading.Thread(target=run, args=("down", lab.server, lab.alice.ns, lab.alice.tunnel_ip, down, 5302)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name in ("up", "down"):
        result = results[name]
        assert result.received == BULK, f"{name}: {result.received} of {BULK} bytes"
        assert result.received_sha256 == result.sent_sha256, f"{name}: sha256 differs"


def test_tls_through_a_443_only_company_firewall(company) -> None:
    lab = company()
    # The firewall is real: TCP to the server's default port does not get through the router.
    with lab.alice.ns.socket() as probe:
        probe.settimeout(1.0)
        with pytest.raises(TimeoutError):
            probe.connect(("192.0.2.1", 55555))

    capture = netlab.Capture(lab.corp, lab.uplink.ifname_b, "router")
    lab.start_server()
    lab.start_alice("--full-tunnel")
    assert lab.alice.ns.ping(lab.server_ip, count=3, interval=0.1).all_answered
    pcap = capture.stop()
    assert pcap

    dpi = subprocess.run(
        ["ndpiReader", "-i", str(capture.path), "-v", "2"], capture_output=True, text=True, timeout=60, check=True
    )
    flows = [line for line in dpi.stdout.splitlines() if re.search(r"\bTCP \S+ <-> \S+ \[proto:", line)]
    assert len(flows) == 1, dpi.stdout
    assert re.search(rf"192\.0\.2\.1:{TLS_PORT} \[proto: [\d.]+/TLS\]", flows[0]), flows[0]
    assert f"[Hostname/SNI: {SERVER_NAME}]" in flows[0] and "[ALPN: http/1.1]" in flows[0], flows[0]

    hello = tshark(capture.path, "tls.handshake.type == 1", "tls.handshake.extensions_server_name")
    assert hello == [SERVER_NAME]
    versions = tshark(capture.path, "tls.handshake.type == 2", "tls.handshake.extensions.supported_version")
    assert versions == ["0x0304"]  # the ServerHello picked TLS 1.3

    loaded_transfers(lab)
    assert "with TLS" in lab.server_process.log()

    lab.alice.process.terminate()  # type: ignore[union-attr]
    lab.server_process.terminate()  # type: ignore[union-attr]
    # The other data-path mode, with session keys renewed inside TLS every 0.2 s meanwhile.
    lab.start_server("--no-offload", "--rekey-after", "0.2")
    client = lab.start_alice("--full-tunnel")
    assert "plain mode" in lab.server_process.log()
    loaded_transfers(lab)
    client.terminate()
    rekeys = re.search(r"session stats: .*\brekeys=(\d+)", client.log())
    assert rekeys and int(rekeys[1]) >= 3, client.log()[-500:]
    assert client.log().count("connected to ") == 1  # one connection throughout


def tshark(pcap: Path, display_filter: str, field: str) -> list[str]:
    result = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-e", field],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


def tls_exchange(ns: Namespace, address: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    """Connect with TLS from ``ns`` (as a browser would: SNI, ALPN), send ``data``, read until closed."""
    with ns.socket() as raw:
        raw.settimeout(timeout)
        raw.connect(address)
        with client_context().wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            tls.sendall(data)
            reply = bytearray()
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                while chunk := tls.recv(65536):
                    reply += chunk
            return bytes(reply)


def stale_message_1(profile_path: Path) -> bytes:
    """A message 1 exactly as alice's client makes one, an hour old: what a replay looks like."""
    profile = Profile.load(str(profile_path))
    initiator = Initiator(profile.private_key, profile.server_public_key, profile.psk, PROLOGUE)
    hello = ClientHello(tai64n(time.time_ns() - 3600 * 10**9))
    return encode_init_frame(profile.server_public_key, initiator.write_init(hello.encode()))


def test_probes_get_the_website_never_a_reject(company) -> None:
    lab = company()
    fallback = lab.start_nginx()
    capture = netlab.Capture(lab.corp, lab.uplink.ifname_b, "first-flight")
    lab.start_server("--fallback", fallback)
    lab.start_alice()
    capture.stop()
    server = (lab.outsider_link.address_a, TLS_PORT)
    url = f"https://{server[0]}/"

    curl = lab.outsider.run("curl", "-sk", "-m", "10", url)
    assert curl.stdout == SITE_TEXT

    s_client = lab.outsider.run(
        "openssl", "s_client", "-connect", f"{server[0]}:{TLS_PORT}", "-servername", SERVER_NAME,
        "-alpn", "http/1.1", "-quiet", "-ign_eof", input="GET / HTTP/1.0\r\n\r\n", timeout=20,
    )  # fmt: skip
    assert s_client.stdout.startswith("HTTP/1.1 200 OK") and s_client.stdout.endswith(SITE_TEXT), s_client.stdout

    clear, _ = netlab.send_and_read(lab.outsider, server, b"\x00" + os.urandom(200), half_close=True)
    assert clear.startswith(b"HTTP/1.1 400 Bad Request") and b"nginx" in clear

    inside = tls_exchange(lab.outsider, server, os.urandom(300))
    assert inside.startswith(b"HTTP/1.1 400 Bad Request")

    replay = tls_exchange(lab.outsider, server, stale_message_1(lab.alice.profile))
    assert replay.startswith(b"HTTP/1.1 400 Bad Request")
    lab.server_process.send_signal(signal.SIGUSR1)  # the admission counters, now
    lab.server_process.wait_for_log(r"admission: .*stale-to-website 1")

    # Alice's recorded TLS first flight, replayed byte for byte: a TLS server's answer (its own
    # handshake, then an alert, as the replayed Finished fails), nothing else.
    flight = bytes.fromhex(
        "".join(tshark(capture.path, f"tcp.dstport == {TLS_PORT} && tcp.len > 0 && ip.src == 192.0.2.6", "tcp.payload"))
    )
    assert flight.startswith(b"\x16\x03\x01")
    answer, _ = netlab.send_and_read(lab.outsider, server, flight)
    assert answer.startswith(b"\x16\x03\x03")

    # Alice never noticed: the same session carries her pings.
    assert lab.alice.ns.ping(lab.server_ip, count=3, interval=0.1).all_answered
    assert lab.server_process.log().count("client alice connected") == 1

    # A client this server does not know gets the website too, and its user is told why.
    mallory, _, _ = lab.register("mallory")
    lab.server_cli("remove-client", "mallory", check=True)
    argv = lab.client_argv(lab.alice, "--tun", lab.ifname("c9"), endpoint=lab.endpoint, profile=mallory)
    refused = lab.alice.ns.run(*argv, timeout=30)
    netlab.assert_user_error(refused, "answered like a web server", "PublicKey")

    # Without --fallback: the 404 page of a minimal web server.
    lab.server_process.terminate()  # type: ignore[union-attr]
    lab.start_server()
    curl = lab.outsider.run("curl", "-sk", "-m", "10", "-w", "%{http_code}", url)
    assert curl.stdout.endswith("404") and "<title>404 Not Found</title>" in curl.stdout


def test_proxy_only_network(company) -> None:
    lab = company(proxy_only=True)
    lab.start_tinyproxy()
    lab.start_server()
    client = lab.start_alice("--proxy", lab.proxy_url())
    assert lab.alice.ns.ping(lab.server_ip, count=3, interval=0.1).all_answered
    assert PROXY_PASSWORD not in client.log()
    assert f"via proxy http://***@{lab.proxy_address}:{PROXY_PORT}" in client.log()
    # The proxy goes away under an established session: retries with backoff, then back.
    lab.tinyproxy.stop()
    client.wait_for_log(rf"reconnect failed: .*proxy http://\*\*\*@{lab.proxy_address}:{PROXY_PORT} is unreachable")
    lab.start_tinyproxy()
    client.wait_for_log(r"reconnected to ")
    assert lab.alice.ns.ping(lab.server_ip, count=2, interval=0.1).all_answered
    assert PROXY_PASSWORD not in client.log()
    client.terminate()

    env_client = lab.alice.ns.spawn(
        "client-env", "env", f"https_proxy={lab.proxy_url()}", *lab.client_argv(lab.alice, "-v", endpoint=lab.endpoint)
    )
    env_client.wait_for_log(r"connected to ")
    assert f"using proxy http://***@{lab.proxy_address}:{PROXY_PORT} (from https_proxy)" in env_client.log()
    assert PROXY_PASSWORD not in env_client.log()  # not even at debug level
    lab.alice.ns.wait_for_address(lab.alice.tunnel_ip)
    assert lab.alice.ns.ping(lab.server_ip, count=2, interval=0.1).all_answered
    env_client.terminate()

    argv = lab.client_argv(lab.alice, "--proxy", lab.proxy_url("wrong-password"), endpoint=lab.endpoint)
    wrong = lab.alice.ns.run(*argv, timeout=30)
    line = netlab.assert_user_error(wrong, "refused CONNECT", "wrong or missing user:password")
    assert "wrong-password" not in wrong.stderr + wrong.stdout, line

    lab.tinyproxy.stop()
    stopped = lab.alice.ns.run(*lab.client_argv(lab.alice, "--proxy", lab.proxy_url(), endpoint=lab.endpoint))
    netlab.assert_user_error(stopped, f"proxy http://***@{lab.proxy_address}:{PROXY_PORT} is unreachable")


def client_hello() -> bytes:
    """A real TLS ClientHello (the first flight of a browser-like client), made in memory."""
    endpoint = TlsEndpoint(client_context(), server_side=False, server_name=SERVER_NAME)
    endpoint.handshake()
    return endpoint.outgoing.read()


def test_stalled_tls_strangers_do_not_keep_a_client_out(company) -> None:
    """200 connections from one scanner send a ClientHello and then nothing (the per-source limit
    holds some in their TLS handshake and refuses the rest); the client connects anyway, before
    any of them times out, and the server's loop keeps serving."""
    lab = company()
    lab.start_server()
    server = (lab.outsider_link.address_a, TLS_PORT)
    hello = client_hello()
    stalled = []
    for _ in range(200):
        sock = lab.outsider.socket()
        sock.settimeout(5)
        try:
            sock.connect(server)
            sock.sendall(hello)
        except OSError:
            continue  # refused by the per-source limit: that is the server defending itself
        stalled.append(sock)
    lab.server_process.send_signal(signal.SIGUSR1)
    lab.server_process.wait_for_log(r"admission: handshakes pending [1-9]")  # held mid-TLS, in the loop
    start = time.monotonic()
    lab.start_alice()
    assert time.monotonic() - start < 5  # not after the strangers time out: past them
    assert lab.alice.ns.ping(lab.server_ip, count=2, interval=0.1).all_answered
    assert lab.server_process.returncode is None
