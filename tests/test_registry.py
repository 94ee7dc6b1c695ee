"""Tests for registry.py: the in-memory client registry and its hostile entries.

Runs on a real directory (tmp_path): FIFOs, modes and sizes are the kernel's, not mocks.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from config import ServerState, encode_key, write_private_file
from registry import FULL_SCAN_INTERVAL, MAX_RECORD_SIZE, ClientRegistry


@pytest.fixture
def state(tmp_path) -> ServerState:
    s = ServerState(tmp_path / "state")
    s.init("10.0.0.0/24", "0.0.0.0:55555", "vpn.example.com:55555")
    return s


def registry_of(state: ServerState) -> ClientRegistry:
    registry = ClientRegistry(state.clients_dir)
    registry.refresh()
    return registry


def test_loads_every_client_and_finds_them_by_key(state):
    records = [state.add_client(name, None)[0] for name in ("alice", "bob", "carol")]
    registry = registry_of(state)
    for record in records:
        assert registry.lookup(record.public_key) == record
    assert registry.lookup(bytes(32)) is None
    assert sorted(r.name for r in registry.records()) == ["alice", "bob", "carol"]


def test_add_and_remove_are_seen_on_refresh_and_nothing_else_is_reread(state, caplog):
    alice, _ = state.add_client("alice", None)
    registry = registry_of(state)
    assert registry.refresh() is False  # nothing changed
    bob, _ = state.add_client("bob", None)
    assert registry.refresh() is True
    assert registry.lookup(bob.public_key) == bob
    state.remove_client("alice")
    assert registry.refresh() is True
    assert registry.lookup(alice.public_key) is None


def write_record(state: ServerState, name: str, key: bytes, address: str) -> None:
    record = {"public_key": encode_key(key), "psk": encode_key(bytes(32)), "address": address}
    write_private_file(state.clients_dir / f"{name}.json", json.dumps(record))


def hostile(state: ServerState, kind: str) -> None:
    path = state.clients_dir / f"{kind}.json"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "huge":
        path.write_bytes(b" " * (MAX_RECORD_SIZE + 1))
        os.chmod(path, 0o600)
    elif kind == "badjson":
        path.write_text("{not json")
        os.chmod(path, 0o600)
    elif kind == "writable":
        write_record(state, kind, bytes(range(32)), "10.0.0.9")
        os.chmod(path, 0o666)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(state.key_path)


@pytest.mark.parametrize("kind", ["fifo", "huge", "badjson", "writable", "directory", "symlink"])
def test_hostile_entry_is_skipped_once_and_never_blocks(state, kind, caplog):
    alice, _ = state.add_client("alice", None)
    hostile(state, kind)
    registry = ClientRegistry(state.clients_dir)
    done = threading.Event()

    def load() -> None:
        registry.refresh()
        done.set()

    with caplog.at_level(logging.INFO, logger="registry"):
        threading.Thread(target=load, daemon=True).start()
        assert done.wait(5), "refresh blocked on a hostile entry"
        assert registry.lookup(alice.public_key) == alice
        assert [r.name for r in registry.records()] == ["alice"]
        assert caplog.text.count(f"{kind}.json") == 1
        caplog.clear()
        write_record(state, "bob", bytes(range(100, 132)), "10.0.0.7")  # a later change re-reads bob only
        registry.refresh()
        registry.refresh()
    assert f"{kind}.json" not in caplog.text, "logged again at a later scan"
    assert len(registry.records()) == 2


def test_record_readable_by_others_is_used_with_one_warning(state, caplog):
    alice, _ = state.add_client("alice", None)
    os.chmod(state.clients_dir / "alice.json", 0o644)
    with caplog.at_level(logging.WARNING, logger="registry"):
        registry = registry_of(state)
        registry.refresh()
    assert registry.lookup(alice.public_key) == alice
    assert caplog.text.count("readable by group/other") == 1


def test_missing_directory_keeps_the_last_good_registry(state, caplog):
    alice, _ = state.add_client("alice", None)
    registry = registry_of(state)
    moved = state.dir / "clients.bak"
    state.clients_dir.rename(moved)
    with caplog.at_level(logging.INFO, logger="registry"):
        assert registry.refresh() is False
        registry.refresh()
        assert caplog.text.count("cannot read the client registry") == 1
        assert "ERROR" in caplog.text
        assert registry.lookup(alice.public_key) == alice
        moved.rename(state.clients_dir)
        registry.refresh()
        assert "readable again" in caplog.text
    assert registry.lookup(alice.public_key) == alice


def test_duplicate_public_key_first_file_wins(state, caplog):
    alice, _ = state.add_client("alice", None)
    copy = state.clients_dir / "mallory.json"
    copy.write_text((state.clients_dir / "alice.json").read_text())
    os.chmod(copy, 0o600)
    with caplog.at_level(logging.ERROR, logger="registry"):
        registry = registry_of(state)
    assert registry.lookup(alice.public_key).name == "alice"
    assert "mallory has the same public key as alice" in caplog.text


def test_temporary_files_are_ignored(state):
    state.add_client("alice", None)
    (state.clients_dir / ".bob.json.tmp").write_text("{")
    (state.clients_dir / "notes.txt").write_text("hello")
    assert [r.name for r in registry_of(state).records()] == ["alice"]


def test_a_key_just_added_is_found_without_waiting_for_the_watcher(state):
    state.add_client("alice", None)
    registry = registry_of(state)
    bob, _ = state.add_client("bob", None)
    assert registry.lookup(bob.public_key) == bob  # the directory changed: rescanned at once
    assert registry.lookup(bytes(32)) is None  # unchanged since: no rescan, no disk read


def test_poll_scans_a_changed_directory_at_once_and_an_unchanged_one_rarely(state, monkeypatch):
    alice, _ = state.add_client("alice", None)
    registry = ClientRegistry(state.clients_dir)
    assert registry.poll(0.0) is True  # the first poll scans
    scans = []
    monkeypatch.setattr(registry, "_scan", lambda: scans.append(1) or False)
    registry.poll(2.0)
    assert scans == []  # unchanged: one stat, no scan
    registry.poll(FULL_SCAN_INTERVAL + 0.1)
    assert scans == [1]  # in-place edits are caught by the periodic full scan
    monkeypatch.undo()
    state.remove_client("alice")
    assert registry.poll(FULL_SCAN_INTERVAL + 2.0) is True  # changed: scanned at once
    assert registry.lookup(alice.public_key) is None
