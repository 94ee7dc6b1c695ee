"""Tests for the local control protocol (control.py), its socket (controlsock.py) and sdnotify.py.

The parsers get known good and bad requests and hypothesis-made bytes and objects; the socket
runs for real on a UNIX socket in tmp_path (no root needed: the tests authorize by uid).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Profile, split_endpoints
from control import (
    COMMANDS,
    CONTROL_VERSION,
    MAX_LINE,
    STATUS_KEYS,
    ControlError,
    LineBuffer,
    authorized,
    drop_counters,
    encode,
    error_reply,
    iso_time,
    ok_reply,
    order_candidates,
    parse_reply,
    parse_request,
    progress_reply,
    rank_by_handshake,
)
from controlsock import ControlSocket, Peer, call
from errors import UserError
from sdnotify import notify_address, sd_notify
from tunlib import Counters


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


# -- requests ------------------------------------------------------------------------------


def test_a_minimal_request_of_each_command_parses() -> None:
    assert parse_request(line({"version": 1, "command": "status"})).fields == {}
    assert parse_request(line({"version": 1, "command": "list"})).command == "list"
    req = parse_request(line({"version": 1, "command": "import", "name": "home", "profile": "text"}))
    assert req.fields == {"name": "home", "profile": "text"}
    assert parse_request(line({"version": 1, "command": "disconnect"})).fields == {"force": False}


def test_connect_gets_its_defaults_and_normalised_routes() -> None:
    req = parse_request(line({"version": 1, "command": "connect", "routes": ["10.1.2.3/16"], "pick": "best"}))
    assert req.fields == {
        "name": None,
        "pick": "best",
        "full_tunnel": False,
        "routes": ["10.1.0.0/16"],
        "kill_switch": False,
    }


@pytest.mark.parametrize(
    ("request_obj", "fragment"),
    [
        ([], "not a JSON object"),
        ("status", "not a JSON object"),
        ({"command": "status"}, "integer 'version'"),
        ({"version": "1", "command": "status"}, "integer 'version'"),
        ({"version": True, "command": "status"}, "integer 'version'"),
        ({"version": 2, "command": "status"}, "version 2 is not supported"),
        ({"version": 1}, "unknown command None"),
        ({"version": 1, "command": "reboot"}, "unknown command 'reboot'"),
        ({"version": 1, "command": ["status"]}, "unknown command"),
        ({"version": 1, "command": "status", "verbose": True}, "unknown field(s) 'verbose'"),
        ({"version": 1, "command": "import", "name": "x"}, "missing field 'profile'"),
        ({"version": 1, "command": "import", "name": 3, "profile": "p"}, "'name' has the wrong type"),
        ({"version": 1, "command": "import", "name": "../x", "profile": "p"}, "bad profile name"),
        ({"version": 1, "command": "import", "name": "x", "profile": "p" * 70000}, "longer than"),
        ({"version": 1, "command": "connect", "pick": "fastest"}, "'pick' must be one of"),
        ({"version": 1, "command": "connect", "full_tunnel": 1}, "'full_tunnel' has the wrong type"),
        ({"version": 1, "command": "connect", "routes": "10.0.0.0/8"}, "'routes' has the wrong type"),
        ({"version": 1, "command": "connect", "routes": [8]}, "CIDR strings"),
        ({"version": 1, "command": "connect", "routes": ["10.0.0.0/33"]}, "not an IPv4 network"),
        ({"version": 1, "command": "connect", "routes": ["10.0.0.0/8"] * 65}, "at most 64"),
        ({"version": 1, "command": "connect", "full_tunnel": True, "routes": ["10.0.0.0/8"]}, "exclude each other"),
        ({"version": 1, "command": "disconnect", "force": "yes"}, "'force' has the wrong type"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(request_obj: object, fragment: str) -> None:
    with pytest.raises(ControlError) as exc:
        parse_request(line(request_obj))
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "raw", [b"", b"\xff\xfe", b"{", b"NaN", b'{"version":1,"command":"status"} x', b"[" * 100_000 + b"]" * 100_000]
)
def test_undecodable_lines_are_refused(raw: bytes) -> None:
    with pytest.raises(ControlError, match="not a JSON object"):
        parse_request(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_control_error(raw: bytes) -> None:
    try:
        request = parse_request(raw)
    except ControlError:
        return
    assert request.command in COMMANDS


@settings(max_examples=300)
@given(
    st.sampled_from(list(COMMANDS)),
    st.dictionaries(
        st.sampled_from(["name", "pick", "routes", "force", "full_tunnel", "kill_switch", "profile", "other"]),
        JSON,
        max_size=4,
    ),
)
def test_any_fields_of_any_command_parse_or_raise_control_error(command: str, fields: dict) -> None:
    try:
        request = parse_request(line({"version": CONTROL_VERSION, "command": command, **fields}))
    except ControlError:
        return
    assert set(request.fields) <= set(COMMANDS[command])
    again = line({"version": CONTROL_VERSION, "command": command, **request.fields})
    assert parse_request(again) == request  # what the daemon acts on is a fixed point


# -- replies and lines ----------------------------------------------------------------------


def test_replies_carry_the_version_and_round_trip() -> None:
    assert json.loads(ok_reply({"a": 1})) == {"version": 1, "ok": True, "result": {"a": 1}}
    assert parse_reply(ok_reply([1])[:-1])["result"] == [1]
    assert parse_reply(error_reply("no")[:-1]) == {"version": 1, "ok": False, "error": "no"}
    assert parse_reply(progress_reply("dialing")[:-1])["progress"] == "dialing"
    assert encode({"x": 1}).endswith(b"\n") and encode({"x": 1}).count(b"\n") == 1


@pytest.mark.parametrize(
    "raw", [b"nope", b"[]", b'{"version":9,"ok":true,"result":1}', b'{"version":1,"ok":false}', b'{"version":1}']
)
def test_bad_replies_are_control_errors(raw: bytes) -> None:
    with pytest.raises(ControlError):
        parse_reply(raw)


def test_line_buffer_splits_and_keeps_partial_lines() -> None:
    lines = LineBuffer(limit=10)
    assert list(lines.feed(b"ab\ncd")) == [b"ab"]
    assert lines.partial
    assert list(lines.feed(b"e\n\n")) == [b"cde", b""]
    assert not lines.partial


def test_line_buffer_refuses_an_oversized_line_with_or_without_newline() -> None:
    with pytest.raises(ControlError, match="longer than 10"):
        list(LineBuffer(limit=10).feed(b"x" * 11))
    with pytest.raises(ControlError, match="longer than 10"):
        list(LineBuffer(limit=10).feed(b"x" * 11 + b"\nok\n"))
    assert list(LineBuffer(limit=10).feed(b"x" * 10 + b"\n")) == [b"x" * 10]


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=8), st.integers(1, 40))
def test_line_buffer_gives_back_the_lines_however_the_stream_is_cut(lines: list[bytes], cut: int) -> None:
    stream = b"".join(x + b"\n" for x in lines)
    buffer, out = LineBuffer(limit=MAX_LINE), []
    for i in range(0, len(stream), cut):
        out += buffer.feed(stream[i : i + cut])
    assert out == lines and not buffer.partial


# -- authorization, choice, status helpers ----------------------------------------------------


def test_authorized_is_root_or_a_member_of_the_group() -> None:
    assert authorized(0, [], None)
    assert authorized(1000, [100, 4242], 4242)
    assert not authorized(1000, [100], 4242)
    assert not authorized(1000, [100], None)


def test_ordering_first_random_and_best() -> None:
    assert order_candidates(["a", "b", "c"], "first", random.Random(1)) == ["a", "b", "c"]
    shuffled = order_candidates(list(range(20)), "random", random.Random(1))
    assert sorted(shuffled) == list(range(20)) and shuffled != list(range(20))
    assert rank_by_handshake([("slow", 0.8), ("dead", None), ("fast", 0.01), ("mid", 0.2)]) == [
        "fast",
        "mid",
        "slow",
        "dead",
    ]


@given(st.lists(st.one_of(st.none(), st.floats(0, 10)), max_size=10))
def test_best_keeps_every_candidate_and_sorts_those_that_answered(times: list[float | None]) -> None:
    ranked = rank_by_handshake([(i, t) for i, t in enumerate(times)])
    assert sorted(ranked) == list(range(len(times)))
    answered = [times[i] for i in ranked if times[i] is not None]
    assert answered == sorted(answered)
    assert all(times[i] is None for i in ranked[len(answered) :])


def test_drop_counters_and_times() -> None:
    counters = Counters(dropped_ipv6=3, rx_bytes=9)
    drops = drop_counters(counters)
    assert drops["ipv6"] == 3 and "rx_bytes" not in drops and all(not k.startswith("dropped_") for k in drops)
    assert drop_counters(None) == {}
    assert iso_time(0) == "1970-01-01T00:00:00Z" and iso_time(None) is None
    assert STATUS_KEYS[0] == "state" and len(set(STATUS_KEYS)) == len(STATUS_KEYS) == 14


# -- several endpoints per profile ---------------------------------------------------------------


PROFILE = """[Client]
Name = home
PrivateKey = {key}

[Server]
PublicKey = {key}
PresharedKey = {key}
Endpoint = 192.0.2.1:443
Endpoint = vpn.example.com:55555
"""


def test_a_profile_may_list_several_endpoints_and_renders_them_back() -> None:
    text = PROFILE.format(key="A" * 43 + "=")
    profile = Profile.parse(text, "p")
    assert profile.endpoints == ("192.0.2.1:443", "vpn.example.com:55555")
    assert profile.endpoint == "192.0.2.1:443"
    assert Profile.parse(profile.render("10.0.0.2/24"), "again") == profile


def test_split_endpoints_only_takes_endpoint_lines_of_the_server_section() -> None:
    text = "[Client]\nEndpoint = not-this\n[Server]\nendpoint=a:1\nPublicKey = k\nEndpoint = b:2\n"
    rest, endpoints = split_endpoints(text)
    assert endpoints == ["a:1", "b:2"]
    assert "b:2" not in rest and "endpoint=a:1" in rest and "not-this" in rest


def test_a_bad_second_endpoint_is_named() -> None:
    text = PROFILE.format(key="A" * 43 + "=").replace("vpn.example.com:55555", "vpn:99999")
    with pytest.raises(UserError, match="Endpoint: bad port"):
        Profile.parse(text, "p")


# -- the socket, for real -----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path):
    calls: list[tuple[str, Peer]] = []

    def handler(request, peer, reply):
        calls.append((request.command, peer))
        if request.command == "connect":
            reply.send(progress_reply("dialing"))
            raise ControlError("nothing to connect to")
        return {"state": "disconnected"}

    def authorize(peer: Peer) -> str | None:
        return None if peer.uid == os.getuid() else "no"

    control = ControlSocket(tmp_path / "c.sock", handler, authorize, mode=0o600)
    try:
        yield control, calls
    finally:
        control.close()


def test_call_returns_the_result_and_passes_progress(served) -> None:
    control, calls = served
    assert call(control.path, encode({"command": "status"})) == {"state": "disconnected"}
    assert calls[0][0] == "status" and calls[0][1].uid == os.getuid() and calls[0][1].pid == os.getpid()
    progress: list[str] = []
    with pytest.raises(UserError, match="nothing to connect to"):
        call(control.path, encode({"command": "connect"}), progress.append)
    assert progress == ["dialing"]
    assert os.stat(control.path).st_mode & 0o777 == 0o600


def test_a_refused_caller_gets_the_reason(tmp_path: Path) -> None:
    control = ControlSocket(tmp_path / "c.sock", lambda *_: {}, lambda _peer: "go away")
    try:
        with pytest.raises(UserError, match="go away"):
            call(control.path, encode({"command": "status"}))
    finally:
        control.close()
    assert not control.path.exists()


def test_no_daemon_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing listens on"):
        call(tmp_path / "missing.sock", encode({"command": "status"}))


def test_a_second_server_on_a_live_socket_is_refused_and_a_stale_one_replaced(served, tmp_path: Path) -> None:
    control, _ = served
    with pytest.raises(UserError, match="already serves"):
        ControlSocket(control.path, lambda *_: {}, lambda _p: None)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))
    again = ControlSocket(stale, lambda *_: {"ok": 1}, lambda _p: None)
    try:
        assert call(stale, encode({"command": "list"})) == {"ok": 1}
    finally:
        again.close()


def test_a_handler_bug_is_an_error_reply_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    def handler(request, _peer, _reply):
        if request.command == "list":
            raise RuntimeError("bug")
        return {}

    control = ControlSocket(tmp_path / "c.sock", handler, lambda _p: None)
    try:
        with pytest.raises(UserError, match="internal error"):
            call(control.path, encode({"command": "list"}))
        assert call(control.path, encode({"command": "status"})) == {}
    finally:
        control.close()


# -- sd_notify --------------------------------------------------------------------------------


def test_sd_notify_sends_one_datagram_to_the_socket_named_in_the_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_sd_notify_outside_systemd_does_nothing(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")
    assert notify_address("@abstract") == "\0abstract"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_sd_notify_to_an_abstract_socket(monkeypatch) -> None:
    name = f"tunlib-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
