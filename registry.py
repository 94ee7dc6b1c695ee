"""The running server's client registry: ``clients/*.json`` held in memory, reloaded on change.

A handshake looks a client up by its public key in a dict, so it never reads a file and
1,000 registered clients cost what 3 do. A scan compares each file's (inode, size, mtime,
mode) with what it saw last time and re-reads only what changed. The server's watcher thread
calls :meth:`poll` every REGISTRY_POLL_INTERVAL: it scans when the directory has changed
(``add-client`` and ``remove-client`` rename and unlink, which changes it) and otherwise only
every FULL_SCAN_INTERVAL, to catch a record edited in place; so an idle registry of any size
costs one ``stat`` per poll. A lookup costs one ``stat`` of the directory
(metadata the kernel has cached): if the directory changed since the last scan (``add-client``
and ``remove-client`` rename or unlink a record), it is rescanned first, so both take effect
for the very next handshake. Only a sender that passed mac1 and Noise (three X25519
operations, far dearer than a stat) gets to a lookup, and a stranger cannot change the
directory, so no handshake can be made to cost a scan.

The state directory is trusted, but what is in it may be broken or hostile, and nothing there
may lock clients out:

- an entry that is not a regular file (a FIFO, a device, a directory, a symlink), one larger
  than MAX_RECORD_SIZE, one that is not a valid record, or one writable by group or other is
  skipped, with one log line when it is first seen (not at every scan); files are opened with
  O_NONBLOCK | O_NOFOLLOW and checked with fstat before any read, so none can block;
- a record readable by group or other is used, with one warning (its psk may have leaked);
- a missing or unreadable ``clients/`` directory is logged as an error and the last good
  registry is kept: a directory being restored from backup must not disconnect everyone.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from config import ClientRecord, parse_client_record
from errors import UserError

log = logging.getLogger(__name__)

FULL_SCAN_INTERVAL = 30.0
"""Seconds between scans of an unchanged directory (an in-place edit does not change it)."""
MAX_RECORD_SIZE = 4096
"""A record is about 150 bytes; a larger file is not one of ours."""
RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class _Seen:
    """What a scan saw of one file, and what came of reading it."""

    signature: tuple[int, int, int, int]
    """(inode, size, mtime_ns, mode): the file is re-read only when this changes."""
    record: ClientRecord | None
    """None: skipped (already logged)."""


class ClientRegistry:
    """Registered clients by public key. ``lookup`` may be called from any thread while another
    runs ``refresh``: a refresh builds a new dict and swaps it in with one assignment."""

    def __init__(self, clients_dir: Path) -> None:
        self.dir = clients_dir
        self._seen: dict[str, _Seen] = {}
        self._by_key: dict[bytes, ClientRecord] = {}
        self._dir_error: str | None = None
        self._dir_mtime = 0
        self._last_scan: float | None = None
        self._lock = threading.Lock()
        """One scan at a time (the watcher thread, or a lookup that missed)."""

    def lookup(self, public_key: bytes) -> ClientRecord | None:
        if self._dir_changed():
            self.refresh()
        return self._by_key.get(public_key)

    def _dir_changed(self) -> bool:
        if self._dir_error is not None:
            return True  # the last scan failed: try again
        try:
            return os.stat(self.dir).st_mtime_ns != self._dir_mtime
        except OSError:
            return True  # gone or unreadable: let a scan find out and say so (once)

    def records(self) -> list[ClientRecord]:
        return list(self._by_key.values())

    def poll(self, now: float) -> bool:
        """The watcher's call: scan if the directory changed or the last scan is FULL_SCAN_INTERVAL
        old (``now`` on any monotonic clock). Returns True if the registry changed."""
        if self._last_scan is not None and now - self._last_scan < FULL_SCAN_INTERVAL and not self._dir_changed():
            return False
        self._last_scan = now
        return self.refresh()

    def refresh(self) -> bool:
        """Scan the directory; re-read new and changed files. Returns True if the registry changed."""
        with self._lock:
            return self._scan()

    def _scan(self) -> bool:
        try:
            self._dir_mtime = os.stat(self.dir).st_mtime_ns
            entries = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(self.dir)}
        except OSError as exc:
            error = f"cannot read the client registry {self.dir}: {exc.strerror}"
            if error != self._dir_error:
                log.error("%s; keeping the %d clients loaded before", error, len(self._by_key))
                self._dir_error = error
            return False
        if self._dir_error is not None:
            log.info("the client registry %s is readable again", self.dir)
            self._dir_error = None
        seen: dict[str, _Seen] = {}
        changed = False
        for name in sorted(entries):
            if not name.endswith(RECORD_SUFFIX) or name.startswith("."):
                continue  # add-client's temporary files are dot-files
            st = entries[name]
            signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
            previous = self._seen.get(name)
            if previous is not None and previous.signature == signature:
                seen[name] = previous
                continue
            seen[name] = _Seen(signature, self._load(self.dir / name))
            changed = True
        changed = changed or seen.keys() != self._seen.keys()
        self._seen = seen
        if changed:
            self._by_key = self._index(seen)
        return changed

    @staticmethod
    def _load(path: Path) -> ClientRecord | None:
        """Read one record without blocking, or log why it is skipped and return None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            log.error("skipping client record %s: %s", path, exc.strerror)
            return None
        try:
            st = os.fstat(fd)
            why = _unusable(st)
            if why is not None:
                log.error("skipping client record %s: %s", path, why)
                return None
            data = os.read(fd, MAX_RECORD_SIZE + 1)
        except OSError as exc:
            log.error("skipping client record %s: %s", path, exc.strerror)
            return None
        finally:
            os.close(fd)
        try:
            record = parse_client_record(path.name[: -len(RECORD_SUFFIX)], data.decode("utf-8"), path)
        except UnicodeDecodeError:
            log.error("skipping client record %s: not UTF-8 text", path)
            return None
        except UserError as exc:
            log.error("skipping client record: %s", exc)
            return None
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("client record %s is readable by group/other: its preshared key may have leaked", path)
        return record

    @staticmethod
    def _index(seen: dict[str, _Seen]) -> dict[bytes, ClientRecord]:
        """Records by public key; of two files with one key, the first by name wins (logged)."""
        by_key: dict[bytes, ClientRecord] = {}
        for entry in seen.values():
            record = entry.record
            if record is None:
                continue
            if record.public_key in by_key:
                first = by_key[record.public_key].name
                log.error("client %s has the same public key as %s: ignored", record.name, first)
                continue
            by_key[record.public_key] = record
        return by_key


def _unusable(st: os.stat_result) -> str | None:
    """Why a record file cannot be used, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > MAX_RECORD_SIZE:
        return f"{st.st_size} bytes, more than the {MAX_RECORD_SIZE} a record can have"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group/other (mode {stat.S_IMODE(st.st_mode):04o}): anyone could replace its key"
    return None
