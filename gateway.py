"""The client as an internet gateway user: full tunnel, split tunnel, DNS, IPv6 block, kill switch.

Full tunnel uses OpenVPN's "def1" trick rather than WireGuard's fwmark policy routing: two
routes, 0.0.0.0/1 and 128.0.0.0/1, through the TUN. Together they cover every IPv4 address
and, being more specific than the default route, win over it without deleting it. IPv6 gets
the same pair, ::/1 and 8000::/1, when the server offers IPv6; when it does not, IPv6 is
blocked instead, since it would otherwise bypass the tunnel (a classic VPN leak). The
connection to the server itself must not enter the tunnel, so a host route sends each of the
server's addresses via the original gateway. We chose this over policy routing because every piece shows
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

from config import format_endpoint
from errors import UserError
from journal import Journal
from netsetup import run_command

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
HALF_ROUTES = ("0.0.0.0/1", "128.0.0.0/1")
HALF_ROUTES6 = ("::/1", "8000::/1")
IPV6_LINK_KEEPALIVE = "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept"
"""Neighbour discovery keeps the local link usable (IPv6 has no ARP); it never leaves the link."""


def nft_name(prefix: str, tun: str) -> str:
    """An nftables table name tagged as ours: ``tunlib_<prefix>_<tun>`` with safe characters."""
    return f"tunlib_{prefix}_" + re.sub(r"[^A-Za-z0-9_]", "_", tun)


def route_to(address: str) -> list[str] | None:
    """The host route that keeps ``address`` on its current path, as ``ip route add`` arguments.

    Asks the kernel (``ip route get``) how it reaches the server right now, before the
    half-routes exist. Returns [] when the server is local (the single-host demo), and None
    when there is no route to it at all (say, an IPv6 address on an IPv4-only network).
    """
    version = ipaddress.ip_address(address).version
    result = run_command(["ip", f"-{version}", "route", "get", address])
    if result.returncode != 0:
        return None
    words = result.stdout.split()
    if words and words[0] == "local":
        return []
    spec = [f"{address}/{32 if version == 4 else 128}"]
    for key in ("via", "dev"):
        if key in words:
            spec += [key, words[words.index(key) + 1]]
    return spec


def killswitch_ruleset(table: str, tun: str, carriers: Sequence[tuple[str, int]]) -> str:
    """Drop everything leaving by any interface but the TUN and loopback, except the carrier
    connections and DHCP, so nothing leaks while the tunnel is down. The table is ``inet``, so
    one policy covers IPv4 and IPv6 alike.

    ``carriers`` are the (address, port) pairs the carrier may reach: every address of the
    server (IPv6 and IPv4), and for the daemon every failover candidate's too.
    """
    carrier = "\n        ".join(
        f"{'ip' if ipaddress.ip_address(ip).version == 4 else 'ip6'} daddr {ip} tcp dport {port} accept"
        for ip, port in carriers
    )
    return f"""table inet {table} {{
    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        oifname "{tun}" accept
        {carrier}
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
    """The server offers no IPv6, so under a full tunnel IPv6 would bypass it: block it."""
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


def resolv_conf_text(servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]) -> bytes:
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

    def kill_switch(self, carriers: Sequence[tuple[str, int]]) -> None:
        table = nft_name("ks", self.tun)
        self.journal.add_nft_table("inet", table, killswitch_ruleset(table, self.tun, carriers))
        servers = ", ".join(format_endpoint(ip, port) for ip, port in carriers)
        log.info("kill switch on: only %s and the tunnel may be reached", servers)

    def full_tunnel(self, servers: list[str], ipv6: bool) -> None:
        """Route everything through the TUN but the carrier itself; ``ipv6``: the server offers
        IPv6 (route it through the tunnel too) or not (block it)."""
        routes = {server: route_to(server) for server in servers}
        if all(route is None for route in routes.values()):
            raise UserError(f"no route to the server ({', '.join(servers)})")
        for route in routes.values():
            if route:
                self.journal.add_route(route)
        for half in HALF_ROUTES:
            self.journal.add_route([half, "dev", self.tun])
        if ipv6:
            for half in HALF_ROUTES6:
                self.journal.add_route([half, "dev", self.tun])
        else:
            table = nft_name("v6", self.tun)
            self.journal.add_nft_table("inet", table, ipv6_block_ruleset(table))
        log.info(
            "full tunnel: all IPv4 %s through %s, server kept on its own path",
            "and IPv6" if ipv6 else "(IPv6 blocked: the server offers none)",
            self.tun,
        )

    def split_routes(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        for net in networks:
            self.journal.add_route([str(net), "dev", self.tun])
        if networks:
            log.info("split tunnel: %s through %s", ", ".join(map(str, networks)), self.tun)

    def dns(self, servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]) -> None:
        if not servers:
            return
        if systemd_resolved_active():
            names = [str(s) for s in servers]
            self.journal.resolvectl(self.tun, ["dns", self.tun, *names])
            self.journal.resolvectl(self.tun, ["domain", self.tun, "~."])
        else:
            self.journal.replace_file(RESOLV_CONF, resolv_conf_text(servers))
        log.info("DNS: using %s through the tunnel", ", ".join(map(str, servers)))
