"""The nftables rulesets of the gateway features, and the route parsing they depend on.

The ruleset builders are pure functions, so their text is checked directly. Where root and
the ``nft`` command are available, each ruleset is also loaded for real into a throwaway
network namespace: the kernel's parser is the judge of whether our syntax is right.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import ipv6_block_ruleset, killswitch_ruleset, nft_name, resolv_conf_text
from nat import nat_ruleset

SUBNET = ipaddress.IPv4Network("10.0.0.0/24")


def test_table_names_are_tagged_and_safe() -> None:
    assert nft_name("ks", "tun-client0") == "tunlib_ks_tun_client0"
    assert nft_name("nat", "tun0") == "tunlib_nat_tun0"
    assert nft_name("v6", "a.b/c") == "tunlib_v6_a_b_c"


def test_killswitch_allows_only_tunnel_loopback_server_and_link_upkeep() -> None:
    text = killswitch_ruleset("tunlib_ks_t", "tun-client0", "203.0.113.2", 55555)
    assert "policy drop" in text
    assert 'oifname "tun-client0" accept' in text
    assert 'oifname "lo" accept' in text
    assert "ip daddr 203.0.113.2 tcp dport 55555 accept" in text
    assert "udp sport 68 udp dport 67 accept" in text  # DHCP keeps the lease
    assert "nd-neighbor-solicit" in text  # IPv6 neighbour discovery keeps the link
    accepts = [line.strip() for line in text.splitlines() if line.strip().endswith("accept")]
    assert len(accepts) == 7, accepts


def test_a_daemon_kill_switch_also_lets_the_carrier_reach_every_failover_candidate() -> None:
    text = killswitch_ruleset("tunlib_ks_t", "tun-client0", "203.0.113.2", 55555, [("198.51.100.9", 443)])
    assert "ip daddr 203.0.113.2 tcp dport 55555 accept" in text
    assert "ip daddr 198.51.100.9 tcp dport 443 accept" in text
    assert "ip daddr 198.51.100.9 tcp dport 55555" not in text
    accepts = [line.strip() for line in text.splitlines() if line.strip().endswith("accept")]
    assert len(accepts) == 8, accepts


def test_nat_forwards_only_the_tunnel_subnet_between_tun_and_egress() -> None:
    text = nat_ruleset("tunlib_nat_tun0", SUBNET, "tun0", "eth0")
    assert 'oifname "eth0" ip saddr 10.0.0.0/24 masquerade' in text
    assert 'iifname "tun0" oifname "eth0" ip saddr 10.0.0.0/24 accept' in text
    assert "ct state established,related accept" in text
    assert "maxseg size set rt mtu" in text
    assert 'iifname "tun0" drop' in text


def test_resolv_conf_text() -> None:
    servers = (ipaddress.IPv4Address("192.0.2.53"), ipaddress.IPv4Address("192.0.2.54"))
    text = resolv_conf_text(servers).decode()
    assert text.splitlines()[1:] == ["nameserver 192.0.2.53", "nameserver 192.0.2.54"]
    assert text.endswith("\n")


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    """A network namespace of our own, so a real ``nft -f`` changes nothing of the host's."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and nft")
    name = f"tlr-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize(
    "ruleset",
    [
        killswitch_ruleset("tunlib_ks_tun_client0", "tun-client0", "203.0.113.2", 55555),
        ipv6_block_ruleset("tunlib_v6_tun_client0"),
        nat_ruleset("tunlib_nat_tun0", SUBNET, "tun0", "eth0"),
    ],
    ids=["kill-switch", "ipv6-block", "nat"],
)
def test_the_kernel_accepts_each_ruleset(scratch_netns: str, ruleset: str) -> None:
    def nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", scratch_netns, "nft", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )

    loaded = nft("-f", "-", stdin=ruleset)
    assert loaded.returncode == 0, loaded.stderr
    listing = nft("list", "ruleset").stdout
    table = ruleset.split()[2]
    assert f"table {ruleset.split()[1]} {table}" in listing
    assert nft("delete", "table", ruleset.split()[1], table).returncode == 0
    assert nft("list", "ruleset").stdout.strip() == ""
