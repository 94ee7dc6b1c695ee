"""The server as an internet gateway, end to end: client -- internet -- server namespaces.

``server.py run --nat --dns`` masquerades its clients' traffic and pushes a DNS server;
``client.py run --full-tunnel`` / ``--route CIDR`` / ``--kill-switch`` route, resolve and
firewall the client namespace. The internet namespace's web and DNS servers log who asked,
so each test can tell traffic that went through the tunnel (it arrives from the server's
address) from traffic that went directly (it arrives from the client's own address).

Topology and servers: ``gatewaylab.py``. Each test gets a fresh lab, torn down even on failure.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gatewaylab import (
    BULK_PATH,
    DNS_NAME,
    INTERNET_V6,
    ISP_DNS,
    OTHER_WEB,
    PUSHED_DNS,
    WEB,
    GatewayLab,
    count_packets,
    missing_tools,
    packets_except,
    tunlib_journals,
)

import netlab
from netlab import Capture, Peer, Process

SKIP = netlab.have_lab_privileges() or missing_tools()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"gateway e2e: {SKIP}")

BULK_BYTES = 20 * 1024 * 1024
RECONNECT_DEADLINE = 12.0
"""The client retries after 1, 2, 4, 8 s...; a server back within a few seconds is found within ~10 s."""
SERVER_FLAGS = ("--nat", "--dns", PUSHED_DNS)
MODES = {"offload": (), "plain": ("--no-offload",)}
HALF_ROUTES = ("0.0.0.0/1", "128.0.0.0/1")
LINK_LOCAL_IPV6 = (
    "(ip6 and dst net ff02::/16 and (icmp6 or ip6[6] == 0)) or (icmp6 and src net fe80::/10 and dst net fe80::/10)"
)
"""tcpdump filter for IPv6's ARP: neighbour and router solicitations, MLD reports (behind a
hop-by-hop header), all link-scope. Routers never forward them; the veths send them on their own."""


@pytest.fixture(scope="module")
def bulk() -> bytes:
    """20 MB of random bytes for the web server's /bulk: incompressible, unguessable."""
    return os.urandom(BULK_BYTES)


@pytest.fixture
def gw(tmp_path: Path, bulk: bytes) -> Iterator[GatewayLab]:
    """A fresh gateway lab (no tunlib process running yet); torn down, and checked, after the test."""
    lab = GatewayLab(tmp_path / "lab", bulk)
    try:
        yield lab
    finally:
        lab.close()
        assert not lab.leftovers(), f"lab teardown left {lab.leftovers()}"


# -- helpers -------------------------------------------------------------------------


def crash(process: Process) -> None:
    """``kill -9``: no chance to undo anything. Reaped at once, so its PID is really gone."""
    process.send_signal(signal.SIGKILL)
    process.wait(5)


def fetch_source(gw: GatewayLab, peer: Peer, url: str) -> str:
    """Fetch ``url`` from ``peer``; return the source address the web server saw."""
    mark = gw.web.mark()
    result = gw.fetch(peer, url)
    assert result["ok"], f"fetch {url} failed: {result}"
    hits = gw.web.since(mark)
    assert len(hits) == 1, hits
    return hits[0].source


def client_ip(peer: Peer) -> str:
    """The client's own (outer) address: what the internet sees of traffic outside the tunnel."""
    return peer.link.address_b


def resolv_conf(peer: Peer) -> str:
    return (netlab.NETNS_ETC / peer.ns.name / "resolv.conf").read_text()


def start_another_client(gw: GatewayLab, peer: Peer, name: str, *args: str) -> Process:
    """Like ``start_client`` but with its own log name, so the first run's log survives."""
    process = peer.ns.spawn(name, *gw.client_argv(peer, *args))
    process.wait_for_log(r"connected to ")
    peer.ns.wait_for_address(peer.tunnel_ip)
    return process


# -- full tunnel -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_full_tunnel_sends_web_dns_and_bulk_through_the_server(gw: GatewayLab, bulk: bytes, mode: str) -> None:
    gw.start_server(*SERVER_FLAGS, *MODES[mode])
    alice = gw.add_client("alice")
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice), "without the tunnel, the web sees the client"
    original_resolv = resolv_conf(alice)

    client = gw.start_client(alice, "--full-tunnel")
    routes = alice.ns.ip("route")
    for half in HALF_ROUTES:
        assert f"{half} dev {alice.tun}" in routes, routes
    assert f"nameserver {PUSHED_DNS}" in resolv_conf(alice)
    assert ISP_DNS not in resolv_conf(alice)

    capture = Capture(alice.ns, alice.link.ifname_b, "outer")
    dns_mark, web_mark = gw.dns.mark(), gw.web.mark()
    looked_up = gw.resolve(alice, DNS_NAME)
    page = gw.fetch(alice, f"http://{DNS_NAME}/")
    download = gw.fetch(alice, f"http://{WEB}{BULK_PATH}", timeout=60)
    capture.stop()

    # DNS: the pushed server answered, and the query reached it from the server (through the tunnel).
    assert looked_up == {"ok": True, "addresses": [WEB]}, looked_up
    queries = gw.dns.since(dns_mark)
    assert queries, "the DNS server saw no query"
    assert {(q.source, q.destination) for q in queries} == {(gw.server_outer, PUSHED_DNS)}, queries
    # Web: both requests arrived from the server's address, and 20 MB arrived intact.
    assert page["ok"], page
    assert page["body"] == f"hello from {WEB}\n"
    assert download["bytes"] == len(bulk), download
    assert download["sha256"] == hashlib.sha256(bulk).hexdigest()
    hits = gw.web.since(web_mark)
    assert [h.source for h in hits] == [gw.server_outer] * 2, hits

    # The wire: nothing crossed the client's link but the carrier connection and link-local chatter.
    carrier = f"tcp and host {gw.server_outer} and port {netlab.SERVER_PORT}"
    assert count_packets(capture.path, carrier) > 100, "the capture missed the tunnel traffic"
    assert capture.path.stat().st_size > len(bulk), "the capture should hold the whole encrypted download"
    leaks = packets_except(capture.path, f"arp or ({LINK_LOCAL_IPV6}) or ({carrier})")
    assert not leaks, "traffic outside the carrier connection on the client's link:\n" + "\n".join(leaks[:20])

    assert client.terminate() == 0
    assert resolv_conf(alice) == original_resolv
    assert not any(half in alice.ns.ip("route") for half in HALF_ROUTES)
    assert not tunlib_journals(alice.ns), "a clean exit should leave no journal"
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice)


def test_split_tunnel_sends_only_its_route_through_the_server(gw: GatewayLab) -> None:
    gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    client = gw.start_client(alice, "--route", "198.51.100.0/24")
    routes = alice.ns.ip("route")
    assert f"198.51.100.0/24 dev {alice.tun}" in routes, routes
    assert not any(half in routes for half in HALF_ROUTES), routes

    assert fetch_source(gw, alice, f"http://{WEB}/") == gw.server_outer, f"{WEB} should go through the tunnel"
    assert fetch_source(gw, alice, f"http://{OTHER_WEB}/") == client_ip(alice), f"{OTHER_WEB} should go directly"

    assert client.terminate() == 0
    assert "198.51.100.0/24" not in alice.ns.ip("route")
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice)


def test_ipv6_is_blocked_under_full_tunnel(gw: GatewayLab) -> None:
    """The tunnel carries IPv4 only, so a full tunnel must stop IPv6 rather than let it bypass."""
    gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    gw.add_ipv6(alice)
    url = f"http://[{INTERNET_V6}]/"
    before = gw.fetch(alice, url)
    assert before["ok"], f"IPv6 should work before the tunnel: {before}"

    client = gw.start_client(alice, "--full-tunnel")
    during = gw.fetch(alice, url, timeout=2)
    assert not during["ok"], f"IPv6 bypassed the full tunnel: {during}"

    assert client.terminate() == 0
    after = gw.fetch(alice, url)
    assert after["ok"], f"IPv6 should work again after the client exits: {after}"


# -- kill switch and reconnection ---------------------------------------------------------


def test_kill_switch_blocks_while_the_server_is_down_and_reconnects(gw: GatewayLab) -> None:
    server = gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    outer = alice.link.ifname_b
    # A socket bound to the outer interface ignores the tunnel's routes: only the kill switch stops it.
    bound = gw.fetch(alice, f"http://{WEB}/", bind_device=outer)
    assert bound["ok"], f"the bound probe should leak without a kill switch: {bound}"

    client = gw.start_client(alice, "--full-tunnel", "--kill-switch")
    assert fetch_source(gw, alice, f"http://{WEB}/") == gw.server_outer

    assert server.terminate() == 0
    client.wait_for_log(r"connection to the server lost")
    mark = gw.web.mark()
    routed = gw.fetch(alice, f"http://{WEB}/", timeout=2)
    bound = gw.fetch(alice, f"http://{WEB}/", timeout=2, bind_device=outer)
    assert not routed["ok"], f"fetch succeeded with the server down: {routed}"
    assert not bound["ok"], f"the kill switch let a bound socket out: {bound}"
    assert gw.web.since(mark) == [], "a request reached the internet while the tunnel was down"
    assert client.returncode is None, f"the client should keep running and reconnect:\n{client.log()}"

    gw.start_server(*SERVER_FLAGS, name="server-restarted")
    restarted = time.monotonic()
    client.wait_for_log(r"reconnected to ", timeout=RECONNECT_DEADLINE)
    print(f"client reconnected {time.monotonic() - restarted:.1f} s after the server came back")
    assert fetch_source(gw, alice, f"http://{WEB}/") == gw.server_outer

    assert client.terminate() == 0
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice), "direct traffic should flow after exit"
    assert gw.fetch(alice, f"http://{WEB}/", bind_device=outer)["ok"]


def test_kill_switch_is_lifted_when_the_first_connection_fails(gw: GatewayLab) -> None:
    """The kill switch goes up before the first dial; a user whose server is down must not be left offline."""
    alice = gw.add_client("alice")
    before = gw.snapshot(alice.ns)
    result = alice.ns.run(*gw.client_argv(alice, "--full-tunnel", "--kill-switch"), timeout=60)
    # Exit 2 with an "error: ..." line last on stderr (the INFO lines before it are the client's log).
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unreachable" in last, result.stderr
    diff = before.diff(gw.snapshot(alice.ns))
    assert not diff, f"a failed start left changes behind:\n{diff}"
    assert not tunlib_journals(alice.ns)
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice)


def test_sigterm_while_redialling_an_unreachable_server_exits_promptly(gw: GatewayLab) -> None:
    server = gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    client = gw.start_client(alice, "--full-tunnel", "--kill-switch")
    gw.blackhole_server()  # the server's host vanishes: SYNs to it are dropped, not refused
    server.stop()
    client.wait_for_log(r"connection to the server lost")
    # After a short session the client first waits out a backoff ("reconnecting in N s"), which
    # SIGTERM does interrupt; the redial after it can only time out, and that is where it hangs.
    time.sleep(0.3)
    backoff = re.findall(r"reconnecting in (\d+) s", client.log())
    time.sleep((int(backoff[-1]) if backoff else 0) + 0.7)
    try:
        assert client.terminate() == 0
    finally:
        if client.returncode is None:
            crash(client)  # spares the teardown its 5 s SIGTERM grace; the namespace goes anyway


# -- crash recovery ------------------------------------------------------------------------


def test_client_cleanup_after_kill_9_restores_everything(gw: GatewayLab) -> None:
    gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    before = gw.snapshot(alice.ns)

    client = gw.start_client(alice, "--full-tunnel", "--kill-switch")
    assert gw.snapshot(alice.ns).diff(before), "the client changed nothing?"
    crash(client)
    assert gw.snapshot(alice.ns).diff(before), "kill -9 left nothing to clean: the test proves nothing"
    assert tunlib_journals(alice.ns), "the crashed client left no journal"

    first = gw.client_cli(alice, "cleanup")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("undid "), first.stdout
    diff = before.diff(gw.snapshot(alice.ns))
    assert not diff, f"cleanup did not restore the namespace exactly:\n{diff}"
    assert not tunlib_journals(alice.ns)
    second = gw.client_cli(alice, "cleanup")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "nothing to clean"
    assert fetch_source(gw, alice, f"http://{WEB}/") == client_ip(alice)


def test_client_run_after_kill_9_sweeps_the_leftovers(gw: GatewayLab) -> None:
    gw.start_server(*SERVER_FLAGS)
    alice = gw.add_client("alice")
    before = gw.snapshot(alice.ns)
    crash(gw.start_client(alice, "--full-tunnel", "--kill-switch"))

    again = start_another_client(gw, alice, "client-alice-again", "--full-tunnel", "--kill-switch")
    again.wait_for_log(r"undid the leftovers")
    assert fetch_source(gw, alice, f"http://{WEB}/") == gw.server_outer
    assert f"nameserver {PUSHED_DNS}" in resolv_conf(alice)

    assert again.terminate() == 0
    diff = before.diff(gw.snapshot(alice.ns))
    assert not diff, f"after a crash and a clean second run the namespace differs:\n{diff}"
    assert not tunlib_journals(alice.ns)


def test_server_cleanup_after_kill_9_restores_everything(gw: GatewayLab) -> None:
    before = gw.snapshot(gw.server, server=True)
    server = gw.start_server(*SERVER_FLAGS)
    during = gw.snapshot(gw.server, server=True)
    assert "net.ipv4.ip_forward = 1" in during.parts["ip_forward"]
    assert "masquerade" in during.parts["nft list ruleset"]
    crash(server)
    assert gw.snapshot(gw.server, server=True).diff(before), "kill -9 left nothing to clean: the test proves nothing"

    first = gw.server.run(sys.executable, "server.py", "cleanup")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("undid "), first.stdout
    diff = before.diff(gw.snapshot(gw.server, server=True))
    assert not diff, f"cleanup did not restore the server namespace exactly:\n{diff}"
    second = gw.server.run(sys.executable, "server.py", "cleanup")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "nothing to clean"

    # And a new run after a crash sweeps by itself.
    crash(gw.start_server(*SERVER_FLAGS, name="server-crashed"))
    again = gw.start_server(*SERVER_FLAGS, name="server-again")
    again.wait_for_log(r"undid the leftovers")
    assert again.terminate() == 0
    diff = before.diff(gw.snapshot(gw.server, server=True))
    assert not diff, f"after a crash and a clean second run the server namespace differs:\n{diff}"
    assert not tunlib_journals(gw.server)
