"""Mistakes a user makes: each must end with exit status 2 and one line ``error: ...`` on
stderr that says what is wrong (no traceback), and must leave no TUN behind.

One lab is shared: a running server, and alice registered but not connected.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import SERVER_PORT, TunnelLab, assert_user_error


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelLab]:
    lab = TunnelLab(tmp_path_factory.mktemp("user-errors"))
    try:
        lab.start_server()
        lab.add_client("alice")
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []


def write_profile(lab: TunnelLab, name: str, text: str) -> Path:
    path = lab.workdir / name
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def run_alice(
    lab: TunnelLab, profile: Path | None = None, endpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    alice = lab.peers["alice"]
    result = alice.ns.run(*lab.client_argv(alice, profile=profile, endpoint=endpoint))
    assert alice.ns.links("tun") == [], "a client that failed must not leave a TUN"
    return result


def test_port_already_in_use(lab: TunnelLab) -> None:
    result = lab.server.run(
        sys.executable, "server.py", "run", "--state-dir", lab.state_dir, "--tun", lab.ifname("t9"),
        "--listen", f"0.0.0.0:{SERVER_PORT}",
    )  # fmt: skip
    assert_user_error(result, str(SERVER_PORT), "already in use")
    assert lab.server.links("tun") == [lab.server_tun]
    assert lab.server_process.returncode is None


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_profile(lab: TunnelLab, what: str) -> None:
    path = lab.workdir / "no-such-profile.conf"
    if what == "directory":
        path = lab.workdir / "a-directory.conf"
        path.mkdir(exist_ok=True)
    assert_user_error(run_alice(lab, profile=path), "cannot read profile", str(path))


PROFILE_MISTAKES = {
    "not-ini": ("this is not a profile\n", "not a valid profile"),
    "no-server-section": ("[Client]\nName = x\nPrivateKey = AAAA\n", "not a valid profile"),
    "bad-base64": (None, "PrivateKey is not valid base64"),
    "short-key": (None, "PublicKey must be 32 bytes"),
    "bad-endpoint": (None, "bad port"),
    "empty-label": (None, "bad host"),
    "long-label": (None, "bad host"),
}


@pytest.mark.parametrize("mistake", list(PROFILE_MISTAKES))
def test_invalid_profile(lab: TunnelLab, mistake: str) -> None:
    text, expected = PROFILE_MISTAKES[mistake]
    good = lab.peers["alice"].profile.read_text().splitlines(keepends=True)
    if text is None:
        edits = {
            "bad-base64": ("PrivateKey = ", "PrivateKey = !!not-base64!!\n"),
            "short-key": ("PublicKey = ", "PublicKey = AAAAAAAA\n"),
            "bad-endpoint": ("Endpoint = ", "Endpoint = 192.0.2.1:99999\n"),
            "empty-label": ("Endpoint = ", "Endpoint = vpn..example:55555\n"),
            "long-label": ("Endpoint = ", f"Endpoint = {'a' * 64}.example:55555\n"),
        }
        prefix, replacement = edits[mistake]
        text = "".join(replacement if line.startswith(prefix) else line for line in good)
    assert_user_error(run_alice(lab, profile=write_profile(lab, f"{mistake}.conf", text)), expected)


def test_remove_unknown_client(lab: TunnelLab) -> None:
    assert_user_error(lab.server_cli("remove-client", "nobody"), "unknown client", "nobody")


def test_server_unreachable(lab: TunnelLab) -> None:
    """Nothing listens on the port next to the server's: the connection is refused."""
    endpoint = f"{lab.peers['alice'].link.address_a}:{SERVER_PORT + 1}"
    assert_user_error(run_alice(lab, endpoint=endpoint), "unreachable", endpoint)


@pytest.mark.parametrize("command", ["run", "add-client", "list-clients", "remove-client"])
def test_not_an_initialised_state_dir(lab: TunnelLab, command: str) -> None:
    empty = lab.workdir / "empty-state"
    empty.mkdir(exist_ok=True)
    args = {"add-client": ["add-client", "zed"], "remove-client": ["remove-client", "zed"]}.get(command, [command])
    if command == "run":
        args += ["--listen", f"127.0.0.1:{SERVER_PORT + 2}", "--tun", lab.ifname("t8")]
    result = lab.server.run(sys.executable, "server.py", *args, "--state-dir", empty)
    assert_user_error(result, "not an initialised state directory", str(empty))
    assert lab.server.links("tun") == [lab.server_tun]


@pytest.mark.parametrize("endpoint", ["vpn..example:55555", f"{'a' * 64}.example", ".example:1"])
def test_hostile_endpoint_on_the_command_line(lab: TunnelLab, endpoint: str) -> None:
    assert_user_error(run_alice(lab, endpoint=endpoint), "bad host", endpoint.split(":", maxsplit=1)[0])


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_hostile_profile_file(lab: TunnelLab, kind: str) -> None:
    """A FIFO must not hang the client, a huge file must not be read into memory."""
    path = lab.workdir / f"{kind}.conf"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        write_profile(lab, path.name, lab.peers["alice"].profile.read_text() + "#" * (8 << 20))
    start = time.monotonic()
    result = run_alice(lab, profile=path)
    assert time.monotonic() - start < 30
    assert_user_error(result, "cannot read profile", str(path))
