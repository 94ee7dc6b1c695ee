"""The client daemon end to end: real users, two servers, one behind a slow relay (daemonlab.py).

One lab serves the whole module (building it costs two servers and a daemon, and the member
imports both profiles); each test leaves the daemon disconnected and both servers running, as
it found them, so any one of them can run alone. The first test expects the profiles never
used yet, so run in file order they all pass.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonlab import CLOSED_PORT, RELAY_DELAY, RELAY_PORT, SERVER_PORT, DaemonLab
from gatewaylab import GatewayLab, missing_tools

import netlab
from control import STATUS_KEYS
from netlab import assert_user_error, wait_until

SKIP = netlab.have_lab_privileges() or missing_tools()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"daemon e2e: {SKIP}")

PUSHED_DNS = "198.51.100.53"
FAILOVER_DEADLINE = 20.0


def notify_socket(path: Path) -> socket.socket:
    """A datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    lab = DaemonLab(tmp_path_factory.mktemp("daemon"))
    try:
        lab.notify = notify_socket(lab.shared / "notify.sock")  # type: ignore[attr-defined]
        lab.server_notify = notify_socket(lab.shared / "server-notify.sock")  # type: ignore[attr-defined]
        lab.a.start("--dns", PUSHED_DNS, notify_socket=str(lab.shared / "server-notify.sock"))
        lab.b.start()
        lab.profiles = {  # type: ignore[attr-defined]
            "alpha": lab.a.register("alpha", f"{lab.a.outer}:{CLOSED_PORT}", f"{lab.a.outer}:{SERVER_PORT}"),
            "beta": lab.b.register("beta", f"{lab.b.outer}:{RELAY_PORT}"),
        }
        lab.start_daemon(notify_socket=str(lab.shared / "notify.sock"))
        for name, text in lab.profiles.items():  # type: ignore[attr-defined]
            copy = lab.give(lab.member, name, text)
            out = ok(lab.as_user(lab.member, "import", str(copy)))
            assert out.startswith(f"imported {name}: "), out
            copy.unlink()  # the daemon keeps its own copy
        yield lab
    finally:
        for sock in (getattr(lab, "notify", None), getattr(lab, "server_notify", None)):
            if sock is not None:
                sock.close()
        lab.close()
        assert not lab.leftovers(), f"lab teardown left {lab.leftovers()}"


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def packets(status: dict) -> tuple[int, int]:
    return status["rx_packets"], status["tx_packets"]


# -- the tests, in order ---------------------------------------------------------------


def test_daemon_and_server_tell_systemd_they_are_ready(lab: DaemonLab) -> None:
    assert lab.notify.recv(4096) == b"READY=1"  # type: ignore[attr-defined]
    assert lab.server_notify.recv(4096) == b"READY=1"  # type: ignore[attr-defined]


def test_a_user_imports_connects_best_and_disconnect_restores_everything(lab: DaemonLab) -> None:
    before = GatewayLab.snapshot(lab.home)
    listing = ok(lab.as_user(lab.member, "list")).splitlines()
    assert listing == [
        f"alpha\t{lab.a.outer}:{CLOSED_PORT}, {lab.a.outer}:{SERVER_PORT}\tnever connected",
        f"beta\t{lab.b.outer}:{RELAY_PORT}\tnever connected",
    ]
    stored = lab.workdir / "profiles" / "alpha.conf"
    assert stored.stat().st_mode & 0o777 == 0o600 and stored.stat().st_uid == 0

    out = ok(lab.as_user(lab.member, "connect", "--best", "--full-tunnel"))
    timings = {m[1]: int(m[2]) for m in re.finditer(r"^(\S+ at \S+): handshake in (\d+) ms$", out, re.MULTILINE)}
    fast, slow = f"alpha at {lab.a.outer}:{SERVER_PORT}", f"beta at {lab.b.outer}:{RELAY_PORT}"
    assert set(timings) == {fast, slow}, out
    assert timings[slow] > timings[fast]
    assert f"alpha at {lab.a.outer}:{CLOSED_PORT}: server {lab.a.outer}:{CLOSED_PORT} is unreachable" in out
    assert out.splitlines()[-1] == f"connected: alpha at {lab.a.outer}:{SERVER_PORT}, address 10.97.0.2/24"

    first = lab.status()
    assert tuple(first) == STATUS_KEYS
    assert (first["state"], first["profile"], first["endpoint"], first["address"]) == (
        "connected",
        "alpha",
        f"{lab.a.outer}:{SERVER_PORT}",
        "10.97.0.2/24",
    )
    assert first["routes"] == ["10.97.0.0/24", "0.0.0.0/1", "128.0.0.0/1"]
    assert first["dns"] == [PUSHED_DNS]
    assert first["kill_switch"] is False
    assert 0 <= first["last_handshake"] < 30
    assert f"nameserver {PUSHED_DNS}" in lab.home.run("cat", "/etc/resolv.conf").stdout
    assert lab.home.ping(lab.a.tunnel_ip, count=5).all_answered
    second = lab.status()
    assert second["rx_packets"] >= first["rx_packets"] + 5 and second["tx_packets"] >= first["tx_packets"] + 5
    assert second["rx_bytes"] > first["rx_bytes"] and second["tx_bytes"] > first["tx_bytes"]
    assert "alpha\t" in ok(lab.as_user(lab.member, "list")) and "connected to" in ok(lab.as_user(lab.member, "list"))

    assert_user_error(lab.as_user(lab.member, "connect", "beta"), "already connected")

    assert ok(lab.as_user(lab.member, "disconnect")).strip() == "disconnected"
    assert lab.status()["state"] == "disconnected"
    assert not GatewayLab.snapshot(lab.home).diff(before), GatewayLab.snapshot(lab.home).diff(before)
    assert lab.home.links("tun") == []
    assert ok(lab.as_user(lab.member, "disconnect")).strip() == "was not connected"


def test_a_user_outside_the_group_is_refused(lab: DaemonLab) -> None:
    # First gate: the socket's mode (0660, root and the group).
    assert assert_user_error(lab.as_user(lab.outsider, "status"), "permission denied")
    # Second gate, with the first opened wide: the daemon asks the kernel who is calling.
    os.chmod(lab.socket, 0o666)
    try:
        line = assert_user_error(lab.as_user(lab.outsider, "connect", "alpha"), "permission denied")
        assert f"is neither root nor a member of group '{lab.group}'" in line
    finally:
        os.chmod(lab.socket, 0o660)
    assert lab.status()["state"] == "disconnected"


def exchange(sock: socket.socket, data: bytes) -> dict | None:
    """Send ``data``; return the next reply line as JSON, or None if the daemon hung up."""
    try:
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            reply += chunk
    except (BrokenPipeError, ConnectionResetError):
        return None
    return json.loads(reply)


def test_a_hostile_caller_gets_errors_and_the_daemon_keeps_serving(lab: DaemonLab) -> None:
    status = b'{"version":1,"command":"status"}\n'
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(lab.socket)
        for bad in (
            b"garbage\n",
            b"\xff\xfe\n",
            b"[1, 2]\n",
            b'{"version":"1","command":"status"}\n',
            b'{"version":2,"command":"status"}\n',
            b'{"version":1,"command":"reboot"}\n',
            b'{"version":1,"command":"status","extra":1}\n',
            b'{"version":1,"command":"connect","pick":5}\n',
            b'{"version":1,"command":"connect","full_tunnel":1}\n',
            b'{"version":1,"command":"connect","routes":["10.0.0.0/33"]}\n',
            b'{"version":1,"command":"import","name":"../../etc/x","profile":"x"}\n',
            b'{"version":1,"command":"import","name":"x","profile":"[Client]\\n"}\n',
        ):
            reply = exchange(sock, bad)
            assert reply is not None and reply["ok"] is False and reply["error"], (bad, reply)
        reply = exchange(sock, status)  # the same connection still works
        assert reply is not None and reply["ok"] and reply["result"]["state"] == "disconnected"

    with socket.socket(socket.AF_UNIX) as sock:  # 10 MB without a newline
        sock.settimeout(10)
        sock.connect(lab.socket)
        reply = exchange(sock, b"x" * (10 << 20) + b"\n")
        assert reply is None or (reply["ok"] is False and "longer than" in reply["error"])

    for _ in range(3):  # half-written requests, then a hang-up
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(lab.socket)
            sock.sendall(b'{"version":1,"comm')

    idle, turned_away = [], 0
    for _ in range(24):  # more idle callers than the daemon serves at once
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        try:
            sock.connect(lab.socket)
        except BlockingIOError:  # the listen backlog is full: turned away by the kernel
            turned_away += 1
            sock.close()
            continue
        idle.append(sock)
    try:
        time.sleep(0.5)  # let the daemon accept what it will
        for sock in idle[16:]:
            reply = exchange(sock, status)
            turned_away += reply is None or not reply["ok"]
        assert turned_away, "the daemon served more than 16 connections at once"
    finally:
        for sock in idle:
            sock.close()

    assert lab.daemon is not None and lab.daemon.returncode is None
    assert wait_until(lambda: lab.status()["state"] == "disconnected", 10, "the daemon to answer again")
    assert "Traceback" not in lab.daemon.log()


def test_server_status_lists_connected_and_offline_clients(lab: DaemonLab) -> None:
    gamma_text = lab.a.register("gamma", f"{lab.a.outer}:{SERVER_PORT}")
    lab.a.register("delta", f"{lab.a.outer}:{SERVER_PORT}")  # registered, never connects
    other = lab.add_namespace("other")
    link = lab.connect(lab.a.ns, other)
    profile = lab.workdir / "gamma.conf"
    profile.touch(mode=0o600)
    profile.write_text(gamma_text)
    gamma = other.spawn(
        "client-gamma",
        sys.executable,
        "client.py",
        "run",
        "--config",
        profile,
        "--endpoint",
        f"{link.address_a}:{SERVER_PORT}",
        "--tun",
        lab.ifname("c1"),
    )
    gamma.wait_for_log("connected to ")
    ok(lab.as_user(lab.member, "connect", "alpha"))
    try:
        first = {c["name"]: c for c in lab.a.status()["clients"]}
        assert other.ping(lab.a.tunnel_ip, count=3).all_answered
        assert lab.home.ping(lab.a.tunnel_ip, count=3).all_answered
        full = lab.a.status()
        second = {c["name"]: c for c in full["clients"]}
    finally:
        ok(lab.as_user(lab.member, "disconnect"))
        gamma.terminate()
    assert sorted(second) == ["alpha", "delta", "gamma"]
    assert full["listen"] == f"0.0.0.0:{SERVER_PORT}" and full["transport"] == "tcp"
    assert set(full["refused"]) == {"handshake_failed", "too_many_handshakes"}
    netlab.send_and_read(lab.home, (lab.a.outer, SERVER_PORT), b"\xff" * 64, half_close=True)
    refused = lab.a.status()["refused"]
    assert refused["handshake_failed"] == full["refused"]["handshake_failed"] + 1
    for name, address, peer in (("alpha", "10.97.0.2", lab.a.link.address_b), ("gamma", "10.97.0.3", link.address_b)):
        c = second[name]
        assert c["address"] == address and c["endpoint"].startswith(f"{peer}:")
        assert c["connected_since"] is not None and 0 <= c["last_handshake"] < 60
        assert c["rx_packets"] >= first[name]["rx_packets"] + 3 and c["tx_packets"] >= first[name]["tx_packets"] + 3
        assert c["rx_bytes"] > first[name]["rx_bytes"]
    assert second["delta"]["address"] == "10.97.0.4"
    assert (second["delta"]["connected_since"], second["delta"]["endpoint"], second["delta"]["rx_bytes"]) == (
        None,
        None,
        0,
    )
    # Root only: the socket lives in the 0700 state directory, and the server checks the caller.
    denied = lab.home.run(
        "runuser", "-u", lab.member, "--", sys.executable, "server.py", "status", "--state-dir", str(lab.a.state_dir)
    )
    assert_user_error(denied)


def test_kill_9_while_connected_is_undone_by_the_next_daemon(lab: DaemonLab) -> None:
    before = GatewayLab.snapshot(lab.home)
    ok(lab.as_user(lab.member, "connect", "alpha", "--full-tunnel", "--kill-switch"))
    during = GatewayLab.snapshot(lab.home)
    assert "tunlib_ks_" in during.parts["nft list ruleset"]
    assert PUSHED_DNS in during.parts["resolv.conf"]
    assert lab.status()["kill_switch"] is True
    assert lab.daemon is not None
    lab.daemon.send_signal(signal.SIGKILL)
    lab.daemon.wait(5)
    assert "tunlib_ks_" in GatewayLab.snapshot(lab.home).parts["nft list ruleset"]  # left behind
    lab.start_daemon()
    assert "undid" in lab.daemon.log()
    after = GatewayLab.snapshot(lab.home)
    assert not after.diff(before), after.diff(before)
    assert lab.status()["state"] == "disconnected"


def test_disconnect_force_undoes_a_stuck_connect_at_once(lab: DaemonLab) -> None:
    """A server that accepts but never answers holds the handshake for 5 s; --force does not wait."""
    before = GatewayLab.snapshot(lab.home)
    lab.relay.delay = 30.0
    try:
        connecting = subprocess.Popen(
            lab.home.argv(
                "runuser",
                "-u",
                lab.member,
                "--",
                sys.executable,
                "client.py",
                "connect",
                "beta",
                "--kill-switch",
                "--socket",
                lab.socket,
            ),
            cwd=netlab.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: lab.status()["state"] == "connecting", 10, "the daemon to be connecting")
        wait_until(
            lambda: "tunlib_ks_" in lab.home.run("nft", "list", "ruleset").stdout, 10, "the kill switch to go up"
        )
        started = time.monotonic()
        assert ok(lab.as_user(lab.member, "disconnect", "--force")).strip() == "disconnected"
        assert time.monotonic() - started < 4.5  # 2 s of patience, then undo, not the handshake's 5 s
        assert lab.status()["state"] == "disconnected"
        assert not GatewayLab.snapshot(lab.home).diff(before), GatewayLab.snapshot(lab.home).diff(before)
        _out, err = connecting.communicate(timeout=30)
        assert connecting.returncode == 2 and err.startswith("error: ")
    finally:
        lab.relay.delay = RELAY_DELAY
    wait_until(
        lambda: lab.as_user(lab.member, "connect", "alpha").returncode == 0, 20, "connect to work again", interval=1
    )
    ok(lab.as_user(lab.member, "disconnect"))
    assert not GatewayLab.snapshot(lab.home).diff(before)


def test_failover_to_the_other_server_when_the_connected_one_stops(lab: DaemonLab) -> None:
    before = GatewayLab.snapshot(lab.home)
    ok(lab.as_user(lab.member, "connect", "--best", "--kill-switch"))
    assert lab.status()["profile"] == "alpha"
    assert lab.a.process is not None
    watching, gaps = threading.Event(), []

    def watch_kill_switch() -> None:  # the kill switch must hold through the failover
        while not watching.is_set():
            if "tunlib_ks_" not in lab.home.run("nft", "list", "tables").stdout:
                gaps.append(time.monotonic())

    watcher = threading.Thread(target=watch_kill_switch)
    watcher.start()
    lab.a.process.terminate()
    try:
        try:
            moved = wait_until(
                lambda: (s := lab.status())["state"] == "connected" and s["profile"] == "beta" and s,
                FAILOVER_DEADLINE,
                "the daemon to fail over to beta",
            )
        finally:
            watching.set()
            watcher.join()
        assert not gaps, "the kill switch was down during the failover"
        assert moved["kill_switch"] is True
        assert moved["endpoint"] == f"{lab.b.outer}:{RELAY_PORT}" and moved["address"] == "10.96.0.2/24"
        assert lab.home.ping(lab.b.tunnel_ip, count=3).all_answered
        listing = ok(lab.as_user(lab.member, "list"))
        assert re.search(r"^alpha\t.*\tfailed at ", listing, re.MULTILINE), listing
        # SIGTERM while connected: the daemon disconnects cleanly, quickly, and removes its socket.
        started = time.monotonic()
        assert lab.daemon is not None and lab.daemon.terminate() == 0
        assert time.monotonic() - started < netlab.SHUTDOWN_DEADLINE
    finally:
        lab.a.start("--dns", PUSHED_DNS)
    assert not Path(lab.socket).exists()
    assert not GatewayLab.snapshot(lab.home).diff(before), GatewayLab.snapshot(lab.home).diff(before)
    assert "SIGTERM received" in lab.daemon.log()
    lab.start_daemon()  # as the other tests leave it
