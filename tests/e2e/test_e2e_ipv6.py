"""IPv6: the carrier to the server over IPv6, and IPv6 inside the tunnel, in both data-path modes.

Every link of the lab is dual-stack (netlab gives each veth pair a 2001:db8:ff:N::/64 next to
its TEST-NET-1 /30), and the tunnel has the IPv6 prefix fd00:99::/64 next to 10.99.0.0/24.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

from netlab import SERVER_PORT, TunnelLab, client_counter


def test_one_listener_on_ipv6_serves_ipv6_and_ipv4_carriers(make_lab: Callable[..., TunnelLab]) -> None:
    lab = make_lab()
    lab.start_server("--listen", f"[::]:{SERVER_PORT}")
    alice, bob = lab.add_client("alice"), lab.add_client("bob")
    lab.start_client(alice, endpoint=f"[{alice.link.address6_a}]:{SERVER_PORT}")  # an IPv6 literal
    lab.start_client(bob)  # IPv4, to the same socket
    assert lab.server_process is not None
    log = lab.server_process.wait_for_log(rf"client alice connected from \[{alice.link.address6_b}\]:\d+")
    assert log
    lab.server_process.wait_for_log(rf"client bob connected from {bob.link.address_b}:\d+")
    for peer in (alice, bob):
        result = peer.ns.ping(lab.server_ip)
        assert result.all_answered, result.output


def test_icmp_reply_answers_ping6_in_user_space(make_lab: Callable[..., TunnelLab], mode: tuple[str, ...]) -> None:
    """With ``--icmp-reply`` on both ends, ping -6 to either tunnel address is answered by
    tunlib itself (counted), not by the kernel behind the TUN."""
    lab = make_lab()
    server = lab.start_server("--icmp-reply", *mode)
    alice = lab.add_client("alice")
    client = lab.start_client(alice, "--icmp-reply")
    there = alice.ns.ping(lab.server_ip6, count=4)
    back = lab.server.ping(alice.tunnel_ip6, count=3)
    assert there.all_answered, there.output
    assert back.all_answered, back.output
    server.send_signal(signal.SIGTERM)
    assert server.wait(5) == 0
    assert client_counter(server.log(), "icmp_replies", "alice") >= 4
    client.send_signal(signal.SIGTERM)
    assert client.wait(5) == 0
    stats = re.findall(r"icmp_replies=(\d+)", client.log())
    assert stats and int(stats[-1]) >= 3, client.log()
