"""Tests for the daemon's profile store (daemon.ProfileStore), in tmp_path, without root."""

from __future__ import annotations

import os
import stat

import pytest

from config import Profile, encode_key
from control import ControlError
from daemon import ProfileStore
from errors import UserError

KEY = encode_key(bytes(range(32)))
TEXT = (
    f"[Client]\nName = laptop\nPrivateKey = {KEY}\n[Server]\nPublicKey = {KEY}\nPresharedKey = {KEY}\n"
    "Endpoint = 192.0.2.1:443\nEndpoint = 198.51.100.1:55555\n"
)


@pytest.fixture
def store(tmp_path) -> ProfileStore:
    return ProfileStore(tmp_path / "profiles")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_imported_profile_is_kept_root_only_and_loads_back(store: ProfileStore) -> None:
    profile = store.add("home", TEXT)
    assert profile.endpoints == ("192.0.2.1:443", "198.51.100.1:55555")
    assert mode(store.dir) == 0o700 and mode(store.path("home")) == 0o600
    assert store.load("home") == Profile.parse(TEXT, "x")
    assert store.names() == ["home"]


def test_listing_shows_endpoints_and_the_last_result(store: ProfileStore) -> None:
    store.add("home", TEXT)
    assert store.listing() == [
        {"name": "home", "endpoints": ["192.0.2.1:443", "198.51.100.1:55555"], "last_result": None}
    ]
    store.record_result("home", {"ok": False, "endpoint": "192.0.2.1:443", "error": "refused"})
    result = store.listing()[0]["last_result"]
    assert result["ok"] is False and result["error"] == "refused" and result["at"].endswith("Z")
    assert mode(store.dir / "last-results.json") == 0o600


def test_a_bad_profile_is_refused_and_nothing_is_stored(store: ProfileStore) -> None:
    with pytest.raises(UserError, match="not a valid profile"):
        store.add("home", "[Client]\n")
    assert store.names() == []


@pytest.mark.parametrize("name", ["../etc/passwd", "", ".hidden", "a/b", "x" * 33])
def test_names_that_could_escape_the_directory_are_refused(store: ProfileStore, name: str) -> None:
    with pytest.raises(ControlError, match="bad profile name"):
        store.path(name)


def test_remove_forgets_the_profile_and_its_result(store: ProfileStore) -> None:
    store.add("home", TEXT)
    store.record_result("home", {"ok": True, "endpoint": "192.0.2.1:443"})
    store.remove("home")
    assert store.listing() == []
    with pytest.raises(ControlError, match="no profile named 'home'"):
        store.remove("home")
    with pytest.raises(ControlError, match="import it first"):
        store.load("home")


def test_a_damaged_stored_profile_is_listed_as_unreadable(store: ProfileStore) -> None:
    store.add("home", TEXT)
    store.path("home").write_text("garbage")
    assert store.listing()[0]["endpoints"] is None
