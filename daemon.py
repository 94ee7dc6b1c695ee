"""``client.py daemon``: the root half of the client, driven by unprivileged user commands.

The split follows sshuttle, the Mullvad daemon and NetworkManager: only this process changes
interfaces, routes, firewall and DNS; users talk to it over a UNIX socket (controlsock.py,
protocol in control.py) and need no root, only membership of the group ``tunlib``.

What it keeps:

* **Profiles** (:class:`ProfileStore`): ``client.py import`` sends the profile's text (the
  daemon never opens a path a user names) and the daemon keeps its own copy, mode 0600, in a
  root-only directory, so the user may delete theirs. Beside them, the last connection result
  of each profile.
* **One connection at a time** (:class:`Connection`): a worker thread that picks a server
  (first, ``--best`` by handshake time, or ``--random``), runs the same :class:`client.Tunnel`
  as ``client.py run``, and when that server fails for good moves on to the next candidate.

Order at start: undo what a killed daemon left (its journals), before anything else; then
serve the socket; then tell systemd READY=1. SIGTERM disconnects cleanly and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from config import CLIENT_NAME, Profile, format_endpoint, resolve_endpoint, write_private_file
from control import (
    STATUS_KEYS,
    ControlError,
    Request,
    authorized,
    drop_counters,
    iso_time,
    order_candidates,
    progress_reply,
    rank_by_handshake,
)
from controlsock import ControlSocket, Peer, Reply, group_id
from errors import UserError
from gateway import ClientGateway
from journal import Journal, cleanup, journal_path
from runtime import StopRequested, StopSignal, require_net_admin
from sdnotify import sd_notify
from tunlib import PeerLink

log = logging.getLogger("daemon")

DEFAULT_SOCKET = "/run/tunlib/client.sock"
DEFAULT_STATE_DIR = "/var/lib/tunlib/profiles"
DEFAULT_GROUP = "tunlib"
SOCKET_MODE = 0o660
FAILOVER_AFTER = 2
"""Failed reconnects to the current server before moving on to the next candidate."""
ROUND_BACKOFF = 5.0
"""Pause after a full round of candidates failed, before trying them all again."""
DISCONNECT_WAIT = 20.0
"""How long ``disconnect`` waits for the tunnel to come down in order (a dial may take 15 s)."""
FORCE_WAIT = 2.0
"""How long ``disconnect --force`` waits before undoing the host changes itself."""
RESULTS_FILE = "last-results.json"


class TunnelLike(Protocol):
    """What the daemon uses of :class:`client.Tunnel` (client.py hands us the class's factory)."""

    state: str
    endpoint: str
    connected_since: float | None
    routes: list[str]
    dns: list[str]
    give_up_after: int | None
    link: PeerLink | None
    settings: Any
    journal: Any

    def connect(self) -> tuple[Any, PeerLink]: ...
    def setup(self) -> None: ...
    def run(self) -> int: ...
    def teardown(self) -> None: ...


TunnelFactory = Callable[[Profile, str, list[str], StopSignal], TunnelLike]
"""(profile, endpoint, ``run`` options, stop flag) -> a tunnel not yet set up."""


# -- profiles ---------------------------------------------------------------------------


class ProfileStore:
    """Imported profiles (``DIR/NAME.conf``, 0600 in a 0700 directory) and their last results."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.lock = threading.Lock()

    def path(self, name: str) -> Path:
        if not CLIENT_NAME.fullmatch(name):
            raise ControlError(f"bad profile name {name!r}")
        return self.dir / f"{name}.conf"

    def add(self, name: str, text: str) -> Profile:
        profile = Profile.parse(text, f"profile {name!r}")  # a UserError names what is wrong
        with self.lock:
            write_private_file(self.path(name), text if text.endswith("\n") else text + "\n")
        log.info("imported profile %s (%s)", name, ", ".join(profile.endpoints))
        return profile

    def remove(self, name: str) -> None:
        with self.lock:
            try:
                self.path(name).unlink()
            except FileNotFoundError:
                raise ControlError(f"no profile named {name!r}") from None
            results = self._results()
            results.pop(name, None)
            self._save_results(results)

    def load(self, name: str) -> Profile:
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ControlError(f"no profile named {name!r}: import it first (client.py import FILE)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the stored profile {name!r}: {exc}") from None
        return Profile.parse(text, f"profile {name!r}")

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.conf") if CLIENT_NAME.fullmatch(p.stem))

    def _results(self) -> dict[str, Any]:
        try:
            value = json.loads((self.dir / RESULTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _save_results(self, results: dict[str, Any]) -> None:
        write_private_file(self.dir / RESULTS_FILE, json.dumps(results, indent=1) + "\n")

    def record_result(self, name: str, result: dict[str, Any]) -> None:
        with self.lock:
            results = self._results()
            results[name] = {"at": iso_time(time.time()), **result}
            self._save_results(results)

    def listing(self) -> list[dict[str, Any]]:
        results = self._results()
        entries = []
        for name in self.names():
            try:
                endpoints: list[str] | None = list(self.load(name).endpoints)
            except (ControlError, UserError) as exc:
                log.error("stored profile %s is unusable: %s", name, exc)
                endpoints = None
            entries.append({"name": name, "endpoints": endpoints, "last_result": results.get(name)})
        return entries


# -- one connection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One server to try: a profile, one of its endpoints, and that endpoint's address.

    Names are resolved once, when ``connect`` starts, before the kill switch or any route is
    in place, and the address is pinned for the life of the connection (as ``run`` does).
    """

    name: str
    profile: Profile
    endpoint: str
    address: tuple[str, int]

    @property
    def pinned(self) -> str:
        return format_endpoint(*self.address)

    def __str__(self) -> str:
        return f"{self.name} at {self.endpoint}"


class Connection:
    """The daemon's worker for one ``connect``: choose, connect, carry, fail over, tear down.

    With the kill switch, the connection raises it once, for every candidate, before the
    first dial, and lowers it only when the connection ends: the tunnels it runs one after
    the other never hold it themselves, so failing over from one server to the next leaves
    no moment in which traffic could leave outside a tunnel.

    The caller of :meth:`start` reads ``events`` until ``("connected", ...)`` or
    ``("failed", reason)``; ``("progress", text)`` lines come before. After that first outcome the
    worker keeps going on its own until :meth:`stop`.
    """

    def __init__(
        self,
        candidates: list[Candidate],
        pick: str,
        *,
        options: list[str],
        kill_switch: bool,
        tun: str,
        factory: TunnelFactory,
        store: ProfileStore,
    ) -> None:
        self.candidates = candidates
        self.pick = pick
        self.options = options
        self.kill_switch = kill_switch
        self.guard = Journal(journal_path("client", f"{tun}-ks"))
        """The kill switch's own journal, apart from each tunnel's."""
        self.tun = tun
        self.factory = factory
        self.store = store
        self.stop_flag = StopSignal(handle_signals=False)
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.tunnel: TunnelLike | None = None
        """The tunnel being set up or running, for ``status`` and ``disconnect --force``."""
        self.candidate: Candidate | None = None
        self.ever_connected = False
        self.outcome_sent = False
        self.abandoned = False
        self.thread = threading.Thread(target=self._run, name="connection", daemon=True)

    @property
    def state(self) -> str:
        if not self.thread.is_alive() or self.abandoned:
            return "disconnected"
        if not self.ever_connected:
            return "connecting"
        tunnel = self.tunnel
        return "reconnecting" if tunnel is None or tunnel.state == "connecting" else tunnel.state

    def start(self) -> None:
        self.thread.start()

    def stop(self, reason: str) -> None:
        self.stop_flag.request(reason)

    def _progress(self, text: str) -> None:
        log.info("%s", text)
        self.events.put(("progress", text))

    def _outcome(self, kind: str, text: str) -> None:
        """Tell the waiting ``connect`` caller, once: "connected" or "failed"."""
        if not self.outcome_sent:
            self.outcome_sent = True
            self.events.put((kind, text))

    # -- choosing ---------------------------------------------------------------------
    def _order(self) -> list[Candidate]:
        if self.pick != "best":
            return order_candidates(self.candidates, self.pick, random.SystemRandom())
        measured = [(candidate, self._probe(candidate)) for candidate in self.candidates]
        if all(seconds is None for _c, seconds in measured):
            raise UserError("no server answered a handshake")
        return rank_by_handshake(measured)

    def _probe(self, candidate: Candidate) -> float | None:
        """Seconds for a full dial and handshake with ``candidate``, or None if it failed."""
        self._progress(f"dialing {candidate} (measuring)")
        try:
            tunnel = self.factory(candidate.profile, candidate.pinned, self.options, self.stop_flag)
        except UserError as exc:
            self._progress(f"{candidate}: {exc}")
            return None
        try:
            started = time.monotonic()
            _settings, link = tunnel.connect()
            seconds = time.monotonic() - started
            link.close()
        except UserError as exc:
            self._progress(f"{candidate}: {exc}")
            return None
        self._progress(f"{candidate}: handshake in {seconds * 1000:.0f} ms")
        return seconds

    # -- running ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.kill_switch:
                self._raise_kill_switch()
            order = self._order()
            index = 0
            while not self.stop_flag.is_set():
                error = self._run_one(order[index % len(order)])
                if error is None:
                    break  # stopped
                index += 1
                if not self.ever_connected and index >= len(order):
                    self._outcome("failed", f"no server could be reached; last error: {error}")
                    break
                if index % len(order) == 0 and self.stop_flag.wait(ROUND_BACKOFF):
                    break
        except StopRequested:
            pass
        except (UserError, OSError) as exc:  # the kill switch could not go up
            self._outcome("failed", str(exc) if isinstance(exc, UserError) else f"{exc.strerror or exc}")
        finally:
            self.guard.undo()
            self._outcome("failed", "disconnected before the tunnel came up")

    def _raise_kill_switch(self) -> None:
        first, *rest = [c.address for c in self.candidates]
        self.guard.claim("client.py")
        ClientGateway(self.guard, self.tun).kill_switch(*first, also=rest)

    def _run_one(self, candidate: Candidate) -> str | None:
        """Set up, run and tear down one tunnel. Returns why it ended, or None when stopped."""
        self.candidate = candidate
        self._progress(f"dialing {candidate}")
        tunnel: TunnelLike | None = None
        try:
            tunnel = self.factory(candidate.profile, candidate.pinned, self.options, self.stop_flag)
            tunnel.journal.claim("client.py")
            tunnel.give_up_after = FAILOVER_AFTER
            self.tunnel = tunnel
            tunnel.setup()
            self.ever_connected = True
            self._progress(f"connected to {candidate} as {tunnel.settings.address}")
            self.store.record_result(candidate.name, {"ok": True, "endpoint": candidate.endpoint})
            self._outcome("connected", str(candidate))
            tunnel.run()
            return None
        except StopRequested:
            return None
        except (UserError, OSError) as exc:
            if isinstance(exc, OSError):  # e.g. the journal's disk is full: this try failed
                exc = UserError(f"{exc.strerror or exc}")
            log.warning("%s: %s", candidate, exc)
            self.store.record_result(candidate.name, {"ok": False, "endpoint": candidate.endpoint, "error": str(exc)})
            if not self.ever_connected:
                self._progress(f"{candidate}: {exc}")
            return str(exc)
        finally:
            self.tunnel = None
            if tunnel is not None:
                tunnel.teardown()

    def force_teardown(self) -> None:
        """``disconnect --force`` when the worker does not finish: undo the host changes now.

        The worker is left to end on its own (a dial or handshake ends within 15 s) and tears
        down whatever it still holds; the daemon refuses a new connect until it has ended, since
        a new tunnel would share its journal.
        """
        self.abandoned = True
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.link is not None:
                tunnel.link.close()
            tunnel.journal.undo()
        self.guard.undo()


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
    """Answers control requests; owns the profile store and the current connection."""

    def __init__(self, store: ProfileStore, factory: TunnelFactory, tun: str, gid: int | None, group: str) -> None:
        self.store = store
        self.factory = factory
        self.tun = tun
        self.gid = gid
        self.group = group
        self.lock = threading.Lock()
        self.connection: Connection | None = None

    def authorize(self, peer: Peer) -> str | None:
        if authorized(peer.uid, peer.groups(), self.gid):
            return None
        return f"permission denied: uid {peer.uid} is neither root nor a member of group {self.group!r}"

    def handle(self, request: Request, peer: Peer, reply: Reply) -> Any:
        f = request.fields
        if request.command == "status":
            return self.status()
        if request.command == "list":
            return self.store.listing()
        if request.command == "import":
            profile = self.store.add(f["name"], f["profile"])
            return {"name": f["name"], "endpoints": list(profile.endpoints)}
        if request.command == "remove":
            self.store.remove(f["name"])
            return {"name": f["name"]}
        if request.command == "connect":
            return self.connect(f, reply)
        if request.command == "disconnect":
            return self.disconnect(f["force"])
        raise ControlError(f"unknown command {request.command!r}")  # parse_request lets none through

    # -- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        conn = self.connection
        state = conn.state if conn is not None else "disconnected"
        tunnel = conn.tunnel if conn is not None and state != "disconnected" else None
        link = tunnel.link if tunnel is not None else None
        counters = link.counters if link is not None else None
        result: dict[str, Any] = {
            "state": state,
            "profile": conn.candidate.name if conn is not None and conn.candidate and state != "disconnected" else None,
            "endpoint": tunnel.endpoint if tunnel is not None else None,
            "address": str(tunnel.settings.address) if tunnel is not None and tunnel.settings else None,
            "connected_since": iso_time(tunnel.connected_since) if tunnel is not None else None,
            "last_handshake": round(time.time() - link.handshake_at, 1) if link is not None else None,
            "rx_bytes": counters.rx_bytes if counters else 0,
            "tx_bytes": counters.tx_bytes if counters else 0,
            "rx_packets": counters.rx_packets if counters else 0,
            "tx_packets": counters.tx_packets if counters else 0,
            "dropped": drop_counters(counters),
            "routes": list(tunnel.routes) if tunnel is not None else [],
            "dns": list(tunnel.dns) if tunnel is not None else [],
            "kill_switch": bool(conn is not None and conn.kill_switch and state != "disconnected"),
        }
        assert tuple(result) == STATUS_KEYS
        return result

    # -- connect ------------------------------------------------------------------------
    def candidates(self, name: str | None, reply: Reply) -> list[Candidate]:
        """Every endpoint of profile ``name`` (or of every profile), resolved now."""
        names = [name] if name is not None else self.store.names()
        if not names:
            raise ControlError("no profiles imported yet: client.py import PROFILE")
        found, error = [], ""
        for n in names:
            profile = self.store.load(n)
            for endpoint in profile.endpoints:
                try:
                    found.append(Candidate(n, profile, endpoint, resolve_endpoint(endpoint)))
                except UserError as exc:
                    error = f"{n} at {endpoint}: {exc}"
                    reply.send(progress_reply(error))
        if not found:
            raise ControlError(error)
        return found

    def connect(self, f: dict[str, Any], reply: Reply) -> dict[str, Any]:
        options = ["--tun", self.tun]  # no --kill-switch: the connection holds it (see Connection)
        if f["full_tunnel"]:
            options.append("--full-tunnel")
        for route in f["routes"]:
            options += ["--route", route]
        with self.lock:
            current = self.connection
            if current is not None and current.thread.is_alive():
                if current.abandoned:
                    raise ControlError("the previous tunnel is still shutting down; try again in a few seconds")
                raise ControlError(f"already {current.state}: client.py disconnect first")
            if current is not None:
                current.stop_flag.close()
            candidates = self.candidates(f["name"], reply)
            conn = Connection(
                candidates,
                f["pick"],
                options=options,
                kill_switch=f["kill_switch"],
                tun=self.tun,
                factory=self.factory,
                store=self.store,
            )
            self.connection = conn
            conn.start()
        while True:
            kind, text = conn.events.get()
            if kind == "progress":
                reply.send(progress_reply(text))
            elif kind == "connected":
                return self.status()
            elif kind == "failed":
                raise ControlError(text)

    def disconnect(self, force: bool) -> dict[str, Any]:
        with self.lock:
            conn = self.connection
            if conn is None or not conn.thread.is_alive() or conn.abandoned:
                return {"was": "disconnected"}
            was = conn.state
            conn.stop("disconnect")
            conn.thread.join(FORCE_WAIT if force else DISCONNECT_WAIT)
            if conn.thread.is_alive():
                if not force:
                    raise ControlError("the tunnel did not come down in time: try client.py disconnect --force")
                log.warning("disconnect --force: the tunnel did not stop in %.0f s; undoing now", FORCE_WAIT)
                conn.force_teardown()
        log.info("disconnected (was %s)", was)
        return {"was": was}

    def shutdown(self) -> None:
        conn = self.connection
        if conn is not None and conn.thread.is_alive():
            conn.stop("SIGTERM")
            conn.thread.join(DISCONNECT_WAIT)
            if conn.thread.is_alive():
                conn.force_teardown()


def run_daemon(args: argparse.Namespace, factory: TunnelFactory) -> int:
    """``client.py daemon``: recover, serve, notify systemd, and on SIGTERM disconnect and exit."""
    require_net_admin()
    stop = StopSignal()
    undone = cleanup("client")  # a daemon killed with -9 left routes, firewall, DNS: undo first
    if undone:
        log.info("undid %d change(s) left by a client that did not exit cleanly", undone)
    store = ProfileStore(args.state_dir)
    gid = group_id(args.group)
    if gid is None:
        log.warning("group %r does not exist: only root may use %s", args.group, args.socket)
    daemon = Daemon(store, factory, args.tun, gid, args.group)
    stop.on_usr1(lambda: log.info("status: %s", json.dumps(daemon.status())))
    control = ControlSocket(args.socket, daemon.handle, daemon.authorize, mode=SOCKET_MODE, gid=gid)
    try:
        log.info("daemon serving %s (group %s), profiles in %s", args.socket, args.group, store.dir)
        sd_notify("READY=1")
        stop.wait()
        log.info("%s received, shutting down", stop.signal_name)
        sd_notify("STOPPING=1")
        daemon.shutdown()
    finally:
        control.close()
    return 0
