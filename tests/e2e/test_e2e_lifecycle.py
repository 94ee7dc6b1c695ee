"""Starting and stopping: user-space ping replies and their counters, clean SIGTERM shutdown
(exit 0, TUN and journal gone, no process left, no namespace left), and a client that loses
its server, waits, and reconnects when the server is back."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

from netlab import TunnelLab


def icmp_replies(line: str) -> int:
    match = re.search(r"\bicmp_replies=(\d+)", line)
    return int(match[1]) if match else 0


def test_icmp_reply_answers_pings_in_user_space(make_lab: Callable[..., TunnelLab], mode: tuple[str, ...]) -> None:
    lab = make_lab()
    server = lab.start_server(*mode, "--icmp-reply")
    alice = lab.add_client("alice")
    client = lab.start_client(alice, "--icmp-reply")

    to_server = alice.ns.ping(lab.server_ip)
    to_client = lab.server.ping(alice.tunnel_ip)
    assert to_server.all_answered, to_server.output
    assert to_client.all_answered, to_client.output

    assert client.terminate() == 0
    client_stats = client.wait_for_log(r"INFO client: .*stats: .*$")[0]
    assert icmp_replies(client_stats) >= 3, client_stats
    # The server counts its user-space replies on the session that asked; the session's
    # stats line appears when that client disconnects.
    server_stats = server.wait_for_log(r"client alice stats: .*$")[0]
    assert icmp_replies(server_stats) >= 3, server_stats
    assert server.terminate() == 0


def test_sigterm_shuts_down_cleanly(make_lab: Callable[..., TunnelLab], mode: tuple[str, ...]) -> None:
    lab = make_lab()
    server = lab.start_server(*mode)
    alice = lab.add_client("alice")
    client = lab.start_client(alice)
    assert alice.ns.ping(lab.server_ip).all_answered
    assert alice.ns.links("tun") == [alice.tun]
    assert lab.server.links("tun") == [lab.server_tun]

    assert client.terminate() == 0
    assert alice.ns.links("tun") == [], "the client's TUN outlived the client"
    assert lab.journals(alice.ns) == [], "a clean exit must remove the client's journal"
    server.wait_for_log(r"client alice disconnected")
    assert server.terminate() == 0
    assert lab.server.links("tun") == [], "the server's TUN outlived the server"
    assert lab.journals(lab.server) == [], "a clean exit must remove the server's journal"
    assert "Traceback" not in client.log() + server.log()
    for ns in lab.namespaces:
        assert ns.pids() == [], f"processes left in {ns.name}"

    lab.close()
    assert lab.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns.name in listed for ns in lab.namespaces)


def test_client_rides_out_a_server_restart(make_lab: Callable[..., TunnelLab], mode: tuple[str, ...]) -> None:
    """The server exits 0 at once on SIGTERM, even with a client connected. The client keeps
    its TUN (traffic stalls rather than leaks), reconnects when the server is back, and the
    tunnel works again."""
    lab = make_lab()
    server = lab.start_server(*mode)
    alice = lab.add_client("alice")
    client = lab.start_client(alice)
    assert server.terminate() == 0
    client.wait_for_log(r"connection to the server lost")
    assert client.returncode is None
    assert alice.ns.links("tun") == [alice.tun]

    lab.start_server(*mode)
    client.wait_for_log(r"reconnected to ")
    result = alice.ns.ping(lab.server_ip)
    assert result.all_answered, result.output
    assert client.terminate() == 0
