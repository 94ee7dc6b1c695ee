"""What the server does with packets an authenticated client should never send.

A client that passed the handshake is still not trusted with the server's network: a packet
behind a virtio-net header the kernel would reject, with a source address that is not the
client's, or too short to be IPv4, is dropped and counted, and the session goes on (rogue_client.py proves the last part
by getting a ping answered afterwards).
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable

import netlab

ROGUE = "tests.e2e.rogue_client"
"""Run with ``python -m`` from the repository (the lab's working directory), so it imports tunlib's modules."""


def counter(log: str, name: str, client: str) -> int:
    line = re.search(rf"client {client} stats: (.*)", log)
    assert line, f"no stats line for {client} in:\n{log}"
    match = re.search(rf"\b{name}=(\d+)", line[1])
    return int(match[1]) if match else 0


def test_bad_headers_and_spoofed_sources_are_dropped_and_counted_while_the_session_lives(
    make_lab: Callable[..., netlab.TunnelLab], mode: tuple[str, ...]
) -> None:
    lab = make_lab()
    server = lab.start_server(*mode)
    mallory = lab.add_client("mallory")
    alice = lab.add_client("alice")
    lab.start_client(alice)

    result = mallory.ns.run(sys.executable, "-m", ROGUE, mallory.profile, mallory.endpoint, timeout=30, check=True)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])

    assert outcome["offload"] == (mode == ()), outcome
    assert outcome["replied"], f"the session did not survive the bad packets:\n{result.stderr}"
    assert lab.server.ping(alice.tunnel_ip).ok, "another client was affected"
    server.send_signal(signal.SIGTERM)
    assert server.wait(5) == 0
    log = server.log()
    assert counter(log, "dropped_spoofed", "mallory") == 1
    assert counter(log, "dropped_malformed", "mallory") == 1
    assert counter(log, "dropped_bad_vnet", "mallory") == (1 if outcome["offload"] else 0)
    assert counter(log, "dropped_spoofed", "alice") == 0
