"""Tests for tunlib.PeerLink with its key schedule, two real links over a socket pair.

The pure schedule is tested in test_rekey.py; here the point is the wiring around it: the
send lock that makes each key switch atomic against the other thread's packets, SO_RCVTIMEO
waking an idle receiver for its timers, and the byte check after each sendall. Both sides send
at full speed in both directions while the client rekeys every 20 ms, so the buffers fill up
and every switch happens with packets in flight on both sides.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from framing import MAX_FRAME_BODY, FrameDecoder
from handshake import Initiator, Responder, public_key
from messages import ClientHello, tai64n
from rekey import InitiatorRole, Policy, ResponderRole
from session import PROLOGUE, ReplayGuard
from transport import ReceiveState, SendState
from tunlib import RECV_BUFFER_SIZE, LinkClosed, PeerLink

CLIENT_STATIC = bytes(range(1, 33))
SERVER_STATIC = bytes(range(65, 97))
PSK = bytes(range(129, 161))


def linked_pair(client_policy: Policy, server_policy: Policy) -> tuple[PeerLink, PeerLink]:
    initiator = Initiator(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE)
    responder = Responder(SERVER_STATIC, PROLOGUE)
    now_ns = time.time_ns()
    responder.read_init(initiator.write_init(ClientHello(tai64n(now_ns)).encode()))
    message2, server_keys = responder.write_response(PSK, b"{}")
    _, client_keys = initiator.read_response(message2)
    guard = ReplayGuard()
    guard.confirm(public_key(CLIENT_STATIC), tai64n(now_ns))
    a, b = socket.socketpair()
    links = []
    for sock, keys in ((a, client_keys), (b, server_keys)):
        decoder = FrameDecoder(MAX_FRAME_BODY, RECV_BUFFER_SIZE)
        links.append(PeerLink(sock, SendState(keys.send_key), ReceiveState(keys.recv_key), decoder))
    client, server = links
    client.configure(client_policy, InitiatorRole(CLIENT_STATIC, public_key(SERVER_STATIC), PSK, PROLOGUE))
    server.configure(
        server_policy, ResponderRole(SERVER_STATIC, public_key(CLIENT_STATIC), PSK, PROLOGUE, guard.confirm)
    )
    return client, server


class Receiver:
    """A link's receive loop in a thread, keeping what arrives and why the loop ended."""

    def __init__(self, link: PeerLink) -> None:
        self.packets: list[bytes] = []
        self.ended = ""
        self.thread = threading.Thread(target=self._run, args=(link,), daemon=True)
        self.thread.start()

    def _run(self, link: PeerLink) -> None:
        try:
            link.receive_packets(lambda packet: self.packets.append(bytes(packet)))
        except LinkClosed as exc:
            self.ended = str(exc)


@pytest.fixture
def closing() -> Iterator[list[PeerLink]]:
    links: list[PeerLink] = []
    yield links
    for link in links:
        link.close()


def send_until(link: PeerLink, done: Callable[[], bool], size: int, sent: list[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not done() and time.monotonic() < deadline:
        batch = [b"%08d" % (len(sent) + i) * (size // 8) for i in range(16)]
        link.send_packets(batch)
        sent.extend(batch)


def test_rekeys_under_full_load_both_ways_lose_nothing(closing: list[PeerLink]) -> None:
    fast = Policy(rekey_after_time=0.02)
    client, server = linked_pair(fast, fast)
    closing += [client, server]
    at_client, at_server = Receiver(client), Receiver(server)
    up: list[bytes] = []
    down: list[bytes] = []
    senders = [
        threading.Thread(target=send_until, args=(client, lambda: client.counters.rekeys >= 5, 8000, up)),
        threading.Thread(target=send_until, args=(server, lambda: client.counters.rekeys >= 5, 1400, down)),
    ]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(30)
    deadline = time.monotonic() + 30
    while (len(at_server.packets) < len(up) or len(at_client.packets) < len(down)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert at_client.ended == at_server.ended == ""
    assert at_server.packets == up
    assert at_client.packets == down
    assert client.counters.rekeys >= 5
    assert server.counters.rekeys in (client.counters.rekeys - 1, client.counters.rekeys)


def test_idle_links_exchange_keepalives_and_stay_up(closing: list[PeerLink]) -> None:
    policy = Policy(keepalive=0.1, peer_keepalive=0.1)
    client, server = linked_pair(policy, policy)
    closing += [client, server]
    at_client, at_server = Receiver(client), Receiver(server)
    deadline = time.monotonic() + 10
    while min(client.counters.keepalives_sent, server.counters.keepalives_sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # no DATA at all: only the receivers' timers, woken by SO_RCVTIMEO, send
    assert client.counters.keepalives_sent >= 3
    assert server.counters.keepalives_sent >= 3
    assert at_client.ended == at_server.ended == ""
    client.close()
    at_server.thread.join(5)
    assert at_server.ended == "peer closed the connection"
