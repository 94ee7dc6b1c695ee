"""Tests for ``server.py set`` and how ``run`` combines stored options, flags and defaults."""

from __future__ import annotations

import ipaddress
import json

import pytest

import server
from config import ServerState
from errors import UserError


@pytest.fixture
def state_dir(tmp_path) -> str:
    ServerState(tmp_path / "s").init(None, "127.0.0.1:55555", None)
    return str(tmp_path / "s")


def run_args(state_dir: str, *flags: str):
    """What ``run`` would use: the parsed command line with the stored options applied."""
    args = server.build_parser().parse_args(["run", "--state-dir", state_dir, *flags])
    server.apply_run_options(args, ServerState(state_dir))
    return args


def cli(*argv: str) -> None:
    args = server.build_parser().parse_args(list(argv))
    assert args.func(args) == 0


def test_without_stored_options_run_has_its_defaults(state_dir: str) -> None:
    args = run_args(state_dir)
    assert (args.tun, args.nat, args.no_offload, args.icmp_reply, args.egress, args.dns) == (
        "tun0",
        False,
        False,
        False,
        None,
        [],
    )


def test_set_stores_only_what_was_given_and_run_uses_it(state_dir: str) -> None:
    cli("set", "--state-dir", state_dir, "--nat", "--dns", "192.0.2.53", "--tun", "vpn0")
    assert json.loads((ServerState(state_dir).run_path).read_text()) == {
        "dns": ["192.0.2.53"],
        "nat": True,
        "tun": "vpn0",
    }
    args = run_args(state_dir)
    assert args.nat and args.tun == "vpn0" and args.dns == [ipaddress.IPv4Address("192.0.2.53")]
    assert args.no_offload is False


def test_flags_on_the_command_line_override_stored_options(state_dir: str) -> None:
    cli("set", "--state-dir", state_dir, "--dns", "192.0.2.53", "--tun", "vpn0")
    args = run_args(state_dir, "--tun", "other0", "--dns", "198.51.100.1")
    assert args.tun == "other0" and args.dns == [ipaddress.IPv4Address("198.51.100.1")]


def test_set_merges_and_unset_forgets(state_dir: str) -> None:
    cli("set", "--state-dir", state_dir, "--nat", "--no-offload")
    cli("set", "--state-dir", state_dir, "--egress", "eth1", "--unset", "no-offload")
    assert ServerState(state_dir).run_options() == {"nat": True, "egress": "eth1"}
    assert run_args(state_dir).no_offload is False


def test_init_stores_run_options_too_and_set_listen_goes_to_the_settings(state_dir: str) -> None:
    cli("init", "--state-dir", state_dir, "--icmp-reply")
    assert ServerState(state_dir).run_options() == {"icmp_reply": True}
    cli("set", "--state-dir", state_dir, "--listen", "127.0.0.1:443")
    assert ServerState(state_dir).settings().listen == "127.0.0.1:443"


@pytest.mark.parametrize(
    "stored", [{"dns": "192.0.2.1"}, {"dns": ["not-an-ip"]}, {"nat": "yes"}, {"tun": 7}, {"egress": ["x"]}]
)
def test_a_damaged_stored_option_is_one_clear_error(state_dir: str, stored: dict) -> None:
    ServerState(state_dir).save_run_options(stored)
    with pytest.raises(UserError, match=r"run\.json: bad stored value"):
        run_args(state_dir)


def test_set_needs_an_initialised_state_dir(tmp_path) -> None:
    args = server.build_parser().parse_args(["set", "--state-dir", str(tmp_path / "none"), "--nat"])
    with pytest.raises(UserError, match="not an initialised state directory"):
        args.func(args)


def test_the_timers_are_run_options_too(state_dir: str) -> None:
    assert (run_args(state_dir).rekey_after, run_args(state_dir).keepalive) == (None, None)  # the protocol's
    cli("set", "--state-dir", state_dir, "--rekey-after", "2", "--keepalive", "1.5")
    assert ServerState(state_dir).run_options() == {"rekey_after": 2.0, "keepalive": 1.5}
    assert (run_args(state_dir).rekey_after, run_args(state_dir).keepalive) == (2.0, 1.5)
    assert run_args(state_dir, "--rekey-after", "10").rekey_after == 10.0


@pytest.mark.parametrize(
    "stored", [{"rekey_after": 121}, {"rekey_after": 0}, {"keepalive": 26}, {"keepalive": "1"}, {"keepalive": True}]
)
def test_a_stored_timer_out_of_range_is_one_clear_error(state_dir: str, stored: dict) -> None:
    ServerState(state_dir).save_run_options(stored)
    with pytest.raises(UserError, match=r"run\.json: bad stored value"):
        run_args(state_dir)


@pytest.mark.parametrize("flag", [["--rekey-after", "0"], ["--rekey-after", "121"], ["--keepalive", "x"]])
def test_timer_flags_out_of_range_are_refused(state_dir: str, flag: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        server.build_parser().parse_args(["run", "--state-dir", state_dir, *flag])
    assert exc.value.code == 2
    assert "expected seconds from 0.1 to" in capsys.readouterr().err
