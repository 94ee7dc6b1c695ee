"""Strangers on the server's port: garbage, truncated or oversized frames, silence, and many
idle connections at once.

Each probe comes from a plain Python socket inside a client namespace. The server must drop
the connection (quickly when the bytes are plainly wrong, at the first-byte deadline when it
hears nothing, at the handshake timeout when a message stays incomplete), without a word
before a valid mac1, count the refusal, and go on serving: alice's tunnel keeps working and a
new client still connects and pings afterwards.
"""

from __future__ import annotations

import json
import random
import re
import signal
import struct
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from netlab import SERVER_PORT, TunnelLab, send_and_read, wait_until

HANDSHAKE_TIMEOUT = 5.0
"""session.HANDSHAKE_TIMEOUT: how long the server waits for a complete handshake."""
FIRST_BYTE_TIMEOUT = 2.0
"""session.FIRST_BYTE_TIMEOUT: how long it waits for the first byte."""
QUICK = FIRST_BYTE_TIMEOUT - 0.5
"""A connection the server can judge from its first bytes must be closed well before any deadline."""
HEADER = struct.Struct("!IB")
HANDSHAKE_INIT, DATA = 0x01, 0x04
INIT_LEN = 32 + 48 + 12 + 2 + 16 + 16
"""A real message 1's body: ephemeral key, encrypted static key, encrypted hello (timestamp + "{}"), mac1."""

seeded = random.Random(2024)


@dataclass(frozen=True)
class Probe:
    data: bytes
    half_close: bool = False
    """Send EOF after the data (else stay silent, waiting)."""
    waits_for: float = 0.0
    """The deadline the server can only give up at (0: none, it judges the bytes at once)."""


PROBES = {
    "http-request": Probe(b"GET / HTTP/1.1\r\nHost: vpn\r\n\r\n"),
    "random-bytes": Probe(seeded.randbytes(4096)),
    "huge-length-prefix": Probe(b"\xff\xff\xff\xff" + bytes([HANDSHAKE_INIT])),
    "data-before-handshake": Probe(HEADER.pack(48, DATA) + seeded.randbytes(48)),
    "init-sized-garbage": Probe(HEADER.pack(INIT_LEN, HANDSHAKE_INIT) + seeded.randbytes(INIT_LEN)),
    "truncated-init-then-eof": Probe(HEADER.pack(INIT_LEN, HANDSHAKE_INIT) + bytes(20), half_close=True),
    "truncated-init-then-silence": Probe(
        HEADER.pack(INIT_LEN, HANDSHAKE_INIT) + bytes(20), waits_for=HANDSHAKE_TIMEOUT
    ),
    "connect-then-silence": Probe(b"", waits_for=FIRST_BYTE_TIMEOUT),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelLab]:
    """A server with alice connected, and bob registered for connecting after each probe."""
    lab = TunnelLab(tmp_path_factory.mktemp("robustness"))
    try:
        lab.start_server()
        lab.start_client(lab.add_client("alice"))
        lab.add_client("bob")
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []


def server_address(lab: TunnelLab) -> tuple[str, int]:
    return (lab.peers["alice"].link.address_a, SERVER_PORT)


def assert_still_serving(lab: TunnelLab) -> float:
    """Alice's session survived, and a new client completes a handshake and pings.

    Returns when (``time.monotonic()``) the new client was connected.
    """
    assert lab.server_process.returncode is None, lab.server_process.log()
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    assert alice.ns.ping(lab.server_ip).all_answered
    bob_process = lab.start_client(bob)
    connected = time.monotonic()
    try:
        assert bob.ns.ping(lab.server_ip).all_answered
    finally:
        assert bob_process.stop() == 0
    return connected


def refusals(lab: TunnelLab) -> int:
    """The server's count of refused connections so far, from the statistics SIGUSR1 logs."""
    lines = lab.server_process.log().count("admission: ")
    lab.server_process.send_signal(signal.SIGUSR1)
    wait_until(lambda: lab.server_process.log().count("admission: ") > lines, 10, "the statistics after SIGUSR1")
    last = re.findall(r"admission: .*refused: (.*)", lab.server_process.log())[-1]
    return sum(int(n) for n in re.findall(r" (\d+)(?:,|$)", last))


@pytest.mark.parametrize("name", list(PROBES))
def test_server_survives_probe(lab: TunnelLab, name: str) -> None:
    probe = PROBES[name]
    before = refusals(lab)

    reply, seconds = send_and_read(lab.peers["alice"].ns, server_address(lab), probe.data, probe.half_close)

    assert reply == b"", "nothing is said to a stranger without a valid mac1"
    if probe.waits_for:
        assert probe.waits_for - 0.5 <= seconds < probe.waits_for + 2.0, f"closed after {seconds:.1f} s"
    else:
        assert seconds < QUICK, f"took {seconds:.1f} s to drop a connection it could judge at once"
    wait_until(lambda: refusals(lab) == before + 1, 10, "the refusal counted")
    assert "refused " in lab.server_process.log()  # the summary line
    assert_still_serving(lab)


def test_silent_strangers_do_not_hold_up_real_clients(lab: TunnelLab) -> None:
    """Handshakes run side by side: a client connects while strangers sit on the port."""
    alice = lab.peers["alice"]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        silent = [pool.submit(send_and_read, alice.ns, server_address(lab), b"") for _ in range(4)]
        connected = assert_still_serving(lab)
        for future in silent:
            _, seconds = future.result(timeout=60)
            assert seconds >= FIRST_BYTE_TIMEOUT - 0.5
    assert connected - start < HANDSHAKE_TIMEOUT, "bob got in only after the strangers were dropped"


ATTACKERS = ("-m", "bench.attackers")
"""Run from the repository directory, as the lab runs every command."""


def server_threads(lab: TunnelLab) -> int:
    status = Path(f"/proc/{lab.server_process.pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)[1])


@pytest.mark.parametrize("drip", [False, True], ids=["idle", "slowloris"])
def test_clients_connect_during_an_idle_connection_attack(lab: TunnelLab, drip: bool) -> None:
    """256 connections held open from another namespace, re-opened as the server closes them:
    every legitimate handshake still succeeds within 2 s, and the server gains no thread."""
    attacker = lab.add_namespace(f"attacker-{'drip' if drip else 'idle'}")
    link = lab.connect(lab.server, attacker)
    threads = server_threads(lab)
    command = [sys.executable, *ATTACKERS, "idle", "--target", f"{link.address_a}:{SERVER_PORT}"]
    command += ["--connections", "256", "--duration", "12", *(["--drip"] if drip else [])]
    attack = attacker.spawn("attacker", *command)
    try:
        time.sleep(2.0)  # let it fill whatever it can
        bob = lab.peers["bob"]
        result = bob.ns.run(
            sys.executable, *ATTACKERS, "probe", "--profile", bob.profile, "--endpoint", bob.endpoint,
            "--count", "10", "--interval", "0.3", timeout=60,
        )  # fmt: skip
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        assert probe["ok"] == probe["count"], probe
        assert max(probe["times"]) < 2.0, probe
        assert server_threads(lab) <= threads, "a connection in its handshake must cost no thread"
        client = lab.start_client(bob)  # and client.py itself gets in (it used to exit 2)
        try:
            assert bob.ns.ping(lab.server_ip).all_answered
        finally:
            assert client.stop() == 0
        assert attack.returncode is None, attack.log()
        assert lab.peers["alice"].ns.ping(lab.server_ip).all_answered
    finally:
        attack.send_signal(signal.SIGTERM)  # it stops early and still reports
        attack.wait(30)
    report = json.loads(attack.log().strip().splitlines()[-1])
    assert report["opened"] > 256, report  # it really did re-open what the server closed
