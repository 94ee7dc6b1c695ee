"""The server as an internet gateway: IP forwarding, masquerade (NAT44 and NAT66), MSS clamping.

These are the classic hand-built VPN steps (``sysctl net.ipv4.ip_forward=1`` and
``net.ipv6.conf.all.forwarding=1``, a MASQUERADE rule, FORWARD accepts, TCPMSS clamping)
written as code: all rules live in one ``inet`` nftables table of our own (one table serves
both IP versions), loaded in one transaction, so they appear together and vanish together
(``nft delete table inet tunlib_nat_tun0``). Nothing else in the host's firewall is touched.

IPv6 is masqueraded too (NAT66), as OpenVPN and most VPN providers do: the tunnel's prefix is
a private ULA that the internet cannot route back to, and the server usually has one public
IPv6 address, not a routed prefix to hand out.
Every change goes through a :class:`journal.Journal`, so ``server.py cleanup`` can undo a crash.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil

from errors import UserError
from gateway import nft_name
from journal import Journal
from netsetup import run_command

log = logging.getLogger(__name__)

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"


def default_egress() -> str:
    """The interface of the default route (IPv4's, else IPv6's): where forwarded traffic leaves."""
    for version in ("-4", "-6"):
        words = run_command(["ip", version, "route", "show", "default"]).stdout.split()
        if "dev" in words:
            return words[words.index("dev") + 1]
    raise UserError("no default route to find the egress interface: pass --egress IFACE")


def nat_ruleset(
    table: str, subnet: ipaddress.IPv4Network, tun: str, egress: str, subnet6: ipaddress.IPv6Network | None = None
) -> str:
    """Masquerade the tunnel subnets out of ``egress`` and forward only tunnel <-> egress.

    The MSS clamp rewrites the maximum segment size in forwarded TCP SYNs to fit the route's
    MTU, so websites never send segments too large for the tunnel (PMTU discovery is often
    broken by firewalls that drop ICMP).
    """
    forward6 = masquerade6 = ""
    if subnet6 is not None:
        forward6 = f"""
        iifname "{tun}" oifname "{egress}" ip6 saddr {subnet6} accept
        iifname "{egress}" oifname "{tun}" ip6 daddr {subnet6} ct state established,related accept"""
        masquerade6 = f"""
        oifname "{egress}" ip6 saddr {subnet6} masquerade"""
    return f"""table inet {table} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{tun}" oifname "{egress}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
        iifname "{egress}" oifname "{tun}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
        iifname "{tun}" oifname "{egress}" ip saddr {subnet} accept
        iifname "{egress}" oifname "{tun}" ip daddr {subnet} ct state established,related accept{forward6}
        iifname "{tun}" drop
        oifname "{tun}" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{egress}" ip saddr {subnet} masquerade{masquerade6}
    }}
}}
"""


def enable_nat(
    journal: Journal,
    subnet: ipaddress.IPv4Network,
    tun: str,
    egress: str | None,
    subnet6: ipaddress.IPv6Network | None = None,
) -> None:
    """Turn on forwarding and NAT for the tunnel, out of ``egress`` or the default route's interface."""
    if shutil.which("nft") is None:
        raise UserError("--nat needs the 'nft' command: install nftables")
    egress = egress or default_egress()
    table = nft_name("nat", tun)
    journal.add_nft_table("inet", table, nat_ruleset(table, subnet, tun, egress, subnet6))
    journal.set_sysctl(IP_FORWARD, "1\n")
    if subnet6 is not None:
        journal.set_sysctl(IPV6_FORWARDING, "1\n")
    nets = f"{subnet} and {subnet6}" if subnet6 is not None else str(subnet)
    log.info("NAT on: %s masqueraded out of %s (nft table inet %s)", nets, egress, table)
