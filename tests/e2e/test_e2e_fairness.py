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

FLOOD_SECONDS = 15
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
    assert blocked.transmitted >= 4 and blocked.received == 0
    assert alice.ns.ping(lab.server_ip).all_answered  # the server is still reachable...
    assert lab.server.ping(bob.tunnel_ip).all_answered  # ...and reaches every client

    log = stop_and_log(server)
    assert stats(log, "alice").get("dropped_isolated") == blocked.transmitted
    assert "dropped_isolated" not in stats(log, "bob")


def test_a_flooding_client_does_not_starve_the_client_it_floods(make_lab: Callable[..., netlab.TunnelLab]) -> None:
    """alice floods bob's address; the server's own packets to bob still get through.

    With one drop-tail queue per client, the flood took every slot of bob's queue and the
    server's pings to bob were lost by the quarter. The fair queue gives the server's packets
    their own share, so the pings keep coming back even while bob's queue overflows. (The
    throughput bob keeps is measured by bench/bench.py's flood row; on two shared cores it
    mostly reflects the CPU the flooding processes take, so it is printed, not asserted.)
    """
    lab = make_lab()
    server = lab.start_server("--no-offload")
    alice, bob = lab.add_client("alice"), lab.add_client("bob")
    lab.start_client(alice)
    lab.start_client(bob)

    flood = alice.ns.spawn("flood", sys.executable, "-c", FLOOD, bob.tunnel_ip, str(FLOOD_SECONDS))
    flood.wait_for_log("flooding")
    # 0.2 s apart: longer than the victim's round trip under the flood, so a late reply is
    # never mistaken for a lost one (with one drop-tail queue, about a quarter were lost).
    pings = lab.server.ping(bob.tunnel_ip, count=20, interval=0.2, wait=3.0)
    stream = netlab.tcp_stream(lab.server, bob.ns, bob.tunnel_ip, bytes(range(256)) * 2048, timeout=60)
    still_flooding = flood.returncode is None
    flood.stop()

    bob_stats = stats(stop_and_log(server), "bob")
    print(f"victim: {stream.mbit_per_s:.0f} Mbit/s; pings {pings.received}/{pings.transmitted}; {bob_stats}")
    assert still_flooding, "the flood ended before the measurements did"
    assert bob_stats.get("dropped_queue_full", 0) > 100, "the flood never filled bob's queue: the test shows nothing"
    assert pings.transmitted - pings.received <= 1, f"the victim lost pings: {pings}"
    assert stream.received_sha256 == stream.sent_sha256
