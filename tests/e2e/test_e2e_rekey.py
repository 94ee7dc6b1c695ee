"""Keys rotate and dead peers are noticed inside one connection; no thread dies alone.

- A 200 MB stream crosses many rekeys (``--rekey-after 0.1``) with its sha256 intact, in both
  data-path modes, on one connection: no reconnect, and both ends count the rekeys.
- With ``--keepalive 1`` an idle tunnel stays up on keepalives; when an nftables rule inside the
  client's namespace blackholes the carrier, both ends notice within the dead-peer timeout
  (2 x 1 + 5 s), and the client is back once the rule goes.
- A client that keeps talking but never rekeys (``lazy_client.py``) is cut by the server once its
  keys pass REJECT_AFTER_TIME.
- An exception in a pump thread (injected by ``faults/sitecustomize.py``) ends that session only,
  logged once: the server drops that client, the client reconnects, other clients carry on; a
  TUN deleted under the client ends the client with one error line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netlab import SERVER_PORT, Namespace, Process, TunnelLab, tcp_stream, wait_until

STREAM_BYTES = 200 * 1024 * 1024
FAULTS = Path(__file__).resolve().parent / "faults"
LAZY = "tests.e2e.lazy_client"
"""Run with ``python -m`` from the repository (the lab's working directory), so it imports tunlib's modules."""
MARKER = "7e57fa017e57fa017e57fa017e57fa01"
"""The ping pattern that faults/sitecustomize.py turns into an exception in os.write."""


def counter(line: str, name: str) -> int:
    match = re.search(rf"\b{name}=(\d+)", line)
    return int(match[1]) if match else 0


def stats_now(process: Process, pattern: str) -> str:
    """Ask ``process`` for its counters (SIGUSR1) and return the new line matching ``pattern``."""
    seen = len(re.findall(pattern, process.log()))
    process.send_signal(signal.SIGUSR1)
    wait_until(lambda: len(re.findall(pattern, process.log())) > seen, 10, f"stats from {process}")
    return re.findall(pattern, process.log())[-1]


def test_200_mb_stream_across_rekeys_keeps_its_bytes_and_its_connection(
    make_lab: Callable[..., TunnelLab], mode: tuple[str, ...]
) -> None:
    lab = make_lab()
    server = lab.start_server(*mode, "--rekey-after", "0.1")
    alice = lab.add_client("alice")
    client = lab.start_client(alice)  # takes the server's shorter interval from message 2
    data = os.urandom(STREAM_BYTES)
    before = counter(stats_now(client, r"INFO client: stats: .*"), "rekeys")

    result = tcp_stream(alice.ns, lab.server, lab.server_ip, data)

    assert result.received == result.sent
    assert result.received_sha256 == result.sent_sha256
    during = counter(stats_now(client, r"INFO client: stats: .*"), "rekeys") - before
    assert during >= 3, f"only {during} rekeys in {result.seconds:.1f} s"
    assert client.terminate() == 0
    client_rekeys = counter(client.wait_for_log(r"session stats: .*")[0], "rekeys")
    server_rekeys = counter(server.wait_for_log(r"client alice stats: .*")[0], "rekeys")
    # The server counts a rekey at its REKEY_CONFIRM, which the last one may not have reached.
    assert client_rekeys - 1 <= server_rekeys <= client_rekeys
    assert "connection to the server lost" not in client.log()
    assert len(re.findall(r"client alice connected", server.log())) == 1
    assert re.search(r"client alice disconnected: peer closed the connection", server.log())


BLACKHOLE = """table inet {name} {{
    chain output {{ type filter hook output priority 0; tcp dport {port} drop; }}
    chain input {{ type filter hook input priority 0; tcp sport {port} drop; }}
}}
"""


def test_keepalive_notices_a_blackholed_carrier_and_the_client_comes_back(make_lab: Callable[..., TunnelLab]) -> None:
    lab = make_lab()
    server = lab.start_server("--keepalive", "1")
    alice = lab.add_client("alice")
    client = lab.start_client(alice, "--keepalive", "1")
    time.sleep(2.5)  # idle: only keepalives cross the carrier
    assert counter(stats_now(client, r"INFO client: stats: .*"), "keepalives_sent") >= 1
    assert counter(stats_now(server, r"client alice stats: .*"), "keepalives_sent") >= 1

    table = lab.ifname("bh")
    alice.ns.run("nft", "-f", "-", input=BLACKHOLE.format(name=table, port=SERVER_PORT), check=True)
    cut = time.monotonic()
    client.wait_for_log(r"connection to the server lost: no frame from the peer", timeout=20)
    noticed = time.monotonic() - cut
    server.wait_for_log(r"client alice disconnected: no frame from the peer", timeout=20)
    assert noticed < 2 * 1 + 5 + 3, f"the client took {noticed:.1f} s to notice"

    alice.ns.run("nft", "delete", "table", "inet", table, check=True)
    client.wait_for_log(r"reconnected to ", timeout=30)
    assert alice.ns.ping(lab.server_ip).all_answered
    assert client.returncode is None


def marker_ping(ns: Namespace, address: str) -> None:
    """Exactly one echo request carrying MARKER (``-W``, not ``-w``, which would resend it)."""
    ns.run("ping", "-n", "-q", "-c", "1", "-W", "1", "-p", MARKER, address)


def test_a_failing_pump_thread_ends_only_its_own_session(
    make_lab: Callable[..., TunnelLab], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(FAULTS))
    lab = make_lab()
    server = lab.start_server()
    alice, bob = lab.add_client("alice"), lab.add_client("bob")
    client = lab.start_client(alice)
    lab.start_client(bob)

    # The server's receiver for alice fails while writing her packet into its TUN.
    marker_ping(alice.ns, lab.server_ip)
    server.wait_for_log(r"client alice disconnected: receiver failed: RuntimeError: injected fault")
    client.wait_for_log(r"reconnected to ")
    assert lab.server.ping(bob.tunnel_ip).all_answered
    assert "client bob disconnected" not in server.log()

    # Alice's own receiver fails while writing a packet from the server into her TUN.
    marker_ping(lab.server, alice.tunnel_ip)
    client.wait_for_log(r"connection to the server lost: socket-to-tun failed: RuntimeError: injected fault")
    wait_until(lambda: client.log().count("reconnected to ") == 2, 20, "alice's second reconnection")
    assert alice.ns.ping(lab.server_ip).all_answered
    assert lab.server.ping(bob.tunnel_ip).all_answered
    assert client.log().count("injected fault") == 1
    assert server.log().count("injected fault") == 1
    assert "Traceback" not in client.log() + server.log()


def test_a_deleted_tun_ends_the_client_cleanly(make_lab: Callable[..., TunnelLab]) -> None:
    """The TUN is gone, so no later session could carry packets: the client does not reconnect in
    a loop but undoes its changes and exits with one ``error:`` line saying why (status 2)."""
    lab = make_lab()
    server = lab.start_server()
    alice = lab.add_client("alice")
    client = lab.start_client(alice)
    alice.ns.run("ip", "link", "delete", alice.tun, check=True)
    assert client.wait(10) == 2
    log = client.log()
    lost = re.escape(f"tun-to-socket failed: TunGone: TUN device {alice.tun} was deleted")
    assert re.search(rf"connection to the server lost: {lost}\n", log)
    assert re.search(rf"^error: {lost}: cannot go on without a working TUN device$", log, re.MULTILINE)
    assert "reconnect" not in log
    assert "Traceback" not in log
    assert lab.journals(alice.ns) == []
    server.wait_for_log(r"client alice disconnected: peer closed the connection")


def test_the_server_cuts_a_client_that_does_not_rekey(make_lab: Callable[..., TunnelLab]) -> None:
    """lazy_client.py keeps talking but never rekeys: with ``--rekey-after 0.5`` the server ends
    its session once the keys are REJECT_AFTER_TIME old (max(1.5 x 0.5, 0.5 + 5) = 5.5 s), long
    before the dead-peer timeout could matter, since the client is never silent."""
    lab = make_lab()
    server = lab.start_server("--rekey-after", "0.5")
    lazy = lab.add_client("lazy")
    result = lazy.ns.run(sys.executable, "-m", LAZY, lazy.profile, lazy.endpoint, timeout=90, check=True)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["ended"] == "peer closed the connection", outcome
    assert 5.5 <= outcome["seconds"] < 5.5 + 3, outcome
    assert outcome["replies"] >= 10, outcome  # the session carried traffic until the cut
    server.wait_for_log(r"client lazy disconnected: session keys are 5\.\d s old: no rekey within 5\.5 s")
