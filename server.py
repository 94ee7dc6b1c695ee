#!/usr/bin/env python3
"""tunlib server: one TUN device, many clients, each on its own TCP connection.

    server.py init --state-dir DIR [--subnet 10.0.0.0/24] [--listen 0.0.0.0:55555] [--endpoint HOST:PORT]
                   [--tls [--server-name NAME] [--cert FILE --key FILE]]
    server.py add-client NAME --state-dir DIR [--address IP]
    server.py list-clients --state-dir DIR
    server.py remove-client NAME --state-dir DIR
    server.py run --state-dir DIR [--listen HOST:PORT] [--tun tun0] [--icmp-reply] [--no-offload]
                  [--isolate-clients] [--nat [--egress IFACE]] [--dns IP]
                  [--rekey-after SECONDS] [--keepalive SECONDS] [--tls] [--fallback HOST:PORT] [-v]
    server.py set --state-dir DIR [any run option ...] [--unset OPTION]   # stored; run uses them
    server.py status --state-dir DIR [--json]    # what the running server sees, like 'wg show'
    server.py cleanup           # undo NAT rules and sysctls left by a crashed run

Threads while running: the gatekeeper accepts connections and runs every handshake in one
selector loop (gatekeeper.py); one reads the TUN and routes each packet to its client's queue;
one watches the client registry; and per authenticated client, a receiver (socket -> TUN, and
the session's timers) and a sender (queue -> socket). A stranger on the port never gets a
thread. Every thread is supervised: whatever ends a client's thread ends that client's session
(logged once, with the reason) and nobody else's; a failed server-wide thread stops the server
(exit status 1) instead of leaving it half alive.
In TLS mode the loop also runs the TLS handshakes (portshare.py); only a web visitor relayed to
the ``--fallback`` website gets a thread (at most 32 at once).
"""

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import interpreter

if __name__ == "__main__":
    interpreter.use_project_venv()  # first: re-runs us under .venv if this Python lacks the requirements

from admission import LIMIT_REFUSALS
from carrier import server_context
from config import (
    ClientRecord,
    ServerSettings,
    ServerState,
    check_certificate,
    encode_key,
    format_endpoint,
    parse_endpoint,
)
from control import ControlError, Request, drop_counters, iso_time, request
from controlsock import ControlSocket, Handler, Peer, Reply, call
from errors import UserError
from framing import classify_first_frame
from gatekeeper import Gatekeeper
from journal import Journal, journal_path
from messages import ClientHello, SessionSettings
from nat import enable_nat
from netsetup import configure_interface
from portshare import Fallback, TlsFront, TlsHandshake, Visit
from registry import ClientRegistry
from rekey import KEEPALIVE, REKEY_AFTER_TIME, Policy, ResponderRole
from runtime import TIMER_OPTIONS, StopSignal, add_cleanup_command, add_timer_options, require_net_admin, run_main
from sdnotify import sd_notify
from session import PROLOGUE, Admission, Established, ReplayGuard, ServerHandshake, server_link
from tundev import TunDevice, open_tun
from tunlib import (
    ClientSession,
    PeerLink,
    ServerRouter,
    SessionEnd,
    pump_queue_to_link,
    run_supervised,
    supervise,
)

log = logging.getLogger("server")

SHUTDOWN_JOIN_TIMEOUT = 1.0
"""All threads together get this long to finish at shutdown (the promise is 2 s in all)."""
REGISTRY_POLL_INTERVAL = 2.0
"""How often the watcher looks for registry changes and closes the sessions of removed clients."""
LISTEN_BACKLOG = 4096
"""Connections the kernel completes before we accept them (capped by net.core.somaxconn). Deep,
so that a burst of strangers does not make the kernel drop a real client's SYN (a 1 s retry)."""
CONTROL_SOCKET = "control.sock"
"""The running server's status socket, inside the (root-only, 0700) state directory."""
MAX_DNS_SERVERS = 3
"""glibc's resolver reads at most three nameserver lines (MAXNS)."""


class TlsPort:
    """TLS mode: the server's certificate and the website that strangers are handed to."""

    def __init__(self, context: ssl.SSLContext, fallback: Fallback) -> None:
        self.context = context
        self.fallback = fallback

    def front(self, static_public: bytes, machine: ServerHandshake, now: float) -> TlsHandshake:
        """A new connection's handshake behind TLS; tunlib clients are told apart by mac1."""
        classify = functools.partial(classify_first_frame, static_public)
        return TlsHandshake(TlsFront(self.context, classify), machine, now)

    def visitor(self, conn: object, visit: Visit, where: str) -> None:
        self.fallback.admit(conn, visit.received, where)  # type: ignore[arg-type]


class Server:
    """A running server: the listener, the TUN, the router and the client sessions."""

    def __init__(
        self,
        *,
        state: ServerState,
        private_key: bytes,
        settings: ServerSettings,
        listener: socket.socket,
        tun: TunDevice,
        icmp_reply: bool,
        dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
        isolate_clients: bool = False,
        rekey_after: float | None = None,
        keepalive: float | None = None,
        on_failure: Callable[[], None] = lambda: None,
        stop: StopSignal | None = None,
        tls: TlsPort | None = None,
    ) -> None:
        self.state = state
        self.tls = tls
        self.rekey_after = rekey_after
        self.keepalive = keepalive
        self.policy = Policy.for_server(rekey_after or REKEY_AFTER_TIME, keepalive or KEEPALIVE)
        self.on_failure = on_failure
        self.failure = ""
        """Why a server-wide thread failed (then the server stops), or empty."""
        self.dns = dns
        self.settings = settings
        self.listener = listener
        self.tun = tun
        own6 = settings.server_interface6.ip.packed if settings.server_interface6 else None
        self.router = ServerRouter(
            tun, settings.server_interface.ip.packed, icmp_reply, isolate_clients, own_address6=own6
        )
        self.stopping = stop if stop is not None else StopSignal(handle_signals=False)
        """The one stop flag: raised by a signal, a failed server-wide thread or :meth:`stop`; the
        TUN reader polls it, every other thread checks or waits on it."""
        self.registry = ClientRegistry(state.clients_dir)
        self.registry.refresh()
        replay = ReplayGuard()
        self.admission = Admission(private_key, self.registry.lookup, replay.is_new, replay.confirm, self.settings_for)
        if tls is None:
            self.gatekeeper = Gatekeeper(listener, self.admission, self.start_session, self.stopping)
        else:
            self.gatekeeper = Gatekeeper(
                listener,
                self.admission,
                self.start_session,
                self.stopping,
                tls=functools.partial(tls.front, self.admission.static_public),
                on_visitor=tls.visitor,
            )
        self.threads: list[threading.Thread] = []
        self.connections: set[threading.Thread] = set()
        """One receiver thread per authenticated connection."""
        self.connections_lock = threading.Lock()
        self.origins: dict[ClientSession, tuple[str, float]] = {}
        """Each live session's remote endpoint and the time it was attached (for ``status``)."""

    # -- admission policy ---------------------------------------------------
    def settings_for(self, record: ClientRecord, _hello: ClientHello) -> SessionSettings:
        address6 = self.settings.client_address6(record)
        prefix6 = self.settings.subnet6.prefixlen if self.settings.subnet6 else 0
        return SessionSettings(
            address=ipaddress.IPv4Interface(f"{record.address}/{self.settings.subnet.prefixlen}"),
            server_address=self.settings.server_interface.ip,
            mtu=self.settings.mtu,
            offload=self.tun.offload,
            dns=self.dns,
            address6=None if address6 is None else ipaddress.IPv6Interface(f"{address6}/{prefix6}"),
            rekey_after=self.rekey_after,
            keepalive=self.keepalive,
        )

    # -- threads ------------------------------------------------------------
    def start(self) -> None:
        self._spawn("tun-reader", self.router.pump_tun, self.stopping)
        self._spawn("gatekeeper", self.gatekeeper.run)
        self._spawn("registry-watch", self.watch_registry)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        """Start a server-wide thread; if it fails, the whole server stops rather than run on
        without it (a dead TUN reader would leave every client connected but cut off)."""

        def run() -> None:
            try:
                target(*args)
            except Exception as exc:
                if not self.stopping.is_set():
                    self.failure = f"thread {name} failed: {type(exc).__name__}: {exc}"
                    log.error("%s; stopping the server", self.failure)
                    log.debug("the failure in detail", exc_info=exc)
                    self.on_failure()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def watch_registry(self) -> None:
        """Reload the registry when it changes; close the sessions of clients removed from it.

        Handshakes see the reloaded registry at once; closing makes ``remove-client`` cut an
        established session too (within REGISTRY_POLL_INTERVAL), as removing a WireGuard peer does.
        """
        while not self.stopping.wait(REGISTRY_POLL_INTERVAL):
            self.registry.poll(time.monotonic())  # a lookup may have rescanned already: compare regardless
            registered = {(c.public_key, c.address.packed) for c in self.registry.records()}
            for session in self.router.connected():
                if (session.public_key, session.address) not in registered:
                    log.info("client %s is no longer registered; closing its session", session.name)
                    session.close()

    def start_session(self, sock: socket.socket, established: Established, where: str) -> None:
        """Called by the gatekeeper for an authenticated client: its session gets its threads."""
        thread = threading.Thread(
            target=self._serve_session,
            args=(established.record, established.settings, server_link(sock, established), where),
            name=f"conn-{established.record.name}",
            daemon=True,
        )
        with self.connections_lock:
            self.connections.add(thread)
        thread.start()

    def _serve_session(self, record: ClientRecord, settings: SessionSettings, link: PeerLink, where: str) -> None:
        try:
            self.run_session(record, settings, link, where)
        finally:
            with self.connections_lock:
                self.connections.discard(threading.current_thread())

    def run_session(self, record: ClientRecord, settings: SessionSettings, link: PeerLink, where: str) -> None:
        """Route to this client and carry its packets until its session ends, for any reason.

        This thread receives; a second one sends. Both are supervised: the first to end, however
        it ends, closes the session (which wakes the other), and its reason is logged once.
        """
        if self.stopping.is_set():
            link.close()
            return
        admission = self.admission
        link.configure(
            self.policy,
            ResponderRole(
                admission.static_private, record.public_key, record.psk, PROLOGUE, admission.confirm_timestamp
            ),
        )
        address6 = self.settings.client_address6(record)
        session = ClientSession(
            record.name, record.public_key, record.address.packed, link, address6.packed if address6 else None
        )
        replaced = self.router.attach(session)
        if replaced is not None:
            log.info("client %s reconnected; closing its previous connection", record.name)
            replaced.close()
        self.origins[session] = (where, time.time())
        log.info("client %s connected from %s as %s", record.name, where, settings.address.ip)
        end = SessionEnd()
        sender = supervise(f"send-{record.name}", lambda: pump_queue_to_link(session.queue, link), end, session.close)
        try:
            run_supervised(
                "receiver", lambda: link.receive_packets(self.router.make_deliver(session)), end, session.close
            )
        finally:
            self.router.detach(session)
            self.origins.pop(session, None)
            sender.join(SHUTDOWN_JOIN_TIMEOUT)
            if not self.stopping.is_set():  # at shutdown, stop() has logged every client
                log.info("client %s disconnected: %s", record.name, end.reason)
                if end.error is not None:
                    log.debug("client %s: the failure in detail", record.name, exc_info=end.error)
                log.info("client %s stats: %s", record.name, session.stats())

    def log_stats(self) -> None:
        sessions = self.router.connected()
        log.info("server stats: %s; clients connected: %d", self.router.counters.summary(), len(sessions))
        log.info("admission: %s", self.gatekeeper.stats())
        for s in sessions:
            log.info("client %s stats: %s", s.name, s.stats())

    def refusals(self) -> dict[str, int]:
        """The gatekeeper's refusal totals in the two classes ``status`` reports."""
        totals = dict(self.gatekeeper.tally.totals)  # one C-level copy: safe against the gatekeeper thread
        limited = sum(n for reason, n in totals.items() if reason in LIMIT_REFUSALS)
        return {"handshake_failed": sum(totals.values()) - limited, "too_many_handshakes": limited}

    def status(self) -> dict[str, Any]:
        """``server.py status``: the listener, refusals, and every registered client, connected or not."""
        sessions = {s.public_key: s for s in self.router.connected()}
        clients = []
        for record in sorted(self.registry.records(), key=lambda r: r.name):
            session = sessions.get(record.public_key)
            endpoint, since = self.origins.get(session, (None, None)) if session is not None else (None, None)
            counters = session.link.counters if session is not None else None
            dropped = drop_counters(counters)
            if session is not None:
                dropped["queue_full"] = session.queue.dropped
            clients.append(
                {
                    "name": record.name,
                    "address": str(record.address),
                    "endpoint": endpoint,
                    "connected_since": iso_time(since),
                    "last_handshake": None if session is None else round(time.time() - session.link.handshake_at, 1),
                    "rx_bytes": counters.rx_bytes if counters else 0,
                    "tx_bytes": counters.tx_bytes if counters else 0,
                    "rx_packets": counters.rx_packets if counters else 0,
                    "tx_packets": counters.tx_packets if counters else 0,
                    "dropped": dropped,
                }
            )
        host, port = self.listener.getsockname()[:2]
        return {
            "listen": format_endpoint(host, port),
            "transport": "tcp" if self.tls is None else "tls",
            "tun": self.tun.name,
            "address": str(self.settings.server_interface),
            "mode": "offload" if self.tun.offload else "plain",
            "refused": self.refusals(),
            "clients": clients,
        }

    def stop(self) -> None:
        """Close everything in an order that wakes every thread, then remove the TUN."""
        self.stopping.set()
        self.log_stats()  # while the sessions still exist
        for session in self.router.connected():
            session.close()
        with self.connections_lock:
            connections = list(self.connections)
        deadline = time.monotonic() + SHUTDOWN_JOIN_TIMEOUT
        threads = [*self.threads, *connections]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        lingering = [thread.name for thread in threads if thread.is_alive()]
        if lingering:  # nobody may touch the TUN once it is closed: the process exit will close it
            log.error("threads still running at shutdown: %s", ", ".join(lingering))
            return
        self.tun.close()


def bind_listener(listen: str) -> socket.socket:
    """Listen on ``HOST:PORT``; ``[::]:PORT`` takes IPv6 and IPv4 (as ::ffff:a.b.c.d) on one socket."""
    host, port = parse_endpoint(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # whatever net.ipv6.bindv6only says
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is already in use on {host}: is another server running?") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


# -- subcommands -------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    state = ServerState(args.state_dir)
    created = state.init(
        args.subnet,
        args.listen,
        args.endpoint,
        args.subnet6,
        tls=args.tls,
        server_name=args.server_name,
        cert=args.cert,
        key=args.key,
    )
    if given := given_run_options(args):
        state.save_run_options({**state.run_options(), **given})
    settings = state.settings()
    print(encode_key(state.public_key()))
    log.info(
        "%s %s: subnet %s and %s, listen %s, endpoint %s, transport %s%s",
        "initialised" if created else "already initialised",
        state.dir,
        settings.subnet,
        settings.subnet6,
        settings.listen,
        settings.endpoint,
        settings.transport,
        f" (server name {settings.server_name}, certificate {settings.tls_cert})" if settings.tls_cert else "",
    )
    return 0


def cmd_add_client(args: argparse.Namespace) -> int:
    state = ServerState(args.state_dir)
    record, profile = state.add_client(args.name, args.address, args.address6)
    sys.stdout.write(profile)
    also = f" and {record.address6}" if record.address6 else ""
    log.info("registered client %s with address %s%s", record.name, record.address, also)
    return 0


def cmd_list_clients(args: argparse.Namespace) -> int:
    state = ServerState(args.state_dir)
    state.settings()
    for record in state.clients():
        print(f"{record.name}\t{record.address}\t{encode_key(record.public_key)}")
    return 0


def cmd_remove_client(args: argparse.Namespace) -> int:
    ServerState(args.state_dir).remove_client(args.name)
    log.info("removed client %s: a running server refuses its handshakes and ends its session", args.name)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    require_net_admin()
    state = ServerState(args.state_dir)
    settings = state.settings()
    private_key = state.private_key_for_run()
    apply_run_options(args, state)
    if len(args.dns) > MAX_DNS_SERVERS:
        raise UserError(f"at most {MAX_DNS_SERVERS} --dns servers (the resolver reads no more)")
    tls = tls_port(settings, args.tls, args.fallback)
    stop = StopSignal()  # from here on, SIGTERM means "shut down in order", never "die"
    journal = Journal(journal_path("server", args.tun))
    journal.claim("server.py")  # refuses, changing nothing, if a live server owns this TUN
    listener = tun = None
    try:
        listener = bind_listener(args.listen or settings.listen)
        tun = open_tun(args.tun, offload=not args.no_offload)
        configure_interface(tun.name, settings.server_interface, settings.mtu, settings.server_interface6)
        if args.nat:
            enable_nat(journal, settings.subnet, tun.name, args.egress, settings.subnet6)
        server = Server(
            state=state,
            private_key=private_key,
            settings=settings,
            listener=listener,
            tun=tun,
            icmp_reply=args.icmp_reply,
            dns=tuple(args.dns),
            isolate_clients=args.isolate_clients,
            rekey_after=args.rekey_after,
            keepalive=args.keepalive,
            on_failure=stop.set,
            stop=stop,
            tls=tls,
        )
        stop.on_usr1(server.log_stats)
        server.start()
        try:
            control: ControlSocket | None = ControlSocket(state.dir / CONTROL_SOCKET, serve_status(server), root_only)
        except UserError as exc:  # e.g. a state directory too deep for a socket path: serve anyway
            log.warning("no status socket, 'server.py status' will not work: %s", exc)
            control = None
        log.info(
            "serving on %s%s, %s %s in %s mode%s%s",
            args.listen or settings.listen,
            describe_tls(settings, args.fallback) if tls else "",
            tun.name,
            settings.server_interface,
            "offload" if tun.offload else "plain",
            ", answering pings in user space" if args.icmp_reply else "",
            ", clients isolated from each other" if args.isolate_clients else "",
        )
        sd_notify("READY=1")
        stop.wait()
        log.info("%s, shutting down", f"{stop.signal_name} received" if stop.signal_name else server.failure)
        sd_notify("STOPPING=1")
        if control is not None:
            control.close()
        server.stop()
        if server.failure:
            return 1
    finally:
        if listener is not None:
            listener.close()
        if tun is not None:
            tun.close()
        journal.undo()
    return 0


def tls_port(settings: ServerSettings, tls: bool, fallback: str | None) -> TlsPort | None:
    """The TLS mode of this run: on if ``init --tls`` recorded it or ``run --tls`` asks for it."""
    if not tls and settings.transport != "tls":
        if fallback:
            raise UserError("--fallback needs TLS mode (server.py run --tls, after server.py init --tls)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise UserError("TLS mode needs a certificate: run server.py init --tls [--server-name NAME] first")
    check_certificate(settings.tls_cert, settings.tls_key)
    address = parse_endpoint(fallback, default_port=80) if fallback else None
    return TlsPort(server_context(settings.tls_cert, settings.tls_key), Fallback(address))


def describe_tls(settings: ServerSettings, fallback: str | None) -> str:
    site = f"web visitors relayed to {fallback}" if fallback else "web visitors get a 404 page"
    return f" with TLS (server name {settings.server_name}; {site})"


def root_only(peer: Peer) -> str | None:
    return None if peer.uid == 0 else "permission denied: the server's status is for root only"


def serve_status(server: Server) -> Handler:
    def handle(request: Request, _peer: Peer, _reply: Reply) -> dict[str, Any]:
        if request.command != "status":
            raise ControlError(f"the server answers only 'status', not {request.command!r}")
        return server.status()

    return handle


def cmd_status(args: argparse.Namespace) -> int:
    state = ServerState(args.state_dir)
    state.settings()
    path = state.dir / CONTROL_SOCKET
    if not path.exists():
        raise UserError(f"no server is running with {state.dir} (no {path})")
    status = call(path, request("status"), what="the server")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(
        f"listening on {status['listen']} ({status['transport']}), {status['tun']} {status['address']}, "
        f"{status['mode']} mode"
    )
    refused = ", ".join(f"{k} {v}" for k, v in status["refused"].items())
    print(f"refused: {refused}")
    for c in status["clients"]:
        print(f"\nclient: {c['name']}\n  address: {c['address']}")
        if c["connected_since"] is None:
            print("  (not connected)")
            continue
        drops = ", ".join(f"{k} {v}" for k, v in c["dropped"].items() if v) or "none"
        print(
            f"  endpoint: {c['endpoint']}\n  connected since: {c['connected_since']}\n"
            f"  latest handshake: {c['last_handshake']:.0f} seconds ago\n"
            f"  transfer: {c['rx_bytes']} B received ({c['rx_packets']} packets), "
            f"{c['tx_bytes']} B sent ({c['tx_packets']} packets)\n  dropped: {drops}"
        )
    return 0


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


RUN_DEFAULTS: dict[str, Any] = {
    "tun": "tun0",
    "icmp_reply": False,
    "no_offload": False,
    "isolate_clients": False,
    "nat": False,
    "egress": None,
    "dns": [],
    "rekey_after": None,
    "keepalive": None,
    "fallback": None,
}
"""The ``run`` options that ``set`` (and ``init``) can store, and their defaults when neither the
command line nor the stored options (DIR/run.json) give them. ``--listen`` lives in server.json."""


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ``run``, ``set`` and ``init``. Their default is "absent" (SUPPRESS), so a
    command knows exactly which were given; :func:`apply_run_options` fills in the rest."""
    absent = argparse.SUPPRESS
    p.add_argument("--tun", default=absent, help="TUN interface name (default tun0)")
    p.add_argument(
        "--icmp-reply",
        action="store_true",
        default=absent,
        help="answer pings to the server's tunnel address in user space",
    )
    p.add_argument(
        "--no-offload", action="store_true", default=absent, help="plain mode: one packet per frame, no TUN offloads"
    )
    p.add_argument(
        "--isolate-clients",
        action="store_true",
        default=absent,
        help="drop (and count as dropped_isolated) packets from one client to another; default: they reach each other",
    )
    p.add_argument(
        "--nat", action="store_true", default=absent, help="be the clients' internet gateway: forward and masquerade"
    )
    p.add_argument(
        "--egress", default=absent, metavar="IFACE", help="interface for --nat (default: that of the default route)"
    )
    p.add_argument(
        "--dns", type=ip_address, action="append", default=absent, metavar="IP", help="DNS server (v4 or v6) to push"
    )
    add_timer_options(p, default=absent)
    p.add_argument(
        "--fallback",
        default=absent,
        metavar="HOST:PORT",
        help="TLS mode: relay everyone who is not a tunlib client to this plain-HTTP web server (default: a 404)",
    )


def given_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options on this command line, as JSON values."""
    given = {key: getattr(args, key) for key in RUN_DEFAULTS if hasattr(args, key)}
    if "dns" in given:
        given["dns"] = [str(ip) for ip in given["dns"]]
    return given


def apply_run_options(args: argparse.Namespace, state: ServerState) -> None:
    """Fill in every run option not on the command line: stored value, else the default."""
    stored = state.run_options()
    for key, default in RUN_DEFAULTS.items():
        if hasattr(args, key):
            continue
        if key not in stored:
            setattr(args, key, default)
            continue
        value = stored[key]
        try:
            if key == "dns":
                if not isinstance(value, list):
                    raise ValueError
                value = [ip_address(ip) for ip in value]
            elif key in TIMER_OPTIONS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError
                value = TIMER_OPTIONS[key](str(value))
            elif not isinstance(value, type(default) if default is not None else str):
                raise ValueError
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise UserError(f"{state.run_path}: bad stored value for {key!r}: fix it with 'server.py set'") from None
        setattr(args, key, value)


def cmd_set(args: argparse.Namespace) -> int:
    state = ServerState(args.state_dir)
    state.settings()
    if args.listen:
        state.init(None, args.listen, None)
    options = {**state.run_options(), **given_run_options(args)}
    for name in args.unset:
        options.pop(name.replace("-", "_"), None)
    state.save_run_options(options)
    shown = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) or "(none: defaults)"
    print(f"stored run options: {shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py", description="tunlib VPN server")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--state-dir", required=True, help="directory holding the server key, settings and clients")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        return p

    p = add("init", "create the server key and settings if missing; print the public key")
    p.add_argument("--subnet", help="tunnel subnet (default 10.0.0.0/24); the server takes its first address")
    p.add_argument(
        "--subnet6",
        help="tunnel IPv6 prefix (default: a random unique local /64, RFC 4193), or 'none' for an IPv4-only"
        " tunnel; the server takes ::1",
    )
    p.add_argument("--listen", help="HOST:PORT to listen on (default 0.0.0.0:55555; [::]:55555 for both IPv6 and IPv4)")
    p.add_argument("--endpoint", help="HOST:PORT that clients dial, written into profiles")
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        help="carry the tunnel inside TLS 1.3 (profiles get Transport = tls); --no-tls switches back to TCP",
    )
    p.add_argument("--server-name", metavar="NAME", help="TLS: the name clients send as SNI (default: the cert's)")
    p.add_argument("--cert", metavar="FILE", help="TLS: certificate chain (PEM); default: a self-signed one made here")
    p.add_argument("--key", metavar="FILE", help="TLS: the certificate's private key (PEM)")
    add_run_options(p)
    p.set_defaults(func=cmd_init)

    p = add("add-client", "register a client with a fresh key pair; print its profile")
    p.add_argument("name", help="client name (letters, digits, '.', '_', '-')")
    p.add_argument("--address", help="tunnel address (default: the next free one)")
    p.add_argument("--address6", help="IPv6 tunnel address (default: the one with the same host number)")
    p.set_defaults(func=cmd_add_client)

    p = add("list-clients", "list registered clients: name, address, public key")
    p.set_defaults(func=cmd_list_clients)

    p = add("remove-client", "unregister a client; it can no longer connect")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove_client)

    p = add("run", "run the server until SIGINT/SIGTERM (options not given come from 'set', then defaults)")
    p.add_argument("--listen", help="HOST:PORT to listen on (default: from init)")
    add_run_options(p)
    p.add_argument("--tls", action="store_true", help="TLS mode even if init did not record it (needs init's cert)")
    p.set_defaults(func=cmd_run)

    p = add("set", "store 'run' options in the state directory; 'run' uses them unless overridden")
    p.add_argument("--listen", help="HOST:PORT to listen on (stored in server.json)")
    add_run_options(p)
    p.add_argument(
        "--unset",
        action="append",
        default=[],
        choices=sorted(key.replace("_", "-") for key in RUN_DEFAULTS),
        help="forget a stored option (repeatable)",
    )
    p.set_defaults(func=cmd_set)

    p = add("status", "what the running server sees: listener, refusals, every client (root only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    add_cleanup_command(sub, "server", "NAT rules and sysctls")
    return parser


if __name__ == "__main__":
    run_main(build_parser)
