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

from gateway import ipv6_block_ruleset, killswitch_ruleset, nft_name, resolv_conf_text
from nat import nat_ruleset

SUBNET = ipaddress.IPv4Network("10.0.0.0/24")


def test_table_names_are_tagged_and_safe() -> None:
    assert nft_name("ks", "tun-client0") == "tunlib_ks_tun_client0"
    assert nft_name("nat", "tun0") == "tunlib_nat_tun0"
    assert nft_name("v6", "a.b/c") == "tunlib_v6_a_b_c"


def chains(text: str) -> dict[str, list[str]]:
    """The ruleset's chains: name -> its lines in order (the type/hook line first), so a test can
    check that a rule sits in the right chain, in the right place, and that nothing else does."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            current = found.setdefault(line.split()[1], [])
        elif line == "}":
            current = None
        elif current is not None and line:
            current.append(line)
    return found


def test_killswitch_allows_only_tunnel_loopback_server_and_link_upkeep() -> None:
    text = killswitch_ruleset("tunlib_ks_t", "tun-client0", "203.0.113.2", 55555)
    assert text.startswith("table inet tunlib_ks_t {")
    rules = chains(text)
    assert set(rules) == {"output", "forward"}
    output, forward = rules["output"], rules["forward"]
    assert output[0] == "type filter hook output priority filter; policy drop;"
    assert output[1:6] == [
        'oifname "lo" accept',
        'oifname "tun-client0" accept',
        "ip daddr 203.0.113.2 tcp dport 55555 accept",
        "udp sport 68 udp dport 67 accept",  # DHCP keeps the lease
        "udp sport 546 udp dport 547 accept",
    ]
    assert len(output) == 7 and "nd-neighbor-solicit" in output[6] and output[6].endswith(" accept")
    assert forward == ["type filter hook forward priority filter; policy drop;", 'oifname "tun-client0" accept']


def test_a_daemon_kill_switch_also_lets_the_carrier_reach_every_failover_candidate() -> None:
    text = killswitch_ruleset("tunlib_ks_t", "tun-client0", "203.0.113.2", 55555, [("198.51.100.9", 443)])
    assert "ip daddr 203.0.113.2 tcp dport 55555 accept" in text
    assert "ip daddr 198.51.100.9 tcp dport 443 accept" in text
    assert "ip daddr 198.51.100.9 tcp dport 55555" not in text
    accepts = [line.strip() for line in text.splitlines() if line.strip().endswith("accept")]
    assert len(accepts) == 8, accepts


def test_nat_forwards_only_the_tunnel_subnet_between_tun_and_egress() -> None:
    text = nat_ruleset("tunlib_nat_tun0", SUBNET, "tun0", "eth0")
    assert text.startswith("table ip tunlib_nat_tun0 {")
    rules = chains(text)
    assert set(rules) == {"forward", "postrouting"}
    clamp = "tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu"
    assert rules["forward"] == [
        "type filter hook forward priority filter; policy accept;",
        f'iifname "tun0" oifname "eth0" {clamp}',
        f'iifname "eth0" oifname "tun0" {clamp}',
        'iifname "tun0" oifname "eth0" ip saddr 10.0.0.0/24 accept',
        'iifname "eth0" oifname "tun0" ip daddr 10.0.0.0/24 ct state established,related accept',
        'iifname "tun0" drop',  # after the accepts: everything else from or to the tunnel
        'oifname "tun0" drop',
    ]
    assert rules["postrouting"] == [
        "type nat hook postrouting priority srcnat; policy accept;",
        'oifname "eth0" ip saddr 10.0.0.0/24 masquerade',
    ]


def test_ipv6_block_drops_ipv6_last_in_the_output_chain() -> None:
    rules = chains(ipv6_block_ruleset("tunlib_v6_t"))
    assert set(rules) == {"output"}
    output = rules["output"]
    assert output[0] == "type filter hook output priority filter; policy accept;"
    assert output[1] == 'oifname "lo" accept'
    assert output[-1] == "meta nfproto ipv6 drop"
    assert all(line.endswith(" accept") for line in output[1:-1])


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


JOURNAL_DRIVER = """
import sys
from pathlib import Path
from journal import Journal
from gateway import killswitch_ruleset
journal = Journal(Path(sys.argv[1]))
for server in sys.argv[2:]:
    journal.add_nft_table("inet", "tunlib_ks_t", killswitch_ruleset("tunlib_ks_t", "tun9", server, 55555))
"""


def test_a_table_loaded_again_replaces_the_old_one_and_undo_removes_it(scratch_netns: str, tmp_path) -> None:
    """``nft -f`` alone would merge the second ruleset into the first table: two servers allowed."""
    journal = tmp_path / "journal.json"
    root = Path(__file__).resolve().parents[1]

    def in_ns(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", scratch_netns, *argv], capture_output=True, text=True, check=False, cwd=root
        )

    loaded = in_ns(sys.executable, "-c", JOURNAL_DRIVER, str(journal), "203.0.113.2", "203.0.113.9")
    assert loaded.returncode == 0, loaded.stderr
    listing = in_ns("nft", "list", "table", "inet", "tunlib_ks_t").stdout
    assert "203.0.113.9" in listing and "203.0.113.2" not in listing
    assert listing.count("policy drop") == 2  # one output and one forward chain, not two of each
    undo_code = "import sys, pathlib, journal; print(journal.Journal(pathlib.Path(sys.argv[1])).undo())"
    undo = in_ns(sys.executable, "-c", undo_code, str(journal))
    assert undo.stdout.strip() == "2", undo.stderr  # both loads were recorded; the second undo finds nothing
    assert in_ns("nft", "list", "table", "inet", "tunlib_ks_t").returncode != 0
