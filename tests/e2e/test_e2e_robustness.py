"""Strangers on the server's port: garbage, truncated or oversized frames, and silence.

Each probe comes from a plain Python socket inside a client namespace. The server must drop
the connection (quickly when the bytes are plainly wrong, at the handshake timeout when it
is left waiting), log the refusal, and go on serving: alice's tunnel keeps working and a new
client still connects and pings afterwards.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from netlab import SERVER_PORT, TunnelLab, send_and_read, wait_until

HANDSHAKE_TIMEOUT = 5.0
"""session.HANDSHAKE_TIMEOUT: how long the server waits for a complete handshake message."""
QUICK = HANDSHAKE_TIMEOUT - 1.0
"""A connection the server can judge from its first bytes must be closed well before the timeout."""
HEADER = struct.Struct("!IB")
HANDSHAKE_INIT, REJECT, DATA = 0x01, 0x03, 0x04
REJECT_UNDECRYPTABLE = 1
NOISE_MSG1_LEN = 32 + 48 + 12 + 2 + 16
"""A real message 1: ephemeral key, encrypted static key, encrypted hello (timestamp + "{}")."""

seeded = random.Random(2024)


@dataclass(frozen=True)
class Probe:
    data: bytes
    half_close: bool = False
    """Send EOF after the data (else stay silent, waiting)."""
    waits_for_timeout: bool = False
    """The server can only give up at the handshake timeout."""
    reply: bytes = b""
    """What the server should send back before closing."""


PROBES = {
    "http-request": Probe(b"GET / HTTP/1.1\r\nHost: vpn\r\n\r\n"),
    "random-bytes": Probe(seeded.randbytes(4096)),
    "huge-length-prefix": Probe(b"\xff\xff\xff\xff" + bytes([HANDSHAKE_INIT])),
    "data-before-handshake": Probe(HEADER.pack(48, DATA) + seeded.randbytes(48)),
    "init-sized-garbage": Probe(
        HEADER.pack(NOISE_MSG1_LEN, HANDSHAKE_INIT) + seeded.randbytes(NOISE_MSG1_LEN),
        reply=HEADER.pack(1, REJECT) + bytes([REJECT_UNDECRYPTABLE]),
    ),
    "truncated-init-then-eof": Probe(HEADER.pack(NOISE_MSG1_LEN, HANDSHAKE_INIT) + bytes(20), half_close=True),
    "truncated-init-then-silence": Probe(
        HEADER.pack(NOISE_MSG1_LEN, HANDSHAKE_INIT) + bytes(20), waits_for_timeout=True
    ),
    "connect-then-silence": Probe(b"", waits_for_timeout=True),
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


@pytest.mark.parametrize("name", list(PROBES))
def test_server_survives_probe(lab: TunnelLab, name: str) -> None:
    probe = PROBES[name]
    refusals = lab.server_process.log().count("refused connection")

    reply, seconds = send_and_read(lab.peers["alice"].ns, server_address(lab), probe.data, probe.half_close)

    assert reply == probe.reply
    if probe.waits_for_timeout:
        assert seconds >= HANDSHAKE_TIMEOUT - 1.0, f"closed after {seconds:.1f} s, before the handshake timeout"
    else:
        assert seconds < QUICK, f"took {seconds:.1f} s to drop a connection it could judge at once"
    wait_until(lambda: lab.server_process.log().count("refused connection") > refusals, 30, "the refusal in the log")
    assert_still_serving(lab)


def test_silent_strangers_do_not_hold_up_real_clients(lab: TunnelLab) -> None:
    """Handshakes run in parallel: a client connects while strangers sit on the port."""
    alice = lab.peers["alice"]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        silent = [pool.submit(send_and_read, alice.ns, server_address(lab), b"") for _ in range(4)]
        connected = assert_still_serving(lab)
        for future in silent:
            _, seconds = future.result(timeout=60)
            assert seconds >= HANDSHAKE_TIMEOUT - 1.0
    assert connected - start < HANDSHAKE_TIMEOUT, "bob got in only after the strangers were dropped"
