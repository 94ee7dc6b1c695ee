"""A journal of every change tunlib makes to the host, written *before* the change is made.

Routes, nftables tables, sysctls and resolv.conf outlive a process that is killed with
``kill -9``. So before each change we append its undo step to a JSON file and fsync it; a clean
exit replays the undo steps in reverse order and deletes the file, and ``client.py cleanup`` /
``server.py cleanup`` do the same for a run that died. Every undo step tolerates "already gone",
so undoing twice, or undoing a change that was recorded but never made, is harmless.

Journals live in JOURNAL_DIR, one per program, network namespace and tunnel device. The
namespace's inode number is part of the name because tests and demos run several tunnels in
different namespaces on one machine, and each must only ever undo its own changes. The kernel
reuses inode numbers of deleted namespaces, so the owner record also stores the namespace's
cookie (SO_NETNS_COOKIE, never reused within a boot) and the boot id: a journal whose namespace
is gone is discarded, never applied to the namespace that inherited its number.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from errors import UserError
from netsetup import run_command

log = logging.getLogger(__name__)

JOURNAL_DIR = Path("/var/lib/tunlib")
SO_NETNS_COOKIE = 71
"""``<asm-generic/socket.h>``: a 64-bit id of the socket's network namespace, unique per boot."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def netns_id() -> int:
    """The inode of our network namespace: stable for its lifetime, distinct between namespaces."""
    return os.stat("/proc/self/ns/net").st_ino


def netns_identity() -> dict:
    """What tells this namespace apart from every other, past or present: boot id and cookie."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            cookie: int | None = int.from_bytes(probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        except OSError:  # kernels before 5.14
            cookie = None
    return {"boot": BOOT_ID.read_text().strip(), "cookie": cookie}


def in_initial_netns() -> bool:
    return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino


def recorded_here(identity: dict | None) -> bool:
    """Was a journal with this namespace identity written in the namespace we are in now?

    Same boot: only if the cookie matches. Another boot: only in the initial namespace, which
    is the one namespace that survives a reboot (its resolv.conf change may need undoing).
    """
    if identity is None:
        return True
    current = netns_identity()
    if identity.get("boot") == current["boot"]:
        return identity.get("cookie") == current["cookie"]
    return in_initial_netns()


def journal_path(role: str, tun: str, directory: Path = JOURNAL_DIR) -> Path:
    return directory / f"{role}-{netns_id()}-{tun}.json"


def journals_for(role: str, directory: Path = JOURNAL_DIR) -> list[Path]:
    """Every journal of ``role`` ("client" or "server") left in this network namespace."""
    return sorted(directory.glob(f"{role}-{netns_id()}-*.json"))


def write_in_place(path: str, data: bytes) -> None:
    """Rewrite a file through its existing inode.

    ``/etc/resolv.conf`` may be a bind mount (``ip netns exec`` mounts the namespace's own file
    over it), and renaming a new file over a mount point fails, so we truncate and write.
    """
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


@dataclass
class Journal:
    """The undo steps for one tunnel, persisted in ``path``."""

    path: Path

    def _load(self) -> list[dict]:
        try:
            steps = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read journal {self.path}: {exc}") from None
        if not isinstance(steps, list):
            raise UserError(f"journal {self.path} is corrupt")
        return steps

    def record(self, step: dict) -> None:
        """Append an undo step and make it durable before the caller changes anything."""
        self._save([*self._load(), step])

    def _save(self, steps: list[dict]) -> None:
        """Replace the journal atomically and durably: a temporary file, fsync, rename.

        A crash at any moment leaves either the old journal or the new one, never half of one.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(steps, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def claim(self, program: str) -> None:
        """Start a journal owned by this process, after undoing what a dead owner left.

        Refuses if a live process still owns it: its changes are in use, not leftovers.
        """
        owner = self.live_owner()
        if owner is not None:
            raise UserError(f"{self.path} belongs to running process {owner}: is another tunnel using this device?")
        if self.undo():
            log.info("undid the leftovers of a previous run that did not exit cleanly")
        self.record({"kind": "owner", "pid": os.getpid(), "program": program, "netns": netns_identity()})

    def live_owner(self) -> int | None:
        """The PID of the tunlib process that owns this journal, if it is still running."""
        step = _owner(self._load())
        if step is not None and recorded_here(step.get("netns")):
            try:
                cmdline = Path(f"/proc/{step['pid']}/cmdline").read_bytes()
            except (OSError, KeyError):
                return None
            return step["pid"] if step.get("program", "").encode() in cmdline else None
        return None

    def _forget_last(self) -> None:
        """Drop the newest step: its change was refused, so there is nothing to undo."""
        self._save(self._load()[:-1])

    # -- the kinds of change, each recorded then made ------------------------
    def add_route(self, spec: list[str]) -> None:
        """``ip route add SPEC``, undone by ``ip route del SPEC``."""
        self.record({"kind": "route", "spec": spec})
        result = run_command(["ip", "route", "add", *spec])
        if result.returncode != 0:
            self._forget_last()  # e.g. the route already existed: it is not ours to delete
            raise UserError(f"'ip route add {' '.join(spec)}' failed: {result.stderr.strip()}")

    def add_nft_table(self, family: str, name: str, ruleset: str) -> None:
        """Load a whole nftables table in one transaction (``nft -f``), undone by deleting it.

        The transaction first creates the table if missing and deletes it, so the ruleset replaces
        any table of that name instead of merging its rules into it. A refused transaction
        changed nothing, so, like a refused route, it leaves nothing in the journal.
        """
        self.record({"kind": "nft_table", "family": family, "name": name})
        replace = f"add table {family} {name}\ndelete table {family} {name}\n{ruleset}"
        result = run_command(["nft", "-f", "-"], stdin=replace)
        if result.returncode != 0:
            self._forget_last()
            raise UserError(f"nft refused the {family} {name} table: {result.stderr.strip()}")

    def set_sysctl(self, path: str, value: str) -> None:
        """Write a /proc/sys value, recording the old one."""
        old = Path(path).read_text()
        self.record({"kind": "sysctl", "path": path, "value": old})
        Path(path).write_text(value)

    def replace_file(self, path: str, data: bytes) -> None:
        """Replace a file's contents in place, recording the original bytes."""
        old = Path(path).read_bytes()
        self.record({"kind": "file", "path": path, "content": base64.b64encode(old).decode()})
        write_in_place(path, data)

    def resolvectl(self, interface: str, args: list[str]) -> None:
        """Per-interface DNS through systemd-resolved, undone with ``resolvectl revert``."""
        self.record({"kind": "resolvectl", "interface": interface})
        result = run_command(["resolvectl", *args])
        if result.returncode != 0:
            raise UserError(f"'resolvectl {' '.join(args)}' failed: {result.stderr.strip()}")

    # -- undo -----------------------------------------------------------------
    def undo(self) -> int:
        """Undo every recorded step, newest first, then delete the journal.

        Returns the number of host changes undone (the ownership record is not one).
        """
        steps = self._load()
        owner = _owner(steps)
        if owner is not None and not recorded_here(owner.get("netns")):
            log.warning("discarding %s: its network namespace no longer exists", self.path)
            steps = []
        for step in reversed(steps):
            try:
                _undo_step(step)
            except (OSError, KeyError, ValueError, UserError) as exc:
                log.warning("could not undo %s: %s", step, exc)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return sum(1 for step in steps if step.get("kind") != "owner")


def _owner(steps: list[dict]) -> dict | None:
    """The ownership record (written first by :meth:`Journal.claim`), if any."""
    return next((step for step in steps if step.get("kind") == "owner"), None)


def _undo_step(step: dict) -> None:
    """Undo one step; log what happened, including a command that found nothing to undo."""
    kind = step["kind"]
    what = kind if kind != "route" else "route " + " ".join(step["spec"])
    if kind == "owner":
        return
    if kind == "route":
        result = run_command(["ip", "route", "del", *step["spec"]])
    elif kind == "nft_table":
        result = run_command(["nft", "delete", "table", step["family"], step["name"]])
    elif kind == "sysctl":
        Path(step["path"]).write_text(step["value"])
        result = None
    elif kind == "file":
        write_in_place(step["path"], base64.b64decode(step["content"]))
        result = None
    elif kind == "resolvectl":
        result = run_command(["resolvectl", "revert", step["interface"]])
    else:
        raise ValueError(f"unknown step kind {kind!r}")
    if result is not None and result.returncode != 0:
        # Usually "already gone" (a route leaves with its TUN); either way it is not there now.
        log.info("nothing to undo for %s: %s", what, result.stderr.strip() or f"exit {result.returncode}")
    else:
        log.info("undid %s", what)


def cleanup(role: str, directory: Path = JOURNAL_DIR) -> int:
    """Undo every journal ``role`` left in this namespace by a process that is gone.

    Returns how many changes were undone. Journals of running tunnels are left alone.
    """
    undone = 0
    for path in journals_for(role, directory):
        journal = Journal(path)
        owner = journal.live_owner()
        if owner is not None:
            log.info("%s belongs to running process %d; leaving it", path, owner)
            continue
        undone += journal.undo()
    return undone
