#!/usr/bin/env python3
"""A UDP flood for the fairness measurements: as many datagrams as one core can send, for a while.

    python3 bench/flood.py --target IP [--port 9] [--size 1200] [--seconds 10]

Run only inside a lab namespace (bench.py does), at a tunnel address: it is the authenticated
client that tries to starve the others. Send errors (ENOBUFS when the local TUN queue is full,
ECONNREFUSED after an ICMP port unreachable) are the point, and are ignored.
"""

from __future__ import annotations

import argparse
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=9)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    payload, target = bytes(args.size), (args.target, args.port)
    sent, end = 0, time.monotonic() + args.seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        print(f"flooding {args.target}:{args.port}", flush=True)
        while time.monotonic() < end:
            for _ in range(100):
                try:
                    sock.sendto(payload, target)
                    sent += 1
                except OSError:
                    pass
    print(f"sent {sent} datagrams", flush=True)


if __name__ == "__main__":
    main()
