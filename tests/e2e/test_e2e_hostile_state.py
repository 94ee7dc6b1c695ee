"""A hostile or broken server state directory must not lock clients out.

One server: its key readable by others (a warning at start), alice connected. Then entries the
registry cannot use appear in ``clients/`` (a FIFO, a huge file, bad JSON, a group-writable
record): each is skipped with one log line, once, and a client registered afterwards still
connects. Then ``clients/`` disappears for a while: an error is logged, and nobody is cut off.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from netlab import TunnelLab

HOSTILE = ["fifo", "huge", "badjson", "writable"]
REGISTRY_POLL_INTERVAL = 2.0
"""server.REGISTRY_POLL_INTERVAL."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelLab]:
    lab = TunnelLab(tmp_path_factory.mktemp("hostile-state"))
    try:
        os.chmod(lab.state_dir / "server.key", 0o644)
        lab.start_server()
        lab.start_client(lab.add_client("alice"))
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []


def test_server_key_readable_by_others_is_a_warning(lab: TunnelLab) -> None:
    log = lab.server_process.log()
    assert f"{lab.state_dir / 'server.key'} is accessible to group/other (mode 0644)" in log
    assert "chmod 600" in log


def make_hostile(clients: os.PathLike[str], kind: str) -> None:
    path = os.path.join(clients, f"{kind}.json")
    if kind == "fifo":
        os.mkfifo(path, 0o600)
        return
    text = {
        "huge": " " * (1 << 20),
        "badjson": "{not json",
        "writable": json.dumps({"public_key": "A" * 43 + "=", "psk": "A" * 43 + "=", "address": "10.99.0.200"}),
    }[kind]
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o666 if kind == "writable" else 0o600)


def skip_lines(lab: TunnelLab, name: str) -> int:
    return sum(1 for line in lab.server_process.log().splitlines() if "skipping client record" in line and name in line)


def test_hostile_entries_are_skipped_once_and_block_nobody(lab: TunnelLab) -> None:
    bob = lab.add_client("bob")  # registered before: add-client refuses to edit a broken directory
    clients = lab.state_dir / "clients"
    for kind in HOSTILE:
        make_hostile(clients, kind)
    lab.start_client(bob)  # the handshake's lookup rescans the changed directory: must not block
    assert bob.ns.ping(lab.server_ip).all_answered
    time.sleep(2.5 * REGISTRY_POLL_INTERVAL)  # the watcher scans again, twice
    for kind in HOSTILE:
        assert skip_lines(lab, f"{kind}.json") == 1, lab.server_process.log()
    assert lab.peers["alice"].ns.ping(lab.server_ip).all_answered


def test_missing_clients_directory_is_an_error_not_an_empty_registry(lab: TunnelLab) -> None:
    clients, moved = lab.state_dir / "clients", lab.state_dir / "clients.restoring"
    clients.rename(moved)
    try:
        time.sleep(2.5 * REGISTRY_POLL_INTERVAL)
        log = lab.server_process.log()
        assert log.count("cannot read the client registry") == 1, log
        assert "no longer registered" not in log
        assert lab.peers["alice"].ns.ping(lab.server_ip).all_answered
    finally:
        moved.rename(clients)
    lab.server_process.wait_for_log("readable again", timeout=10)
    assert lab.peers["alice"].ns.ping(lab.server_ip).all_answered
