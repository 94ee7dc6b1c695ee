#!/usr/bin/env python3
"""tunlib client: connect to the server, then carry packets between a TUN and the connection.

    client.py run --config PROFILE [--tun tun-client0] [--endpoint HOST:PORT] [--icmp-reply] [-v]

Order matters: the client dials and completes the handshake *before* it creates its TUN,
because the server's answer says which address, MTU and data-path mode the TUN must have.
Then two threads run: TUN -> socket (:func:`tunlib.pump_tun_to_link`) and socket -> TUN
(:meth:`tunlib.PeerLink.receive_packets`).
"""

from __future__ import annotations

import argparse
import logging
import threading
from ipaddress import IPv4Interface

from config import Profile
from errors import UserError
from messages import SessionSettings
from netsetup import add_route, configure_interface
from runtime import StopSignal, require_net_admin, run_main, setup_logging
from session import HandshakeFailed, client_handshake, dial
from tundev import TunDevice, open_tun
from tunlib import LinkClosed, PeerLink, Waker, make_client_deliver, pump_tun_to_link

log = logging.getLogger("client")

EXIT_CONNECTION_LOST = 1
JOIN_TIMEOUT = 1.0


def connect(profile: Profile, endpoint: str) -> tuple[SessionSettings, PeerLink]:
    sock = dial(endpoint)
    try:
        return client_handshake(sock, profile)
    except HandshakeFailed as exc:
        sock.close()
        raise UserError(f"handshake with {endpoint} failed: {exc}") from None


def open_configured_tun(name: str, offload: bool, address: IPv4Interface, mtu: int) -> TunDevice:
    """Create the TUN in the mode the server chose and configure it; undo on failure."""
    tun = open_tun(name, offload=offload)
    try:
        if offload and not tun.offload:
            raise UserError(
                "the server uses offload mode but this kernel refused IFF_VNET_HDR; run the server with --no-offload"
            )
        configure_interface(tun.name, address, mtu)
    except UserError:
        tun.close()
        raise
    return tun


def cmd_run(args: argparse.Namespace) -> int:
    profile = Profile.load(args.config)
    require_net_admin()
    endpoint = args.endpoint or profile.endpoint
    settings, link = connect(profile, endpoint)
    try:
        tun = open_configured_tun(args.tun, settings.offload, settings.address, settings.mtu)
        for route in settings.routes:
            add_route(route, tun.name)
    except UserError:
        link.close()
        raise
    log.info(
        "connected to %s as %s on %s (%s mode, MTU %d)",
        endpoint,
        settings.address,
        tun.name,
        "offload" if tun.offload else "plain",
        settings.mtu,
    )
    stop = StopSignal(on_usr1=lambda: log.info("stats: %s", link.counters.summary()))
    waker = Waker()
    lost: list[str] = []

    def run_receiver() -> None:
        deliver = make_client_deliver(tun, link, settings.address.ip.packed, args.icmp_reply)
        try:
            link.receive_packets(deliver)
        except LinkClosed as exc:
            lost.append(str(exc))
        stop.event.set()

    def run_sender() -> None:
        try:
            pump_tun_to_link(tun, link, waker)
        except LinkClosed as exc:
            lost.append(str(exc))
        stop.event.set()

    threads = [
        threading.Thread(target=run_sender, name="tun-to-socket", daemon=True),
        threading.Thread(target=run_receiver, name="socket-to-tun", daemon=True),
    ]
    for thread in threads:
        thread.start()
    stop.event.wait()
    if stop.signal_name:
        log.info("%s received, shutting down", stop.signal_name)
    link.close()
    waker.wake()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    tun.close()
    waker.close()
    log.info("stats: %s", link.counters.summary())
    if lost and not stop.signal_name:
        log.error("connection to the server lost: %s", lost[0])
        return EXIT_CONNECTION_LOST
    return 0


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
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    run_main(main)
