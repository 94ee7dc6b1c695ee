"""The host-change journal: recorded before the change, undone newest first, idempotent.

These tests use only file-based steps ("file", "sysctl"-like writes to a temp file) and the
ownership record, so they need no root and touch nothing outside a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from errors import UserError
from journal import Journal, cleanup, journal_path, journals_for, netns_identity, recorded_here, write_in_place


def test_replace_file_is_recorded_before_and_restored_byte_for_byte(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf"
    original = b"# host file\nnameserver 192.0.2.53\noptions edns0 \r\n\x00odd bytes\n"
    target.write_bytes(original)
    journal = Journal(tmp_path / "j" / "client-1-tun0.json")

    journal.replace_file(str(target), b"nameserver 198.51.100.1\n")

    assert target.read_bytes() == b"nameserver 198.51.100.1\n"
    steps = json.loads(journal.path.read_text())
    assert steps[0]["kind"] == "file" and steps[0]["path"] == str(target)
    assert journal.undo() == 1
    assert target.read_bytes() == original
    assert not journal.path.exists()


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    """A bind-mounted resolv.conf cannot be renamed over: the inode must stay the same."""
    target = tmp_path / "f"
    target.write_bytes(b"a much longer original content\n")
    inode = target.stat().st_ino
    write_in_place(str(target), b"short\n")
    assert target.read_bytes() == b"short\n"
    assert target.stat().st_ino == inode


def test_set_sysctl_style_value_is_restored(tmp_path: Path) -> None:
    knob = tmp_path / "ip_forward"
    knob.write_text("0\n")
    journal = Journal(tmp_path / "server-1-tun0.json")
    journal.set_sysctl(str(knob), "1\n")
    assert knob.read_text() == "1\n"
    journal.undo()
    assert knob.read_text() == "0\n"


def test_undo_runs_newest_first(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"v0")
    journal = Journal(tmp_path / "j.json")
    journal.replace_file(str(target), b"v1")
    journal.replace_file(str(target), b"v2")
    assert journal.undo() == 2
    assert target.read_bytes() == b"v0"


def test_undo_twice_and_undo_of_nothing_are_harmless(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json")
    assert journal.undo() == 0
    target = tmp_path / "f"
    target.write_bytes(b"v0")
    journal.replace_file(str(target), b"v1")
    assert journal.undo() == 1
    assert journal.undo() == 0
    assert target.read_bytes() == b"v0"


def test_claim_undoes_a_dead_owners_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"original")
    path = tmp_path / "client-1-tun0.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    leftover = Journal(path)
    leftover.record({"kind": "owner", "pid": dead_pid, "program": "client.py"})
    leftover.replace_file(str(target), b"changed by a run that was killed")

    fresh = Journal(path)
    fresh.claim("client.py")

    assert target.read_bytes() == b"original"
    steps = json.loads(path.read_text())
    assert [(s["kind"], s["pid"], s["program"]) for s in steps] == [("owner", os.getpid(), "client.py")]
    assert steps[0]["netns"] == netns_identity()


def test_a_journal_from_a_deleted_namespace_is_discarded_not_applied(tmp_path: Path) -> None:
    """The kernel reuses namespace inode numbers; the cookie tells the old namespace apart."""
    target = tmp_path / "resolv.conf"
    target.write_bytes(b"this namespace's own file")
    journal = Journal(tmp_path / "client-1-tun0.json")
    identity = netns_identity()
    journal.record({"kind": "owner", "pid": 0, "program": "client.py", "netns": {**identity, "cookie": -1}})
    journal.record({"kind": "file", "path": str(target), "content": "b2xkIG5hbWVzcGFjZQ=="})

    assert journal.undo() == 0
    assert target.read_bytes() == b"this namespace's own file"
    assert not journal.path.exists()


def test_a_journal_recorded_here_is_recognised() -> None:
    assert recorded_here(netns_identity())
    assert recorded_here(None)  # journals without an identity are trusted, as before


def test_claim_refuses_a_journal_owned_by_a_live_process(tmp_path: Path) -> None:
    path = tmp_path / "client-1-tun0.json"
    live = Journal(path)
    # This very process runs pytest, whose command line contains "pytest".
    live.record({"kind": "owner", "pid": os.getpid(), "program": "pytest"})
    with pytest.raises(UserError, match="belongs to running process"):
        Journal(path).claim("pytest")
    assert live.live_owner() == os.getpid()


def test_a_live_pid_running_something_else_is_not_an_owner(tmp_path: Path) -> None:
    """PIDs are reused: only a process running the recorded program counts as the owner."""
    journal = Journal(tmp_path / "j.json")
    journal.record({"kind": "owner", "pid": 1, "program": "client.py-that-is-not-init"})
    assert journal.live_owner() is None


def test_cleanup_only_takes_this_namespaces_journals_of_that_role(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"original")
    mine = Journal(journal_path("client", "tun9", tmp_path))
    mine.replace_file(str(target), b"changed")
    other_ns = Journal(tmp_path / "client-1-tun9.json")
    other_ns.record({"kind": "file", "path": str(target), "content": ""})
    server = Journal(journal_path("server", "tun9", tmp_path))
    server.record({"kind": "file", "path": str(target), "content": ""})

    assert journals_for("client", tmp_path) == [mine.path]
    assert cleanup("client", tmp_path) == 1
    assert target.read_bytes() == b"original"
    assert other_ns.path.exists() and server.path.exists()
    assert cleanup("client", tmp_path) == 0


def test_a_corrupt_journal_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read journal"):
        Journal(path).undo()
