"""Who may connect: a client pinning the wrong server key, clients the server does not know,
a client removed while connected, one profile used in two places, and a recorded handshake
replayed on a new connection. Refusals must be clear to the user (exit 2, one line) and must
not disturb registered clients already connected.

The data-path mode does not matter here, so one lab (default offload mode) is shared.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import SERVER_PORT, Namespace, Peer, TunnelLab, assert_user_error, send_and_read, wait_until

FRAME_HEADER = struct.Struct("!IB")
HANDSHAKE_INIT, REJECT = 0x01, 0x03
REJECT_STALE_TIMESTAMP = 3


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelLab]:
    """A server with alice connected; tests register further clients as they need them."""
    lab = TunnelLab(tmp_path_factory.mktemp("admission"))
    try:
        lab.start_server()
        lab.start_client(lab.add_client("alice"))
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []


def run_client(lab: TunnelLab, peer: Peer, profile: Path | None = None) -> subprocess.CompletedProcess[str]:
    return peer.ns.run(*lab.client_argv(peer, profile=profile), timeout=60)


def write_profile(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def assert_alice_works(lab: TunnelLab) -> None:
    result = lab.peers["alice"].ns.ping(lab.server_ip)
    assert result.all_answered, result.output


def test_wrong_server_key_is_a_clear_error(lab: TunnelLab) -> None:
    mallory = lab.add_client("mallory")
    other_key = base64.b64encode(os.urandom(32)).decode()
    text = re.sub(r"(?m)^PublicKey = .*$", f"PublicKey = {other_key}", mallory.profile.read_text())
    profile = write_profile(lab.workdir / "mallory-wrong-key.conf", text)

    result = run_client(lab, mallory, profile)

    assert_user_error(result, "server", "PublicKey")
    assert mallory.ns.links("tun") == [], "a refused client must not leave a TUN behind"
    lab.server_process.wait_for_log(r"refused \d+ connections?.*: .*foreign \d")  # a wrong mac1, counted
    assert_alice_works(lab)


@pytest.mark.parametrize("how", ["removed", "other-server"])
def test_unregistered_client_is_refused_while_alice_keeps_working(lab: TunnelLab, how: str) -> None:
    eve = lab.add_client(f"eve-{how}")
    if how == "removed":
        lab.server_cli("remove-client", eve.name, check=True)
        expected = ("not registered",)
    else:
        # A profile made by another server: other keys altogether, same endpoint.
        other = lab.workdir / "other-state"
        run = lab.server.run
        run(sys.executable, "server.py", "init", "--state-dir", other, "--endpoint", eve.endpoint, check=True)
        text = run(sys.executable, "server.py", "add-client", "eve", "--state-dir", other, check=True).stdout
        write_profile(eve.profile, text)
        expected = ("PublicKey",)

    alice = lab.peers["alice"]
    pinger = alice.ns.spawn(f"ping-during-{how}", "ping", "-n", "-i", "0.2", lab.server_ip)
    pinger.wait_for_log(r"bytes from")
    result = run_client(lab, eve)
    replies = pinger.log().count("bytes from")
    wait_until(lambda: pinger.log().count("bytes from") >= replies + 2, 30, "two more replies after the refusal")
    pinger.send_signal(signal.SIGINT)
    pinger.wait(10)

    assert_user_error(result, *expected)
    assert eve.ns.links("tun") == []
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", pinger.log()).groups())
    assert received >= sent - 1, pinger.log()  # the one in flight at SIGINT may be lost
    assert_alice_works(lab)


class RecordingProxy:
    """A TCP relay inside one namespace that keeps a copy of the first frame the client sends.

    It stands where an attacker on the path would, and records the client's HANDSHAKE_INIT.
    """

    def __init__(self, ns: Namespace, upstream: tuple[str, int]) -> None:
        self.ns = ns
        self.upstream = upstream
        self.listener = ns.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.first_frame = b""
        self.recorded = threading.Event()
        threading.Thread(target=self._serve, name="recording-proxy", daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = self.ns.socket()
        server.connect(self.upstream)
        header = self._read_exactly(client, FRAME_HEADER.size)
        length, _ = FRAME_HEADER.unpack(header)
        self.first_frame = header + self._read_exactly(client, length)
        self.recorded.set()
        server.sendall(self.first_frame)
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    @staticmethod
    def _read_exactly(sock: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise EOFError("connection closed inside a frame")
            data += chunk
        return data

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the lab closed the sockets


def test_remove_client_ends_a_live_session(lab: TunnelLab) -> None:
    """remove-client cuts an established session. The client is then refused, says why, and
    keeps retrying rather than exiting: a REJECT is unauthenticated, and giving up on one would
    let whoever forged it lift a kill switch. SIGTERM still ends it cleanly."""
    frank = lab.add_client("frank")
    client = lab.start_client(frank)
    assert frank.ns.ping(lab.server_ip).all_answered
    lab.server_cli("remove-client", "frank", check=True)
    lab.server_process.wait_for_log(r"client frank is no longer registered")
    client.wait_for_log(r"reconnect failed: .*not registered", timeout=30)
    assert client.returncode is None, "the client gave up on an unauthenticated refusal"
    assert not frank.ns.ping(lab.server_ip).ok
    assert client.terminate() == 0
    assert frank.ns.links("tun") == [] and lab.journals(frank.ns) == []
    assert_alice_works(lab)


def test_replayed_handshake_is_refused(lab: TunnelLab) -> None:
    carol = lab.add_client("carol")
    server_address = (carol.link.address_a, SERVER_PORT)
    proxy = RecordingProxy(carol.ns, server_address)
    lab.start_client(carol, endpoint=proxy.endpoint)
    assert proxy.recorded.wait(10)
    frame = proxy.first_frame
    assert frame[4] == HANDSHAKE_INIT

    reply, _ = send_and_read(carol.ns, server_address, frame)

    assert reply == FRAME_HEADER.pack(1, REJECT) + bytes([REJECT_STALE_TIMESTAMP]), reply
    lab.server_process.wait_for_log(r"refused \d+ connections?.*: .*stale \d")
    # The replay did not take over or end carol's real session, which still runs through the proxy.
    assert carol.ns.ping(lab.server_ip).all_answered
    assert "client carol reconnected" not in lab.server_process.log()
    assert_alice_works(lab)


def test_one_profile_used_twice_does_not_flap(lab: TunnelLab) -> None:
    """Running one profile in two places is a user mistake; it must not become a handshake storm
    (each new session displaces the other, so both clients must back off, not redial at once)."""
    dana, twin_home = lab.add_client("dana"), lab.add_client("dana-twin")
    first = lab.start_client(dana)
    twin = twin_home.ns.spawn("client-dana-twin", *lab.client_argv(twin_home, profile=dana.profile))
    try:
        twin.wait_for_log(r"connected to ")

        def handshakes() -> int:
            return lab.server_process.log().count("client dana connected")

        with pytest.raises(TimeoutError):  # backoff keeps it to a handful in 3 s
            wait_until(lambda: handshakes() > 10, 3.0, "more than 10 handshakes from dana")
    finally:
        twin.stop()
        first.stop()
