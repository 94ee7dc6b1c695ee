#!/usr/bin/env python3
"""tunlib client: connect to the server, then carry packets between a TUN and the connection.

    client.py run --config PROFILE [--tun tun-client0] [--endpoint HOST:PORT] [--icmp-reply]
                  [--full-tunnel | --route CIDR ...] [--kill-switch] [--proxy URL]
                  [--rekey-after SECONDS] [--keepalive SECONDS] [-v]
    client.py cleanup [-v]      # undo what a crashed run left: routes, firewall tables, DNS
    client.py daemon [--socket PATH] [--group tunlib] [--state-dir DIR] [--tun NAME]
    client.py import|list|remove|connect|disconnect|status ...   # as a user: see usercommands.py

Order matters:
1. With ``--kill-switch``, the firewall goes up first, so nothing leaks even before the tunnel.
2. The client dials (through a proxy if one is set: ``--proxy``, the profile's ``Proxy``, or
   ``https_proxy`` from the environment), wraps the connection in TLS if the profile says
   ``Transport = tls``, and completes the handshake *before* it creates its TUN, because the
   server's answer says which address, MTU and data-path mode the TUN must have.
3. Routes and DNS follow, each recorded in a journal before it is made (see journal.py).
4. Two threads carry packets: TUN -> socket and socket -> TUN (tunlib.py). The second also
   runs the timers: keepalives, rekeys every ``--rekey-after`` seconds, the dead-peer check.
5. If the connection drops, or either thread fails for any reason, the session ends as a
   whole; the TUN, routes, DNS and kill switch stay in place and the client reconnects with
   backoff, like OpenVPN's persist-tun: traffic stalls rather than leaks. Only a deleted TUN
   ends the client (an ``error:`` line, status 2), since no session could use it again.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import interpreter

if __name__ == "__main__":
    interpreter.use_project_venv()  # first: re-runs us under .venv if this Python lacks the requirements

from carrier import TlsCarrier, TlsError, client_handshake_tls
from config import Profile, format_endpoint, parse_endpoint, resolve_addresses
from daemon import DEFAULT_GROUP, DEFAULT_SOCKET, DEFAULT_STATE_DIR, run_daemon
from errors import UserError
from gateway import HALF_ROUTES, HALF_ROUTES6, ClientGateway
from journal import Journal, journal_path
from messages import SessionSettings
from netsetup import configure_interface
from proxy import ProxyURL, dial_via_proxy, parse_proxy_url, proxy_from_environment
from rekey import KEEPALIVE, REKEY_AFTER_TIME, InitiatorRole, Policy
from runtime import StopRequested, StopSignal, add_cleanup_command, add_timer_options, require_net_admin, run_main
from session import (
    CONNECT_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    PROLOGUE,
    HandshakeFailed,
    client_handshake,
    dial,
    tune_carrier,
)
from tundev import TunDevice, open_tun
from tunlib import PeerLink, SessionEnd, TunGone, make_client_deliver, pump_tun_to_link, supervise
from usercommands import add_user_commands

log = logging.getLogger("client")

JOIN_TIMEOUT = 1.0
"""How long a session's threads get to end once it is over (they are woken at once)."""
RECONNECT_BACKOFF = (1, 2, 4, 8, 15, 30)
"""Seconds between reconnect attempts; the last value repeats."""
STABLE_SESSION = 10.0
"""A session that ended sooner counts as a failure for the backoff, so two machines sharing one
profile (each new session displaces the other) retry slowly instead of fighting in a loop."""
NO_PROXY_WORDS = ("none", "direct")
"""``--proxy none`` ignores the profile's Proxy and the environment."""
WEB_ANSWER = (
    "the server answered like a web server, which a TLS-mode tunlib server does to anyone it does not "
    "accept: check the profile's [Server] PublicKey, and that this client is still registered (list-clients)"
)


@dataclass(frozen=True)
class Route:
    """How the carrier connection reaches the server: directly, or through a proxy.

    ``hop_ips`` are the addresses the TCP connection may go to (the server's, or the proxy's,
    IPv6 and IPv4 in Happy Eyeballs order), resolved once before routes or DNS change; the kill
    switch and the full tunnel's host routes keep exactly those addresses reachable outside the
    tunnel.
    """

    host: str
    port: int
    hop_ips: list[str]
    hop_port: int
    proxy: ProxyURL | None = None

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)

    def describe(self) -> str:
        return self.endpoint + (f" via proxy {self.proxy.redacted()}" if self.proxy else "")


class Tunnel:
    """The client's long-lived state: TUN, host changes, and the current session."""

    def __init__(
        self, args: argparse.Namespace, profile: Profile, route: Route, stop: StopSignal | None = None
    ) -> None:
        self.args = args
        self.profile = profile
        self.route = route
        self.endpoint = route.describe()
        self.stop = stop or StopSignal()
        self.state = "connecting"
        """connecting, connected or reconnecting: what ``client.py status`` shows."""
        self.connected_since: float | None = None
        self.routes: list[str] = []
        self.dns: list[str] = []
        """The routes and DNS servers this tunnel put in force, for ``status``."""
        self.give_up_after: int | None = None
        """Failed reconnects after which :meth:`run` raises instead of retrying (the daemon fails
        over to another server); None retries for ever, as ``client.py run`` does."""
        self.journal = Journal(journal_path("client", args.tun))
        self.gateway = ClientGateway(self.journal, args.tun)
        self.tun: TunDevice | None = None
        self.settings: SessionSettings | None = None
        self.link: PeerLink | None = None
        self.lingering: list[threading.Thread] = []
        """Session threads that did not end in time: while any lives, the TUN stays open."""
        self.failures = 0
        """Consecutive failed connects or short sessions: the backoff position."""

    def log_stats(self) -> None:
        if self.link is not None:
            log.info("stats: %s", self.link.counters.summary())

    def connect(self) -> tuple[SessionSettings, PeerLink]:
        """Dial and handshake; a stop signal aborts it at once with StopRequested."""
        with self.stop.interruptible():
            sock = self.dial()
            try:
                if self.profile.transport == "tls":
                    sock = client_handshake_tls(sock, self.profile.server_name, HANDSHAKE_TIMEOUT)
                settings, link = client_handshake(sock, self.profile)
            except (HandshakeFailed, TlsError) as exc:
                sock.close()
                why = WEB_ANSWER if isinstance(sock, TlsCarrier) and sock.first_bytes.startswith(b"HTTP/") else exc
                raise UserError(f"handshake with {self.endpoint} failed: {why}") from None
            except BaseException:
                sock.close()
                raise
        policy = Policy.for_client(
            self.args.rekey_after or REKEY_AFTER_TIME,
            self.args.keepalive or KEEPALIVE,
            settings.rekey_after or REKEY_AFTER_TIME,
            settings.keepalive or KEEPALIVE,
        )
        profile = self.profile
        link.configure(policy, InitiatorRole(profile.private_key, profile.server_public_key, profile.psk, PROLOGUE))
        return settings, link

    def dial(self) -> socket.socket:
        """A TCP connection to the server, straight or through the proxy."""
        route = self.route
        if route.proxy is None:
            return dial(route.hop_ips, route.hop_port)
        sock = dial_via_proxy(route.proxy, route.hop_ips, route.host, route.port, CONNECT_TIMEOUT)
        tune_carrier(sock)
        return sock

    def setup(self) -> None:
        """Everything before the first packet flows; teardown() undoes it all after a failure."""
        if self.args.kill_switch:
            self.gateway.kill_switch([(ip, self.route.hop_port) for ip in self.route.hop_ips])
        self.settings, self.link = self.connect()
        if self.stop.is_set():  # the daemon's disconnect arrived while we dialled
            raise StopRequested(self.stop.signal_name)
        settings = self.settings
        self.tun = open_tun(self.args.tun, offload=settings.offload)
        if settings.offload and not self.tun.offload:
            raise UserError("the server uses offload mode but this kernel refused IFF_VNET_HDR")
        configure_interface(self.tun.name, settings.address, settings.mtu, settings.address6)
        self.routes = [str(settings.address.network)]
        if settings.address6 is not None:
            self.routes.append(str(settings.address6.network))
        if self.args.full_tunnel:
            self.gateway.full_tunnel(self.route.hop_ips, ipv6=settings.address6 is not None)
            self.gateway.dns(settings.dns)
            self.routes += HALF_ROUTES
            if settings.address6 is not None:
                self.routes += HALF_ROUTES6
            self.dns = [str(d) for d in settings.dns]
        else:
            split = [*settings.routes, *self.args.route]
            self.gateway.split_routes(split)
            self.routes += [str(net) for net in split]
        self.state, self.connected_since = "connected", time.time()
        log.info(
            "connected to %s as %s%s on %s (%s mode, MTU %d); the server is %s in the tunnel",
            self.endpoint,
            settings.address,
            f" and {settings.address6}" if settings.address6 else "",
            self.tun.name,
            "offload" if self.tun.offload else "plain",
            settings.mtu,
            settings.server_address,
        )

    def run_session(self, link: PeerLink) -> SessionEnd | None:
        """Carry packets until the session ends (returns why) or a signal arrives (returns None).

        Both threads are supervised: whichever ends first, however (the link closed, a limit,
        an exception), ends the session, and its reason is the one reported.
        """
        assert self.tun is not None and self.settings is not None
        tun, done, end = self.tun, self.stop, SessionEnd()
        address6 = self.settings.address6
        own6 = address6.ip.packed if address6 is not None else None
        deliver = make_client_deliver(tun, link, self.settings.address.ip.packed, self.args.icmp_reply, own6)
        pumps: list[tuple[str, Callable[[], None]]] = [
            ("tun-to-socket", lambda: pump_tun_to_link(tun, link, done)),  # done also wakes its poll
            ("socket-to-tun", lambda: link.receive_packets(deliver)),
        ]
        threads = [supervise(name, body, end, done.set) for name, body in pumps]
        done.wait()
        link.close()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        self.lingering += [thread for thread in threads if thread.is_alive()]
        if self.lingering:
            log.error("session threads still running: %s", ", ".join(t.name for t in self.lingering))
        log.info("session stats: %s", link.counters.summary())
        if self.stop.signal_name:
            return None
        done.clear()
        return end

    def reconnect(self) -> PeerLink | None:
        """Dial again, with backoff after failures, until it works or a signal arrives.

        Gives up (raising) only if the server changed our settings.
        """
        while not self.stop.is_set():
            if self.give_up_after is not None and self.failures >= self.give_up_after:
                raise UserError(f"{self.endpoint} failed {self.failures} times in a row")
            if self.failures:
                delay = RECONNECT_BACKOFF[min(self.failures, len(RECONNECT_BACKOFF)) - 1]
                log.info("reconnecting in %d s", delay)
                if self.stop.wait(delay):
                    return None
            try:
                settings, link = self.connect()
            except StopRequested:
                return None
            except UserError as exc:
                # Even a "final" REJECT is retried here: it is unauthenticated, and giving up
                # would lift the kill switch for whoever forged it. The user sees why in the log.
                log.warning("reconnect failed: %s", exc)
                self.failures += 1
                continue
            if settings != self.settings:
                link.close()
                raise UserError(
                    "the server changed this client's settings (address, MTU, mode, DNS): restart the client"
                )
            log.info("reconnected to %s", self.endpoint)
            self.state = "connected"
            return link
        return None

    def run(self) -> int:
        link = self.link
        while link is not None:
            self.link = link
            started = time.monotonic()
            end = self.run_session(link)
            if end is None:
                break
            log.warning("connection to the server lost: %s", end.reason)
            if end.error is not None:
                log.debug("the failure in detail", exc_info=end.error)
            if isinstance(end.error, TunGone) or self.lingering:  # no later session could use the TUN
                raise UserError(f"{end.reason}: cannot go on without a working TUN device")
            self.failures = 0 if time.monotonic() - started >= STABLE_SESSION else self.failures + 1
            self.state = "reconnecting"
            link = self.reconnect()
        log.info("%s received, shutting down", self.stop.signal_name or "stop")
        return 0

    def teardown(self) -> None:
        """Close the TUN (removing its routes), then undo every journaled host change."""
        if self.link is not None:
            self.link.close()
        if self.tun is not None and not any(thread.is_alive() for thread in self.lingering):
            self.tun.close()  # else the process exit closes it, after the last thread using it
        self.journal.undo()


def choose_proxy(flag: str | None, profile: Profile) -> tuple[str | None, str]:
    """The proxy URL to use and where it came from: ``--proxy``, the profile, then the environment."""
    if flag is not None:
        return (None, "") if flag.strip().lower() in NO_PROXY_WORDS else (flag, "--proxy")
    if profile.proxy:
        return profile.proxy, "the profile"
    host = parse_endpoint(profile.endpoint)[0]
    url = proxy_from_environment(os.environ, host)
    return url, "https_proxy" if url else ""


def plan_route(args: argparse.Namespace, profile: Profile) -> Route:
    """Where the carrier goes. Through a proxy, the server's name is left to the proxy to resolve
    (a network that has a proxy often has no public DNS); only the proxy's name is resolved here."""
    host, port = parse_endpoint(args.endpoint or profile.endpoint)
    url, source = choose_proxy(args.proxy, profile)
    if url is None:
        return Route(host, port, resolve_addresses(host, port, "server"), port)
    proxy = parse_proxy_url(url)
    log.debug("using proxy %s (from %s)", proxy.redacted(), source)
    return Route(host, port, resolve_addresses(proxy.host, proxy.port, "proxy"), proxy.port, proxy)


def cmd_run(args: argparse.Namespace) -> int:
    require_net_admin()
    profile = Profile.load(args.config)
    tunnel = Tunnel(args, profile, plan_route(args, profile))
    tunnel.stop.on_usr1(tunnel.log_stats)
    tunnel.journal.claim("client.py")  # refuses, changing nothing, if a live client owns this TUN
    try:
        tunnel.setup()
        return tunnel.run()
    except StopRequested as exc:
        log.info("%s received while connecting, shutting down", exc)
        return 0
    finally:
        tunnel.teardown()


def open_daemon_tunnel(profile: Profile, endpoint: str, options: list[str], stop: StopSignal) -> Tunnel:
    """A tunnel for the daemon, built from a ``run`` command line exactly as ``run`` builds its own."""
    args = build_parser().parse_args(["run", "--config", profile.name, "--endpoint", endpoint, *options])
    return Tunnel(args, profile, plan_route(args, profile), stop)


def cmd_daemon(args: argparse.Namespace) -> int:
    return run_daemon(args, open_daemon_tunnel)


def cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 or IPv6 network: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="client.py", description="tunlib VPN client")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "run", help="connect and run until SIGINT/SIGTERM", description="connect and run until SIGINT/SIGTERM"
    )
    p.add_argument("--config", required=True, help="client profile printed by 'server.py add-client'")
    p.add_argument("--tun", default="tun-client0", help="TUN interface name (default tun-client0)")
    p.add_argument("--endpoint", help="HOST:PORT to dial instead of the profile's Endpoint")
    p.add_argument(
        "--icmp-reply", action="store_true", help="answer pings to this client's tunnel address in user space"
    )
    routing = p.add_mutually_exclusive_group()
    routing.add_argument(
        "--full-tunnel",
        action="store_true",
        help="send all traffic through the tunnel (IPv6 too if the server offers it, else IPv6 is blocked)",
    )
    routing.add_argument(
        "--route",
        type=cidr,
        action="append",
        default=[],
        metavar="CIDR",
        help="send this network through the tunnel (repeatable)",
    )
    p.add_argument("--kill-switch", action="store_true", help="block all traffic outside the tunnel until a clean exit")
    add_timer_options(p)
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="reach the server through http://[user:pass@]HOST:PORT (CONNECT) or socks5[h]://...; "
        "default: the profile's Proxy, else https_proxy; 'none' for a direct connection",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)
    add_cleanup_command(sub, "client", "routes, firewall and DNS changes")

    p = sub.add_parser("daemon", help="serve the user commands as root", description="serve the user commands as root")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET}, mode 0660)")
    p.add_argument("--group", default=DEFAULT_GROUP, help=f"group whose members may use it (default {DEFAULT_GROUP})")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"imported profiles (default {DEFAULT_STATE_DIR})")
    p.add_argument("--tun", default="tun-client0", help="TUN interface name (default tun-client0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_daemon)
    add_user_commands(sub)
    return parser


if __name__ == "__main__":
    run_main(build_parser)
