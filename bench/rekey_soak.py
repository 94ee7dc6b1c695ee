#!/usr/bin/env python3
"""Rekey soak: one TCP stream at full speed for a long time, with and without frequent rekeys.

    sudo flock /tmp/tunlib-bench.lock .venv/bin/python -m bench.rekey_soak [--seconds 600]   (from the repository)
         [--rekey-after 2] [--mode offload|plain] [--keep DIR] [-v]

Two runs over the same kind of lab (``tests/netlab.py``, names ``tlr<pid>_<n>-*``, a server and
one client joined by a veth pair): first the server with default timers (a rekey every 120 s),
then ``server.py run --rekey-after SECONDS`` (the client takes the server's shorter interval).
Each run streams for ``--seconds`` from the client to the server's tunnel address over one
inner TCP connection. The receiver hashes what arrives (SHA-256) as it goes; the sender sends
whole copies of one random 4 MiB block and hashes the same bytes after the clock has stopped,
so hashing costs the sender nothing during the measurement.

It prints, per run: seconds, GB moved, Gbit/s, rekeys during the stream (the client's counter), whether
the digests match, and how many times the client connected; then the targets of issue 7: with
``--seconds 600 --rekey-after 2``, at least 290 rekeys, equal digests, one connection, and at
least 0.95 x the throughput of the run without rekeys. A tool, not a test: the figures are
reported, and the exit status is 0 when every target holds, 1 when one misses, 2 when the lab
cannot run here.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import netlab

BLOCK = 4 << 20
"""The sender repeats one random block of this size; the receiver hashes in chunks of it."""
STREAM_PORT = 5202
MIN_REKEY_RATE = 290 / 600
"""Issue 7's target: 290 rekeys in 10 minutes with --rekey-after 2 (2.07 s per rekey)."""
MIN_THROUGHPUT_RATIO = 0.95


class SoakLab(netlab.TunnelLab):
    """netlab's TunnelLab under this tool's own name prefix."""

    NAME_PREFIX = "tlr"


@dataclass
class RunResult:
    label: str
    seconds: float
    received: int
    sent: int
    digests_match: bool
    rekeys: int
    connections: int
    lost: int

    @property
    def gbit_per_s(self) -> float:
        return self.received * 8 / self.seconds / 1e9


@dataclass
class Stream:
    """What one stream sent (``copies`` of ``block``) and what arrived."""

    block: bytes
    copies: int
    received: int
    received_sha256: str
    seconds: float

    def intact(self) -> bool:
        """Hash what was sent (after the measurement) and compare."""
        expected = hashlib.sha256()
        for _ in range(self.copies):
            expected.update(self.block)
        return self.received == self.copies * len(self.block) and expected.hexdigest() == self.received_sha256


def stream_for(sender: netlab.Namespace, receiver: netlab.Namespace, address: str, seconds: float) -> Stream:
    """Send copies of one random block for ``seconds`` over one TCP connection."""
    block = os.urandom(BLOCK)
    listener = receiver.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, STREAM_PORT))
    listener.listen(1)
    listener.settimeout(30)
    outcome: dict[str, object] = {}

    def receive() -> None:
        digest, total, first, last = hashlib.sha256(), 0, 0.0, 0.0
        buf = memoryview(bytearray(BLOCK))
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                while count := conn.recv_into(buf):
                    last = time.monotonic()
                    first = first or last
                    digest.update(buf[:count])
                    total += count
        except OSError as exc:
            outcome["error"] = exc
        outcome.update(sha256=digest.hexdigest(), received=total, elapsed=last - first)

    thread = threading.Thread(target=receive, name="soak-receiver")
    thread.start()
    copies = 0
    try:
        with sender.socket() as sock:
            sock.settimeout(60)
            sock.connect((address, STREAM_PORT))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(block)
                copies += 1
            sock.shutdown(socket.SHUT_WR)
            thread.join(120)
    finally:
        listener.close()
        thread.join(120)
    if "error" in outcome:
        raise RuntimeError(f"stream receiver failed: {outcome['error']}")
    return Stream(block, copies, int(outcome["received"]), str(outcome["sha256"]), float(outcome["elapsed"]))


def counter(line: str, name: str) -> int:
    match = re.search(rf"\b{name}=(\d+)", line)
    return int(match[1]) if match else 0


def client_rekeys(client: netlab.Process) -> int:
    """The client's rekey count now (SIGUSR1 makes it log its counters)."""
    seen = client.log().count("INFO client: stats:")
    client.send_signal(signal.SIGUSR1)
    netlab.wait_until(lambda: client.log().count("INFO client: stats:") > seen, 10, "the client's stats")
    return counter(re.findall(r"INFO client: stats: .*", client.log())[-1], "rekeys")


def run_once(label: str, server_args: list[str], seconds: float, keep: Path | None) -> RunResult:
    workdir = keep / label if keep else None
    with SoakLab(workdir) as lab:
        server = lab.start_server(*server_args)
        alice = lab.add_client("alice")
        client = lab.start_client(alice)
        before = client_rekeys(client)
        stream = stream_for(alice.ns, lab.server, lab.server_ip, seconds)
        during = client_rekeys(client) - before
        client.terminate()
        server.terminate()
        return RunResult(
            label=label,
            seconds=stream.seconds,
            received=stream.received,
            sent=stream.copies * BLOCK,
            digests_match=stream.intact(),
            rekeys=during,
            connections=len(re.findall(r"client alice connected", server.log())),
            lost=client.log().count("connection to the server lost"),
        )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # the labs' context managers tear down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rekey_soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stream time per run (default 600)")
    parser.add_argument("--rekey-after", default="2", help="the rekey interval of the second run (default 2)")
    parser.add_argument("--mode", choices=["offload", "plain"], default="offload", help="data-path mode")
    parser.add_argument("--keep", type=Path, help="keep the labs' logs and state in this directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    problem = netlab.have_lab_privileges()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    mode = ["--no-offload"] if args.mode == "plain" else []
    runs = [
        run_once("no-rekey", mode, args.seconds, args.keep),
        run_once(
            f"rekey-after-{args.rekey_after}", [*mode, "--rekey-after", args.rekey_after], args.seconds, args.keep
        ),
    ]
    print(f"{'run':<18} {'seconds':>8} {'GB':>8} {'Gbit/s':>8} {'rekeys':>7} {'sha256':>7} {'conns':>6} {'lost':>5}")
    for r in runs:
        print(
            f"{r.label:<18} {r.seconds:>8.1f} {r.received / 1e9:>8.2f} {r.gbit_per_s:>8.3f} {r.rekeys:>7} "
            f"{'equal' if r.digests_match else 'DIFFER':>7} {r.connections:>6} {r.lost:>5}"
        )
    base, soak = runs
    ratio = soak.gbit_per_s / base.gbit_per_s if base.gbit_per_s else 0.0
    wanted_rekeys = int(MIN_REKEY_RATE * args.seconds)
    checks = [
        (f"rekeys >= {wanted_rekeys}", soak.rekeys >= wanted_rekeys, f"{soak.rekeys}"),
        ("sha256 equal", soak.digests_match and base.digests_match, ""),
        ("no reconnect", soak.connections == 1 and soak.lost == 0, f"{soak.connections} connection(s)"),
        (f"throughput >= {MIN_THROUGHPUT_RATIO} x without rekey", ratio >= MIN_THROUGHPUT_RATIO, f"{ratio:.3f}"),
    ]
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}  {value}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
