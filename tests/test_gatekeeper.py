"""Tests for gatekeeper.py: the selector loop over real loopback sockets.

The decisions are tested on their own (test_admission.py, test_session.py); here the driver is:
a real client gets through while strangers hold connections, refusals are counted, evicted
and timed-out connections are closed, and no thread is started per connection.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import socket
import threading
import time

import pytest

import session
from admission import MAX_PENDING_PER_SOURCE
from config import ClientRecord, Profile
from gatekeeper import Gatekeeper
from handshake import generate_private_key, public_key
from messages import SessionSettings
from runtime import StopSignal
from session import Admission, Established, ReplayGuard, client_handshake

SERVER_PRIVATE = generate_private_key()
CLIENT_PRIVATE = generate_private_key()
PSK = os.urandom(32)
ALICE = ClientRecord("alice", public_key(CLIENT_PRIVATE), PSK, ipaddress.IPv4Address("10.0.0.2"))


def settings_for(record: ClientRecord, _hello: object) -> SessionSettings:
    return SessionSettings(
        address=ipaddress.IPv4Interface(f"{record.address}/24"),
        server_address=ipaddress.IPv4Address("10.0.0.1"),
        mtu=1420,
    )


@pytest.fixture
def gate():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    replay = ReplayGuard()
    admission = Admission(SERVER_PRIVATE, {ALICE.public_key: ALICE}.get, replay.is_new, replay.confirm, settings_for)
    established: queue.Queue[tuple[socket.socket, Established]] = queue.Queue()
    stop = StopSignal(handle_signals=False)
    keeper = Gatekeeper(listener, admission, lambda sock, est, _where: established.put((sock, est)), stop)
    thread = threading.Thread(target=keeper.run, daemon=True)
    thread.start()
    yield keeper, listener.getsockname(), established
    stop.set()
    thread.join(5)
    listener.close()
    stop.close()
    assert not thread.is_alive()


def connect(address) -> socket.socket | None:
    """A connection, or None if the server reset it at once (a refusal can beat connect's return)."""
    try:
        return socket.create_connection(address, timeout=5)
    except ConnectionResetError:
        return None


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed or reset the connection (refusals are resets)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_a_client_gets_through_while_strangers_hold_connections(gate):
    keeper, address, established = gate
    threads_before = threading.active_count()
    strangers = [connect(address) for _ in range(MAX_PENDING_PER_SOURCE + 20)]  # all from 127.0.0.1
    try:
        # The client comes from another loopback address: another source.
        sock = socket.create_connection(address, timeout=5, source_address=("127.0.0.2", 0))
        profile = Profile("alice", CLIENT_PRIVATE, public_key(SERVER_PRIVATE), PSK, "x:1")
        start = time.monotonic()
        settings, _link = client_handshake(sock, profile)
        assert time.monotonic() - start < 1.0
        assert settings == settings_for(ALICE, None)
        server_sock, est = established.get(timeout=5)
        assert est.record == ALICE
        assert server_sock.getblocking()
        assert threading.active_count() == threads_before  # no thread per connection
        assert len(keeper.pending) <= MAX_PENDING_PER_SOURCE
        assert keeper.tally.totals["per-source"] + keeper.tally.totals["rate"] >= 20
        server_sock.close()
        sock.close()
    finally:
        for s in strangers:
            if s is not None:
                s.close()


def test_garbage_is_closed_silently_and_counted(gate):
    keeper, address, _ = gate
    with connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: vpn\r\n\r\n")
        assert closed_by_server(sock)
    deadline = time.monotonic() + 5
    while keeper.tally.totals["foreign"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keeper.tally.totals["foreign"] == 1


def test_silent_connection_is_cut_at_the_first_byte_deadline(gate, monkeypatch):
    monkeypatch.setattr(session, "FIRST_BYTE_TIMEOUT", 0.3)
    keeper, address, _ = gate
    with connect(address) as sock:
        start = time.monotonic()
        assert closed_by_server(sock)
        assert 0.25 <= time.monotonic() - start < 2.0
    assert keeper.tally.totals["timeout"] == 1
