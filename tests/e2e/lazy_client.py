"""A hand-driven tunlib client for tests that never rekeys: what the server's reject limits are for.

Run inside a client namespace, from the repository: ``python -m tests.e2e.lazy_client PROFILE
ENDPOINT``. It completes the
handshake with the product's own session code, then sends one echo request to the server's
tunnel address every 0.2 s (so it is never a silent, dead peer) but never configures its link
for rekeys, so its keys only age. It prints one JSON line when the session ends: why, after how
many seconds, and how many echo replies came back before.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from config import Profile
from session import client_handshake, dial
from tests.e2e.rogue_client import echo_request
from tunlib import LinkClosed
from vnet import PLAIN_VNET_HDR

LIMIT = 60.0
"""Give up (and say so) if the server has not cut the session by then."""


def main() -> None:
    profile, endpoint = Profile.load(sys.argv[1]), sys.argv[2]
    settings, link = client_handshake(dial(endpoint), profile)
    own, server = settings.address.ip.packed, settings.server_address.packed
    prefix = PLAIN_VNET_HDR if settings.offload else b""
    started, replies, ended = time.monotonic(), [0], threading.Event()

    def ping() -> None:
        seq = 0
        while not ended.wait(0.2):
            seq += 1
            try:
                link.send_packets([prefix + echo_request(own, server, seq)])
            except LinkClosed:
                return

    threading.Thread(target=ping, daemon=True).start()
    reason = f"still up after {LIMIT} s"
    timer = threading.Timer(LIMIT, link.close)
    timer.start()
    try:
        link.receive_packets(lambda _packet: replies.__setitem__(0, replies[0] + 1))
    except LinkClosed as exc:
        reason = str(exc)
    ended.set()
    timer.cancel()
    link.close()
    print(json.dumps({"ended": reason, "seconds": round(time.monotonic() - started, 2), "replies": replies[0]}))


if __name__ == "__main__":
    main()
