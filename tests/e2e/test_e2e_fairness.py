"""Fair sharing between clients (issue 7, section 2): one client cannot starve another.

* ``--isolate-clients``: a client's packets to another client are dropped and counted; both
  still reach the server.
* A client flooding another client's tunnel address as fast as it can: the victim still gets
  its share of its own queue, so pings from the server to the victim keep coming back and a
  TCP stream to it keeps moving. (Queue fairness itself is unit-tested in tests/test_core.py;
  this checks that the whole server, threads and all, keeps it.)
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable

import netlab

FLOOD_SECONDS = 12
FLOOD = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload, target, end = bytes(1200), (sys.argv[1], 9), time.monotonic() + float(sys.argv[2])
print("flooding", flush=True)
while time.monotonic() < end:
    for _ in range(100):
        try:
            sock.sendto(payload, target)
        except OSError:
            pass  # ENOBUFS: the local TUN queue is full, which is the point
"""


def stats(log: str, client: str) -> dict[str, int]:
    line = re.findall(rf"client {client} stats: (.*)", log)
    assert line, f"no stats line for {client} in:\n{log}"
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", line[-1])}


def stop_and_log(server: netlab.Process) -> str:
    server.send_signal(signal.SIGTERM)
    assert server.wait(5) == 0
    return server.log()


def test_isolated_clients_cannot_ping_each_other_and_the_drops_are_counted(
    make_lab: Callable[..., netlab.TunnelLab],
) -> None:
    lab = make_lab()
    server = lab.start_server("--isolate-clients")
    assert "clients isolated from each other" in server.log()
    alice, bob = lab.add_client("alice"), lab.add_client("bob")
    lab.start_client(alice)
    lab.start_client(bob)

    blocked = alice.ns.ping(bob.tunnel_ip, count=4, wait=1.0)
    assert (blocked.transmitted, blocked.received) == (4, 0)
    assert alice.ns.ping(lab.server_ip).all_answered  # the server is still reachable...
    assert lab.server.ping(bob.tunnel_ip).all_answered  # ...and reaches every client

    log = stop_and_log(server)
    assert stats(log, "alice").get("dropped_isolated") == 4
    assert "dropped_isolated" not in stats(log, "bob")


def test_a_flooding_client_does_not_starve_the_client_it_floods(make_lab: Callable[..., netlab.TunnelLab]) -> None:
    lab = make_lab()
    server = lab.start_server("--no-offload")
    alice, bob = lab.add_client("alice"), lab.add_client("bob")
    lab.start_client(alice)
    lab.start_client(bob)
    payload = bytes(range(256)) * 4096  # 1 MiB
    quiet = netlab.tcp_stream(lab.server, bob.ns, bob.tunnel_ip, payload, timeout=60)
    assert quiet.received_sha256 == quiet.sent_sha256

    flood = alice.ns.spawn("flood", sys.executable, "-c", FLOOD, bob.tunnel_ip, str(FLOOD_SECONDS))
    flood.wait_for_log("flooding")
    pings = lab.server.ping(bob.tunnel_ip, count=40, interval=0.05, wait=2.0)
    loaded = netlab.tcp_stream(lab.server, bob.ns, bob.tunnel_ip, payload, timeout=60)
    still_flooding = flood.returncode is None
    flood.stop()

    log = stop_and_log(server)
    bob_stats = stats(log, "bob")
    print(f"victim: {quiet.mbit_per_s:.0f} -> {loaded.mbit_per_s:.0f} Mbit/s; pings {pings}; bob {bob_stats}")
    assert still_flooding, "the flood ended before the measurements did"
    assert loaded.received_sha256 == loaded.sent_sha256
    assert pings.transmitted - pings.received <= 1, f"the victim lost pings: {pings}"
    assert loaded.mbit_per_s >= 0.2 * quiet.mbit_per_s
