"""``server.py status``: asks the running server's socket in the state directory and prints
its answer, for people (like ``wg show``) or as JSON. Here a socket in tmp_path answers with
a known status, so the test sees exactly what the command makes of it."""

from __future__ import annotations

import json

import pytest

import server
from config import ServerState
from controlsock import ControlSocket, Peer
from errors import UserError

STATUS = {
    "listen": "0.0.0.0:443",
    "transport": "tcp",
    "tun": "tun0",
    "address": "10.0.0.1/24",
    "mode": "offload",
    "refused": {"handshake_failed": 3, "too_many_handshakes": 0},
    "clients": [
        {
            "name": "laptop",
            "address": "10.0.0.2",
            "endpoint": "192.0.2.7:40312",
            "connected_since": "2026-12-01T23:59:00Z",
            "last_handshake": 12.4,
            "rx_bytes": 5120,
            "tx_bytes": 4096,
            "rx_packets": 40,
            "tx_packets": 38,
            "dropped": {"spoofed": 2, "queue_full": 0},
        },
        {
            "name": "phone",
            "address": "10.0.0.3",
            "endpoint": None,
            "connected_since": None,
            "last_handshake": None,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "rx_packets": 0,
            "tx_packets": 0,
            "dropped": {},
        },
    ],
}


@pytest.fixture
def state_dir(tmp_path):
    state = ServerState(tmp_path / "s")
    state.init(None, "127.0.0.1:443", None)
    control = ControlSocket(state.dir / server.CONTROL_SOCKET, lambda *_: STATUS, lambda _peer: None)
    try:
        yield str(state.dir)
    finally:
        control.close()


def status(state_dir: str, *flags: str) -> int:
    args = server.build_parser().parse_args(["status", "--state-dir", state_dir, *flags])
    return args.func(args)


def test_json_is_the_servers_answer(state_dir: str, capsys) -> None:
    assert status(state_dir, "--json") == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_the_human_view_lists_every_client(state_dir: str, capsys) -> None:
    assert status(state_dir) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [
        "listening on 0.0.0.0:443 (tcp), tun0 10.0.0.1/24, offload mode",
        "refused: handshake_failed 3, too_many_handshakes 0",
    ]
    assert "client: laptop\n  address: 10.0.0.2\n  endpoint: 192.0.2.7:40312\n" in out
    assert "latest handshake: 12 seconds ago" in out and "dropped: spoofed 2\n" in out
    assert "client: phone\n  address: 10.0.0.3\n  (not connected)\n" in out


def test_no_running_server_is_one_clear_error(tmp_path) -> None:
    ServerState(tmp_path / "idle").init(None, "127.0.0.1:443", None)
    with pytest.raises(UserError, match="no server is running"):
        status(str(tmp_path / "idle"))


def test_the_status_socket_is_root_only() -> None:
    assert server.root_only(Peer(pid=1, uid=0, gid=0)) is None
    refusal = server.root_only(Peer(pid=1, uid=1000, gid=1000))
    assert refusal is not None and "root only" in refusal
