#!/usr/bin/env python3
"""A tiny HTTP server for the gateway benchmark: ``GET /blob`` returns a deterministic blob.

    python3 bench/blobserver.py --bind ADDR --port PORT --size BYTES --seed TEXT

The blob is one 1 MiB block (SHAKE-256 of the seed) repeated, so it needs neither disk nor
much memory, whatever its size, and :func:`blob_sha256` gives the digest the downloader must
see without storing the blob anywhere. Random-looking bytes keep anything on the path from
compressing them. Runs in the benchmark's "internet" namespace; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

BLOCK_SIZE = 1 << 20


def blob_block(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(BLOCK_SIZE)


def blob_sha256(size: int, seed: str) -> str:
    """The SHA-256 of the blob the server sends for ``size`` (a multiple of BLOCK_SIZE) and ``seed``."""
    block, digest = blob_block(seed), hashlib.sha256()
    for _ in range(size // BLOCK_SIZE):
        digest.update(block)
    return digest.hexdigest()


def make_handler(size: int, seed: str) -> type[BaseHTTPRequestHandler]:
    block = memoryview(blob_block(seed))

    class BlobHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/blob":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for _ in range(size // BLOCK_SIZE):
                self.wfile.write(block)

        def log_message(self, format: str, *args: object) -> None:
            sys.stdout.write(f"{self.address_string()} {format % args}\n")
            sys.stdout.flush()

    return BlobHandler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help=f"bytes, a multiple of {BLOCK_SIZE}")
    parser.add_argument("--seed", required=True)
    args = parser.parse_args()
    if args.size <= 0 or args.size % BLOCK_SIZE:
        parser.error(f"--size must be a positive multiple of {BLOCK_SIZE}")
    server = HTTPServer((args.bind, args.port), make_handler(args.size, args.seed))
    print(f"blobserver listening on {args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
