#!/usr/bin/env python3
"""Attackers and a probe for bench/attack.py and the end-to-end tests. Run only inside a lab
namespace (netlab.py), against a lab server: every mode is bounded in time and count.

    python -m bench.attackers idle   --target HOST:PORT --connections N --duration S [--drip] [--source IP ...]
    python -m bench.attackers flood  --target HOST:PORT --kind garbage|wrong-mac --duration S [--workers N]
    python -m bench.attackers probe  --profile FILE --endpoint HOST:PORT --count N [--interval S]

- ``idle`` holds N connections open (round robin over the ``--source`` addresses), and opens a
  new one whenever the server closes one, as a lock-out attacker would. With ``--drip`` each
  connection sends one byte a second (slowloris).
- ``flood`` opens connections as fast as it can and sends one message 1 on each: random bytes
  with a plausible header (``garbage``), or a well-formed message 1 whose mac1 is for another
  server (``wrong-mac``). Connections are reset, not closed, so the attacker's ports are not
  held in TIME_WAIT.
- ``probe`` is the legitimate side: N handshakes with a real profile, one after the other,
  each timed from connect to the end of the key confirmation.

Each prints one JSON line with what it did, for attack.py to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import threading
import time

from config import Profile, parse_endpoint
from framing import FrameType, encode_header, encode_init_frame
from handshake import Initiator, generate_private_key, public_key
from messages import ClientHello, tai64n
from session import PROLOGUE, HandshakeFailed, client_handshake

STOP = threading.Event()
"""Set by SIGTERM or SIGINT: every mode then ends early and still prints its report."""
MAX_DURATION = 600.0
MAX_CONNECTIONS = 4096
LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() sends a RST and leaves no TIME_WAIT behind."""


def bounded(value: float, limit: float, what: str) -> float:
    if not 0 < value <= limit:
        raise SystemExit(f"error: {what} must be in (0, {limit}]")
    return value


# -- idle / slowloris ------------------------------------------------------------------


def idle(args: argparse.Namespace) -> dict:
    host, port = parse_endpoint(args.target)
    sources = args.source or [None]
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + args.duration
    stats = {"opened": 0, "failed": 0, "closed_by_server": 0, "max_open": 0}
    next_source = 0

    def open_one() -> None:
        nonlocal next_source
        source = sources[next_source % len(sources)]
        next_source += 1
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        if source:
            sock.bind((source, 0))
        err = sock.connect_ex((host, port))
        if err not in (0, 115):  # EINPROGRESS
            stats["failed"] += 1
            sock.close()
            return
        stats["opened"] += 1
        selector.register(sock, selectors.EVENT_READ, None)

    for _ in range(args.connections):
        open_one()
    last_drip = time.monotonic()
    while (now := time.monotonic()) < deadline and not STOP.is_set():
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                stats["closed_by_server"] += 1
        stats["max_open"] = max(stats["max_open"], len(selector.get_map()))
        while len(selector.get_map()) < args.connections and time.monotonic() < deadline and not STOP.is_set():
            open_one()
            if stats["failed"] > 10 * args.connections:
                break
        if args.drip and now - last_drip >= 1.0:
            last_drip = now
            for key in list(selector.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.send(b"\x00")
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    return stats


# -- message-1 flood -------------------------------------------------------------------


def message_1(kind: str) -> bytes:
    """The frame the flood sends, made once: the server's cost does not depend on its freshness."""
    if kind == "garbage":
        body = os.urandom(126)
        return encode_header(FrameType.HANDSHAKE_INIT, len(body)) + body
    other_server = public_key(generate_private_key())
    initiator = Initiator(generate_private_key(), other_server, os.urandom(32), PROLOGUE)
    return encode_init_frame(other_server, initiator.write_init(ClientHello(tai64n(time.time_ns())).encode()))


def flood(args: argparse.Namespace) -> dict:
    host, port = parse_endpoint(args.target)
    frame = message_1(args.kind)
    deadline = time.monotonic() + args.duration
    counts = [0] * args.workers
    failures = [0] * args.workers

    def worker(index: int) -> None:
        while time.monotonic() < deadline and not STOP.is_set():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            sock.settimeout(1.0)
            try:
                sock.connect((host, port))
                sock.send(frame)
                counts[index] += 1
            except OSError:
                failures[index] += 1
                time.sleep(0.001)
            finally:
                sock.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):  # the main thread must stay free for the signal handler
        time.sleep(0.1)
    seconds = time.monotonic() - start
    sent = sum(counts)
    return {"sent": sent, "failed": sum(failures), "seconds": round(seconds, 2), "per_second": round(sent / seconds)}


# -- the legitimate side ---------------------------------------------------------------


def probe(args: argparse.Namespace) -> dict:
    """Handshakes with a real profile; each one's time, or its failure."""
    profile = Profile.load(args.profile)
    host, port = parse_endpoint(args.endpoint)
    times: list[float] = []
    errors: dict[str, int] = {}
    for _ in range(args.count):
        if STOP.is_set():
            break
        start = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                client_handshake(sock, profile)
                times.append(time.monotonic() - start)
        except (HandshakeFailed, OSError) as exc:
            reason = str(exc).split(":")[0][:60]
            errors[reason] = errors.get(reason, 0) + 1
        time.sleep(args.interval)
    return {"count": args.count, "ok": len(times), "times": [round(t, 4) for t in times], "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attackers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("idle", help="hold idle (or dripping) connections open")
    p.add_argument("--target", required=True)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drip", action="store_true", help="send one byte per second on each connection")
    p.add_argument("--source", action="append", help="source address to bind (repeatable, round robin)")
    p = sub.add_parser("flood", help="message-1 flood at the top rate")
    p.add_argument("--target", required=True)
    p.add_argument("--kind", choices=["garbage", "wrong-mac"], default="garbage")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=4)
    p = sub.add_parser("probe", help="timed legitimate handshakes")
    p.add_argument("--profile", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    bounded(getattr(args, "duration", 1.0), MAX_DURATION, "--duration")
    bounded(getattr(args, "connections", 1), MAX_CONNECTIONS, "--connections")
    bounded(getattr(args, "count", 1), 10_000, "--count")
    bounded(getattr(args, "workers", 1), 64, "--workers")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: STOP.set())
    result = {"idle": idle, "flood": flood, "probe": probe}[args.mode](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
