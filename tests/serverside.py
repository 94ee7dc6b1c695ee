"""A blocking driver for session.ServerHandshake, for tests that talk to a server over a socketpair.

The server itself runs the state machine in gatekeeper.py's selector loop; tests that want a
server end of a socket in one call use this instead, with the same actions performed in the
same order. A refusal raises HandshakeFailed carrying the machine's detail.
"""

from __future__ import annotations

import socket
import time

from config import ClientRecord
from messages import SessionSettings
from session import Admission, Established, HandshakeFailed, Refuse, Send, ServerHandshake, server_link
from tunlib import PeerLink


def server_handshake(sock: socket.socket, admission: Admission) -> tuple[ClientRecord, SessionSettings, PeerLink]:
    machine = ServerHandshake(admission, time.monotonic())
    while True:
        remaining = machine.deadline - time.monotonic()
        refusal = machine.expire(time.monotonic())
        if refusal is not None:
            sock.close()
            raise HandshakeFailed(refusal.detail)
        sock.settimeout(max(remaining, 0.001))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        for action in machine.receive(data) if data else [machine.peer_closed()]:
            if isinstance(action, Send):
                sock.sendall(action.data)
            elif isinstance(action, Refuse):
                sock.close()  # as the server does: the peer sees the end at once
                raise HandshakeFailed(action.detail)
            elif isinstance(action, Established):
                sock.settimeout(None)
                return action.record, action.settings, server_link(sock, action)

