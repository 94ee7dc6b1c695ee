"""The client as an internet gateway user: full tunnel, split tunnel, DNS, IPv6 block, kill switch.

Full tunnel uses OpenVPN's "def1" trick rather than WireGuard's fwmark policy routing: two
routes, 0.0.0.0/1 and 128.0.0.0/1, through the TUN. Together they cover every IPv4 address
and, being more specific than the default route, win over it without deleting it. The
connection to the server itself must not enter the tunnel, so a host route sends the server's
address via the original gateway. We chose this over policy routing because every piece shows
up in plain ``ip route`` output, which a newcomer can read, and undoing it is deleting three
routes. (Its weakness, a stale host route if the laptop changes networks, matters less here:
a change of network also breaks the TCP connection, and a reconnect recomputes nothing we
could not recompute by restarting.)

Every change goes through a :class:`journal.Journal` first, so a crash can be undone.
The ruleset builders are pure functions of their arguments, so tests can read them directly.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from errors import UserError
from journal import Journal
from netsetup import run_command

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
HALF_ROUTES = ("0.0.0.0/1", "128.0.0.0/1")
IPV6_LINK_KEEPALIVE = "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept"
"""Neighbour discovery keeps the local link usable (IPv6 has no ARP); it never leaves the link."""


def nft_name(prefix: str, tun: str) -> str:
    """An nftables table name tagged as ours: ``tunlib_<prefix>_<tun>`` with safe characters."""
    return f"tunlib_{prefix}_" + re.sub(r"[^A-Za-z0-9_]", "_", tun)


def route_to(address: str) -> list[str]:
    """The host route that keeps ``address`` on its current path, as ``ip route add`` arguments.

    Asks the kernel (``ip route get``) how it reaches the server right now, before the
    half-routes exist. Returns [] when the server is local (the single-host demo).
    """
    result = run_command(["ip", "-4", "route", "get", address])
    if result.returncode != 0:
        raise UserError(f"no route to the server {address}: {result.stderr.strip()}")
    words = result.stdout.split()
    if words and words[0] == "local":
        return []
    spec = [f"{address}/32"]
    for key in ("via", "dev"):
        if key in words:
            spec += [key, words[words.index(key) + 1]]
    return spec


def killswitch_ruleset(table: str, tun: str, server: str, port: int, also: Sequence[tuple[str, int]] = ()) -> str:
    """Drop everything leaving by any interface but the TUN and loopback, except the carrier
    connection to the server and DHCP, so nothing leaks while the tunnel is down.

    ``also`` names more servers the carrier may reach: the daemon's failover candidates.
    """
    carriers = "\n        ".join(f"ip daddr {ip} tcp dport {p} accept" for ip, p in [(server, port), *also])
    return f"""table inet {table} {{
    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        oifname "{tun}" accept
        {carriers}
        udp sport 68 udp dport 67 accept
        udp sport 546 udp dport 547 accept
        {IPV6_LINK_KEEPALIVE}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        oifname "{tun}" accept
    }}
}}
"""


def ipv6_block_ruleset(table: str) -> str:
    """The tunnel carries IPv4 only, so under a full tunnel IPv6 would bypass it: block it."""
    return f"""table inet {table} {{
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "lo" accept
        {IPV6_LINK_KEEPALIVE}
        udp sport 546 udp dport 547 accept
        meta nfproto ipv6 drop
    }}
}}
"""


def resolv_conf_text(servers: tuple[ipaddress.IPv4Address, ...]) -> bytes:
    lines = ["# written by tunlib client for the life of the tunnel; restored on exit"]
    lines += [f"nameserver {s}" for s in servers]
    return ("\n".join(lines) + "\n").encode()


def systemd_resolved_active() -> bool:
    return shutil.which("resolvectl") is not None and Path("/run/systemd/resolve/io.systemd.Resolve").exists()


class ClientGateway:
    """Applies the client's host changes through a journal."""

    def __init__(self, journal: Journal, tun: str) -> None:
        self.journal = journal
        self.tun = tun

    def kill_switch(self, server: str, port: int, also: Sequence[tuple[str, int]] = ()) -> None:
        table = nft_name("ks", self.tun)
        self.journal.add_nft_table("inet", table, killswitch_ruleset(table, self.tun, server, port, also))
        servers = ", ".join(f"{ip}:{p}" for ip, p in [(server, port), *also])
        log.info("kill switch on: only %s and the tunnel may be reached", servers)

    def full_tunnel(self, server: str) -> None:
        host_route = route_to(server)
        if host_route:
            self.journal.add_route(host_route)
        for half in HALF_ROUTES:
            self.journal.add_route([half, "dev", self.tun])
        table = nft_name("v6", self.tun)
        self.journal.add_nft_table("inet", table, ipv6_block_ruleset(table))
        log.info("full tunnel: all IPv4 through %s, IPv6 blocked, server kept on its own path", self.tun)

    def split_routes(self, networks: list[ipaddress.IPv4Network]) -> None:
        for net in networks:
            self.journal.add_route([str(net), "dev", self.tun])
        if networks:
            log.info("split tunnel: %s through %s", ", ".join(map(str, networks)), self.tun)

    def dns(self, servers: tuple[ipaddress.IPv4Address, ...]) -> None:
        if not servers:
            return
        if systemd_resolved_active():
            names = [str(s) for s in servers]
            self.journal.resolvectl(self.tun, ["dns", self.tun, *names])
            self.journal.resolvectl(self.tun, ["domain", self.tun, "~."])
        else:
            self.journal.replace_file(RESOLV_CONF, resolv_conf_text(servers))
        log.info("DNS: using %s through the tunnel", ", ".join(map(str, servers)))
