"""The server as an internet gateway: IP forwarding, masquerade, MSS clamping.

These are the classic hand-built VPN steps (``sysctl net.ipv4.ip_forward=1``, a MASQUERADE
rule, FORWARD accepts, TCPMSS clamping) written as code: all rules live in one nftables table
of our own, loaded in one transaction, so they appear together and vanish together
(``nft delete table ip tunlib_nat_tun0``). Nothing else in the host's firewall is touched.
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


def default_egress() -> str:
    """The interface of the IPv4 default route: where forwarded traffic leaves."""
    result = run_command(["ip", "-4", "route", "show", "default"])
    words = result.stdout.split()
    if "dev" not in words:
        raise UserError("no IPv4 default route to find the egress interface: pass --egress IFACE")
    return words[words.index("dev") + 1]


def nat_ruleset(table: str, subnet: ipaddress.IPv4Network, tun: str, egress: str) -> str:
    """Masquerade the tunnel subnet out of ``egress`` and forward only tunnel <-> egress.

    The MSS clamp rewrites the maximum segment size in forwarded TCP SYNs to fit the route's
    MTU, so websites never send segments too large for the tunnel (PMTU discovery is often
    broken by firewalls that drop ICMP).
    """
    return f"""table ip {table} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{tun}" oifname "{egress}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
        iifname "{egress}" oifname "{tun}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
        iifname "{tun}" oifname "{egress}" ip saddr {subnet} accept
        iifname "{egress}" oifname "{tun}" ip daddr {subnet} ct state established,related accept
        iifname "{tun}" drop
        oifname "{tun}" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{egress}" ip saddr {subnet} masquerade
    }}
}}
"""


def enable_nat(journal: Journal, subnet: ipaddress.IPv4Network, tun: str, egress: str | None) -> None:
    """Turn on forwarding and NAT for the tunnel, out of ``egress`` or the default route's interface."""
    if shutil.which("nft") is None:
        raise UserError("--nat needs the 'nft' command: install nftables")
    egress = egress or default_egress()
    table = nft_name("nat", tun)
    journal.add_nft_table("ip", table, nat_ruleset(table, subnet, tun, egress))
    journal.set_sysctl(IP_FORWARD, "1\n")
    log.info("NAT on: %s masqueraded out of %s (nft table ip %s)", subnet, egress, table)
