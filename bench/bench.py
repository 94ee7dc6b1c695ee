#!/usr/bin/env python3
"""tunlib benchmark: raw veth vs tunlib (offload, plain) vs OpenVPN TCP, on one veth link.

    sudo bash bench/run.sh [--quick]            (the usual way, from any directory; see bench/README.md)
    sudo python3 -m bench.bench [--quick] [--duration S] [--rows ROW,...] [--json PATH] [-v]   (from the repository)

One run builds a namespace lab (``netlab.py``, names ``tlx<pid><n>-*``), measures every
row over the *same* veth pair between the "server" and "alice" namespaces, and tears it all
down, also on Ctrl+C, SIGTERM or SIGHUP. Rows, in order:

* ``veth``     raw veth, no tunnel: the ceiling.
* ``offload``  tunlib, server default (TUN offload mode, MTU 1400).
* ``plain``    tunlib, ``server.py run --no-offload`` (one packet per frame, MTU 1400).
* ``tls``      tunlib offload mode inside TLS 1.3 (``server.py init --tls``, profile ``Transport = tls``).
* ``tls-squid`` the same through squid (HTTP CONNECT) running in the server namespace.
* ``offload6`` tunlib offload again, measured with IPv6 inside the tunnel (TSO6 super-packets).
* ``openvpn``  OpenVPN 2.x, TCP, TLS mode with certificates made for this run, AES-128-GCM, no DCO.
* ``multi``    4 tunlib clients (own namespace and veth each) sending to the server at once.
* ``flood``    fair sharing: alice's iperf3 down and up and the server's pings to her, alone,
               while bob floods alice's tunnel address, and while bob floods the server's
               (``bench/flood.py``, UDP as fast as one core sends).
* ``gateway``  ``server.py run --nat`` + ``client.py run --full-tunnel``: an HTTP download from
               an "internet" namespace behind the server, checked with SHA-256.

Per path row: iperf3 single stream up (client -> server) and down (``-R``), 4 streams up
(``-P 4``), the median RTT of idle pings sent every 0.2 s and every 0.01 s (the interval
matters: an idle thread takes longer to wake, see README "Speed"), and the CPU seconds
(user + system, from ``/proc/PID/stat``) the tunnel processes used during the three
throughput tests. Under the table, the targets of issue 11 (and of issue 8, for the TLS rows)
with this run's figures.

Figures are printed and saved (``bench/results/latest.{txt,json}``), never asserted: the
machine is shared and numbers are noisy. Exit status: 0 if every row ran or was skipped for a
stated reason, 1 if a row failed, 2 if the lab cannot run here at all, 130 if interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import netlab
from bench.blobserver import BLOCK_SIZE, blob_sha256

BENCH_DIR = Path(__file__).resolve().parent

log = logging.getLogger("bench")

RESULTS_DIR = BENCH_DIR / "results"
IPERF_PORT = 5201
IPERF_PAUSE = 0.5
"""Seconds between iperf3 tests."""
IPERF_SETUP_ERRORS = ("server is busy", "unable to receive control message", "unable to connect to server")
MULTI_CLIENTS = ("alice", "bob", "carol", "dave")
OPENVPN_PORT = 1194
OPENVPN_SERVER_IP, OPENVPN_CLIENT_IP = "10.98.0.1", "10.98.0.2"
OPENVPN_CIPHER = "AES-128-GCM"
TLS_SERVER_NAME = "vpn.bench.test"
SQUID_PORT = 3128
BLOB_PORT = 8080
PING_INTERVALS = (0.2, 0.01)
"""Seconds between pings: a slow and a fast pinger, each measured on every path row."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROW_KEYS = ("veth", "offload", "plain", "offload6", "tls", "tls-squid", "openvpn", "multi", "flood", "gateway")
ROW_LABELS = {
    "veth": "raw veth (no tunnel)",
    "offload": "tunlib offload (default)",
    "plain": "tunlib plain (--no-offload)",
    "offload6": "tunlib offload, IPv6 inside",
    "tls": "tunlib offload, TLS carrier",
    "tls-squid": "tunlib offload, TLS via squid",
    "openvpn": "OpenVPN TCP AES-128-GCM",
    "multi": "tunlib 4 clients, offload (sum)",
    "flood": "tunlib victim under a flood (alone)",
    "gateway": "tunlib gateway --nat (HTTP)",
}
METRICS = ("up", "down", "p4")
PEM = serialization.Encoding.PEM


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind (past every ``except Exception``) through
    every ``finally``, so the lab is torn down."""


class RowSkipped(Exception):
    """A row cannot run here (a tool is missing...): reported as ``skipped: reason``."""


@dataclass(frozen=True)
class Settings:
    mode: str
    seconds: int
    """Length of each iperf3 test, after ``omit`` seconds of discarded warm-up."""
    omit: int
    pings: int
    """Pings per interval at 0.2 s; the 0.01 s series sends ten times as many."""
    blob_bytes: int

    @classmethod
    def make(cls, quick: bool, seconds: int | None) -> Settings:
        if quick:
            return cls("quick", seconds or 2, 0, 10, 64 * BLOCK_SIZE)
        return cls("full", seconds or 10, 1, 20, 1024 * BLOCK_SIZE)


@dataclass
class Row:
    key: str
    label: str
    status: str = "pending"
    """ok, skipped or failed; the reason (for the last two) is in ``note``."""
    up: float | None = None
    down: float | None = None
    p4: float | None = None
    """Mbit/s. For ``multi`` the 4-client sum is reported as ``p4`` (4 streams in all)."""
    rtt_ms: dict[str, float] = field(default_factory=dict)
    """Median RTT in ms by ping interval (``"0.2"``, ``"0.01"``)."""
    cpu_s: float | None = None
    cpu_s_per_gb: float | None = None
    """CPU seconds of the tunnel processes per GB (1e9 bytes) received during the tests."""
    note: str = ""
    details: dict = field(default_factory=dict)


# -- the lab -----------------------------------------------------------------------


class BenchLab(netlab.TunnelLab):
    """netlab's TunnelLab under the benchmark's own name prefix, ``tlx<pid>_<n>``."""

    NAME_PREFIX = "tlx"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / CLK_TCK


def check_alive(processes: list[netlab.Process]) -> None:
    for process in processes:
        if process.returncode is not None:
            raise RuntimeError(f"{process.name} exited with {process.returncode}: {tail(process.log())}")


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# -- measurements ------------------------------------------------------------------


class IperfError(RuntimeError):
    pass


def iperf_argv(ns: netlab.Namespace, address: str, port: int, settings: Settings, extra: tuple[str, ...]) -> list:
    return ns.argv(
        "iperf3", "-c", address, "-p", port, "-t", settings.seconds, "-O", settings.omit,
        "-J", "--connect-timeout", 5000, *extra,
    )  # fmt: skip


def parse_iperf(stdout: str, returncode: int, what: str) -> dict:
    """The receiver's view of one iperf3 -J run: Mbit/s, bytes, sender retransmits."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        raise IperfError(f"{what}: iperf3 exited with {returncode} without JSON: {stdout[-300:]!r}") from None
    if returncode != 0 or "error" in data:
        raise IperfError(f"{what}: iperf3 exited with {returncode}: {data.get('error', 'no error message')}")
    received, sent = data["end"]["sum_received"], data["end"]["sum_sent"]
    return {
        "mbit_s": received["bits_per_second"] / 1e6,
        "bytes": received["bytes"],
        "seconds": received["seconds"],
        "retransmits": sent.get("retransmits"),
    }


def run_iperf(ns: netlab.Namespace, address: str, settings: Settings, *extra: str, port: int = IPERF_PORT) -> dict:
    """One iperf3 client run, after a short pause that lets the server re-arm and queues drain.

    A run that fails before any data moved (the server still busy with, or closing its
    listener after, the previous test: seen as "unable to receive control message:
    Connection reset by peer") is retried, at most twice; ``attempts`` records it.
    """
    argv, timeout = iperf_argv(ns, address, port, settings, extra), settings.seconds + settings.omit + 30
    what = f"iperf3 -c {address} {' '.join(extra)}".strip()
    for attempt in range(1, 4):
        time.sleep(IPERF_PAUSE * attempt)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        try:
            return {**parse_iperf(result.stdout, result.returncode, what), "attempts": attempt}
        except IperfError as exc:
            if attempt == 3 or not any(text in str(exc) for text in IPERF_SETUP_ERRORS):
                raise
            log.warning("%s; retrying", exc)
    raise AssertionError("unreachable")


def ping_avg(ns: netlab.Namespace, address: str, count: int, interval: float = PING_INTERVALS[0]) -> float:
    """Average RTT in ms of ``count`` pings, ``interval`` seconds apart; fails if none came back."""
    result = ns.ping(address, count=count, interval=interval, wait=2.0)
    match = re.search(r"= [\d.]+/([\d.]+)/", result.output)
    if not result.ok or match is None:
        raise RuntimeError(f"ping {address} from {ns.name} failed: {tail(result.output)}")
    if result.received != result.transmitted:
        log.warning("ping %s: %d of %d replies", address, result.received, result.transmitted)
    return float(match[1])


def ping_median(ns: netlab.Namespace, address: str, count: int, interval: float) -> float:
    """Median RTT in ms of ``count`` pings, ``interval`` seconds apart; fails if none came back.

    The median, not the average: the machine is shared, and one ping that waited for another
    engineer's process to leave the CPU moves an average of 20 by more than the effect measured.
    """
    deadline = math.ceil(count * interval + 2)
    result = ns.run("ping", "-n", "-c", count, "-i", interval, "-w", deadline, address, timeout=deadline + 30)
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", result.stdout)]
    if not times:
        raise RuntimeError(f"ping {address} from {ns.name} failed: {tail(result.stdout + result.stderr)}")
    if len(times) < count:
        log.warning("ping %s every %s s: %d of %d replies", address, interval, len(times), count)
    return statistics.median(times)


def ping_series(ns: netlab.Namespace, address: str, settings: Settings) -> dict[str, float]:
    """Median RTT at each of PING_INTERVALS, the same number of seconds of pinging each."""
    slowest = PING_INTERVALS[0]
    return {
        str(interval): ping_median(ns, address, max(1, round(settings.pings * slowest / interval)), interval)
        for interval in PING_INTERVALS
    }


def measure_path(
    row: Row, ns: netlab.Namespace, address: str, settings: Settings, tunnel: list[netlab.Process]
) -> None:
    """Idle pings, then up, down and 4-stream iperf3 from ``ns`` to ``address``, into ``row``."""
    pids = [p.pid for p in tunnel]
    row.rtt_ms = ping_series(ns, address, settings)
    cpu, received = 0.0, 0
    tests = {"up": (), "down": ("-R",), "p4": ("-P", "4")}
    for metric, extra in tests.items():
        log.info("  %s: iperf3 %s %s", row.key, metric, address)
        before = cpu_seconds(pids)
        result = run_iperf(ns, address, settings, *extra)
        check_alive(tunnel)
        used = cpu_seconds(pids) - before
        cpu += used
        received += result["bytes"]
        setattr(row, metric, result["mbit_s"])
        row.details[metric] = {**result, "cpu_s": used}
    if tunnel:
        row.cpu_s = cpu
        row.cpu_s_per_gb = cpu / (received / 1e9)


# -- the benchmark -----------------------------------------------------------------


class Bench:
    def __init__(self, lab: BenchLab, settings: Settings) -> None:
        self.lab = lab
        self.settings = settings
        self.alice: netlab.Peer | None = None
        self.others: list[netlab.Peer] = []
        self.internet: tuple[netlab.Namespace, netlab.Link] | None = None

    def build(self, keys: list[str]) -> None:
        """Namespaces and links first (all rows share them), then the iperf3 servers."""
        lab = self.lab
        self.alice = lab.add_client("alice")  # link 0: server 192.0.2.1 <-> alice 192.0.2.2
        if "multi" in keys:
            self.others = [lab.add_client(name) for name in MULTI_CLIENTS[1:]]
        elif "flood" in keys:
            self.others = [lab.add_client(MULTI_CLIENTS[1])]
        if "gateway" in keys:
            internet = lab.add_namespace("inet")
            self.internet = (internet, lab.connect(lab.server, internet))
        for i in range(1 + len(self.others)):
            port = IPERF_PORT + i
            server = lab.server.spawn(f"iperf3-s-{port}", "iperf3", "-s", "-p", port, "--forceflush")
            server.wait_for_log(r"Server listening")
        log.info("lab %s built: %d namespaces", lab.prefix, len(lab.namespaces))

    @property
    def server_veth_ip(self) -> str:
        assert self.alice is not None
        return self.alice.link.address_a

    @contextlib.contextmanager
    def processes(self) -> Iterator[list[netlab.Process]]:
        """Stop (newest first, by PID) every process started inside the block, however it ends."""
        first = len(self.lab.processes)
        started: list[netlab.Process] = []
        try:
            yield started
        finally:
            for process in reversed(self.lab.processes[first:]):
                code = process.stop()
                if code not in (0, -signal.SIGTERM):
                    log.warning("%s exited with %s: %s", process.name, code, tail(process.log()))

    @contextlib.contextmanager
    def tunlib(self, peers: list[netlab.Peer], *server_args: str, client_args: tuple[str, ...] = ()) -> Iterator[list]:
        """A tunlib server and clients for ``peers``; yields [server, client...]; all stopped after."""
        with self.processes() as started:
            started.append(self.lab.start_server(*server_args))
            started.extend(self.lab.start_client(peer, *client_args) for peer in peers)
            yield started

    # -- rows -------------------------------------------------------------
    def row_veth(self, row: Row) -> None:
        assert self.alice is not None
        measure_path(row, self.alice.ns, self.server_veth_ip, self.settings, [])
        row.note = f"{self.alice.link.address_b} -> {self.server_veth_ip}"

    def _tunlib_path(self, row: Row, server_args: tuple[str, ...], expected_mode: str, ipv6: bool = False) -> None:
        assert self.alice is not None
        with self.tunlib([self.alice], *server_args) as tunnel:
            mode = re.search(r"in (\w+) mode", tunnel[0].log())
            if mode is None or mode[1] != expected_mode:
                raise RuntimeError(f"server is not in {expected_mode} mode: {tail(tunnel[0].log())}")
            inside = self.lab.server_ip6 if ipv6 else self.lab.server_ip
            measure_path(row, self.alice.ns, inside, self.settings, tunnel)
        row.note = f"{expected_mode} mode, MTU 1400, carrier {self.alice.link.address_b} -> {self.server_veth_ip}"
        if ipv6:
            row.note += f", inside to {self.lab.server_ip6}"

    def row_offload(self, row: Row) -> None:
        self._tunlib_path(row, (), "offload")

    def row_plain(self, row: Row) -> None:
        self._tunlib_path(row, ("--no-offload",), "plain")

    def row_offload6(self, row: Row) -> None:
        self._tunlib_path(row, (), "offload", ipv6=True)

    @contextlib.contextmanager
    def tls_mode(self) -> Iterator[Path]:
        """``init --tls`` for the row (``init --no-tls`` after it); yields alice's profile as a TLS
        profile would read (her own plus ``Transport = tls`` and ``ServerName``)."""
        assert self.alice is not None
        self.lab.server_cli("init", "--tls", "--server-name", TLS_SERVER_NAME, check=True)
        try:
            profile = self.lab.workdir / "alice-tls.conf"
            profile.touch(mode=0o600)
            text = self.alice.profile.read_text()
            profile.write_text(f"{text.rstrip()}\nTransport = tls\nServerName = {TLS_SERVER_NAME}\n")
            yield profile
        finally:
            self.lab.server_cli("init", "--no-tls", check=True)

    def _tls_path(self, row: Row, *client_args: str) -> None:
        assert self.alice is not None
        alice = self.alice
        with self.tls_mode() as profile, self.processes() as tunnel:
            tunnel.append(self.lab.start_server())
            client = alice.ns.spawn("client-alice-tls", *self.lab.client_argv(alice, *client_args, profile=profile))
            tunnel.append(client)
            client.wait_for_log(r"connected to ")
            alice.ns.wait_for_address(alice.tunnel_ip)
            if "with TLS" not in tunnel[0].log() or "in offload mode" not in tunnel[0].log():
                raise RuntimeError(f"server is not in TLS offload mode: {tail(tunnel[0].log())}")
            measure_path(row, alice.ns, self.lab.server_ip, self.settings, tunnel)

    def row_tls(self, row: Row) -> None:
        self._tls_path(row)
        row.note = f"offload mode, TLS 1.3 (SNI {TLS_SERVER_NAME}, ALPN http/1.1), carrier to {self.server_veth_ip}"

    def row_tls_squid(self, row: Row) -> None:
        squid = shutil.which("squid")
        if squid is None:
            raise RowSkipped("squid not installed (apt-get install squid)")
        conf = self.lab.workdir / "squid.conf"
        conf.write_text(
            f"http_port {self.server_veth_ip}:{SQUID_PORT}\n"
            "http_access allow all\n"
            "cache deny all\n"
            "access_log none\n"
            "cache_log /dev/null\n"
            "pid_filename none\n"
            "shutdown_lifetime 0 seconds\n"
        )
        with self.processes() as started:
            proxy = self.lab.server.spawn("squid", squid, "-N", "-f", conf)
            started.append(proxy)
            netlab.wait_until(
                lambda: f":{SQUID_PORT} " in self.lab.server.run("ss", "-Hltn").stdout, 30, "squid to listen"
            )
            self._tls_path(row, "--proxy", f"http://{self.server_veth_ip}:{SQUID_PORT}")
            version = subprocess.run([squid, "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
        row.note = (
            f"as 'tls', through {version.strip() or 'squid'} (HTTP CONNECT) in the server namespace; CPU excludes squid"
        )

    def row_openvpn(self, row: Row) -> None:
        openvpn = shutil.which("openvpn")
        if openvpn is None:
            raise RowSkipped("openvpn not installed (apt-get install openvpn)")
        assert self.alice is not None
        lab, alice = self.lab, self.alice
        pki = make_pki(lab.workdir / "pki")
        common = [
            openvpn, "--dev-type", "tun", "--disable-dco", "--verb", "3",
            "--data-ciphers", OPENVPN_CIPHER, "--cipher", OPENVPN_CIPHER, "--ca", pki["ca"],
        ]  # fmt: skip
        with self.processes() as tunnel:
            server = lab.server.spawn(
                "openvpn-server", *common, "--dev", lab.ifname("o0"),
                "--proto", "tcp-server", "--local", self.server_veth_ip, "--lport", OPENVPN_PORT,
                "--ifconfig", OPENVPN_SERVER_IP, OPENVPN_CLIENT_IP,
                "--tls-server", "--dh", "none", "--cert", pki["server.crt"], "--key", pki["server.key"],
            )  # fmt: skip
            tunnel.append(server)
            server.wait_for_log(r"Listening for incoming TCP connection")
            client = alice.ns.spawn(
                "openvpn-client", *common, "--dev", lab.ifname("o1"),
                "--proto", "tcp-client", "--remote", self.server_veth_ip, OPENVPN_PORT, "--nobind",
                "--ifconfig", OPENVPN_CLIENT_IP, OPENVPN_SERVER_IP,
                "--tls-client", "--remote-cert-tls", "server", "--cert", pki["client.crt"], "--key", pki["client.key"],
            )  # fmt: skip
            tunnel.append(client)
            for process in (server, client):
                process.wait_for_log(r"Initialization Sequence Completed")
            ciphers = set(re.findall(r"Data Channel: Cipher '([^']+)'", client.log() + server.log(), re.IGNORECASE))
            if ciphers != {OPENVPN_CIPHER}:
                raise RuntimeError(f"OpenVPN data channel ciphers {sorted(ciphers)}, expected {OPENVPN_CIPHER}")
            version = re.search(r"OpenVPN (\d+\.\d+\.\d+)", server.log())
            measure_path(row, alice.ns, OPENVPN_SERVER_IP, self.settings, tunnel)
        row.note = f"OpenVPN {version[1] if version else '?'}, TLS (EC P-256 certs), tun-mtu 1500 (its default)"

    def row_multi(self, row: Row) -> None:
        assert self.alice is not None
        peers = [self.alice, *self.others]
        settings = self.settings
        with self.tunlib(peers) as tunnel:
            pids = [p.pid for p in tunnel]
            for peer in peers:  # every tunnel answers before the clock starts
                ping_avg(peer.ns, self.lab.server_ip, 1)
            log.info("  multi: %d clients x iperf3 up at once", len(peers))
            time.sleep(IPERF_PAUSE)
            before = cpu_seconds(pids)
            runs = [
                subprocess.Popen(
                    iperf_argv(peer.ns, self.lab.server_ip, IPERF_PORT + i, settings, ()),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for i, peer in enumerate(peers)
            ]
            deadline = time.monotonic() + settings.seconds + settings.omit + 30
            try:
                outputs = [run.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for run in runs]
            finally:
                for run in runs:  # after a timeout or an interrupt: none is left behind
                    if run.poll() is None:
                        run.kill()
                        run.wait()
            results = [
                parse_iperf(out, run.returncode, f"iperf3 from {peer.name}")
                for peer, run, out in zip(peers, runs, outputs, strict=True)
            ]
            check_alive(tunnel)
            row.cpu_s = cpu_seconds(pids) - before
        row.p4 = sum(r["mbit_s"] for r in results)
        row.cpu_s_per_gb = row.cpu_s / (sum(r["bytes"] for r in results) / 1e9)
        row.details["per_client_mbit_s"] = {p.name: r["mbit_s"] for p, r in zip(peers, results, strict=True)}
        row.details["clients"] = results
        row.note = "4 client namespaces, own veth each; 1 stream up per client; CPU = server + 4 clients"

    def row_flood(self, row: Row) -> None:
        """The victim's share while another client floods it, then the server's address."""
        assert self.alice is not None and self.others
        alice, bob, lab, settings = self.alice, self.others[0], self.lab, self.settings
        server_ip = lab.server_ip
        flood_seconds = 2 * (settings.seconds + settings.omit + 4 * IPERF_PAUSE) + 15
        cases = {"alone": None, "at_victim": alice.tunnel_ip, "at_server": server_ip}
        with self.tunlib([alice, bob]) as tunnel:
            for case, target in cases.items():
                with self.processes():
                    if target is not None:
                        flood = bob.ns.spawn(
                            f"flood-{case}", sys.executable, BENCH_DIR / "flood.py",
                            "--target", target, "--seconds", flood_seconds,
                        )  # fmt: skip
                        flood.wait_for_log("flooding")
                    log.info("  flood: %s, alice iperf3 down and up", case)
                    down = run_iperf(alice.ns, server_ip, settings, "-R")["mbit_s"]
                    up = run_iperf(alice.ns, server_ip, settings)["mbit_s"]
                    pings = lab.server.ping(alice.tunnel_ip, count=100, interval=0.02, wait=2.0)
                    check_alive(tunnel)
                row.details[case] = {
                    "down": down,
                    "up": up,
                    "ping_loss": 1 - pings.received / max(1, pings.transmitted),
                }
        alone = row.details["alone"]
        row.down, row.up = alone["down"], alone["up"]
        for case in ("at_victim", "at_server"):
            got = row.details[case]
            got["down_share"], got["up_share"] = got["down"] / alone["down"], got["up"] / alone["up"]
        row.note = "victim alice; flooder bob (UDP, bench/flood.py); " + "; ".join(
            f"flood {case.replace('_', ' ')}: down {row.details[case]['down']:,.0f} "
            f"({row.details[case]['down_share']:.0%}), up {row.details[case]['up']:,.0f} "
            f"({row.details[case]['up_share']:.0%}), ping loss {row.details[case]['ping_loss']:.0%}"
            for case in ("at_victim", "at_server")
        )

    def row_gateway(self, row: Row) -> None:
        for tool in ("curl", "nft"):
            if shutil.which(tool) is None:
                raise RowSkipped(f"'{tool}' not installed")
        assert self.alice is not None and self.internet is not None
        internet, link = self.internet
        alice, settings = self.alice, self.settings
        web_ip, size, seed = link.address_b, settings.blob_bytes, f"tunlib-bench-{os.getpid()}"
        expected = blob_sha256(size, seed)
        url = f"http://{web_ip}:{BLOB_PORT}/blob"
        with self.processes():
            blob = internet.spawn(
                "blobserver", sys.executable, "-u", BENCH_DIR / "blobserver.py",
                "--bind", web_ip, "--port", BLOB_PORT, "--size", size, "--seed", seed,
            )  # fmt: skip
            blob.wait_for_log(r"blobserver listening")
            if alice.ns.run("curl", "-s", "-m", "2", "-o", "/dev/null", url).returncode == 0:
                raise RuntimeError(f"{url} is reachable from alice without the tunnel: the row would measure nothing")
            with self.tunlib([alice], "--nat", "--egress", link.ifname_a, client_args=("--full-tunnel",)) as tunnel:
                route = alice.ns.run("ip", "-4", "route", "get", web_ip, check=True).stdout
                if f"dev {alice.tun} " not in route:
                    raise RuntimeError(f"the route to {web_ip} does not use the tunnel: {route.strip()}")
                row.rtt_ms = ping_series(alice.ns, web_ip, settings)
                pids = [p.pid for p in tunnel]
                log.info("  gateway: downloading %d MiB through the tunnel", size // BLOCK_SIZE)
                before = cpu_seconds(pids)
                fetch = alice.ns.run(
                    "bash", "-c",
                    'set -o pipefail; curl -sS --fail -m "$2" -w "%{stderr}%{size_download} %{time_total}\\n" "$1"'
                    " | sha256sum",
                    "fetch", url, str(max(120, size // 10_000_000)),
                    timeout=max(180, size // 5_000_000),
                )  # fmt: skip
                check_alive(tunnel)
                row.cpu_s = cpu_seconds(pids) - before
        if fetch.returncode != 0:
            raise RuntimeError(f"download failed ({fetch.returncode}): {tail(fetch.stderr)}")
        got_bytes, seconds = fetch.stderr.split()[-2:]
        digest = fetch.stdout.split()[0]
        if int(got_bytes) != size or digest != expected:
            raise RuntimeError(f"download corrupt: {got_bytes} of {size} bytes, sha256 {digest} != {expected}")
        row.down = int(got_bytes) * 8 / float(seconds) / 1e6
        row.cpu_s_per_gb = row.cpu_s / (size / 1e9)
        row.details["download"] = {"bytes": size, "seconds": float(seconds), "sha256": digest, "sha256_ok": True}
        row.note = (
            f"{size // BLOCK_SIZE} MiB from 'internet' ns {web_ip} via server NAT, sha256 ok; "
            "RTT to that host; curl|sha256sum and HTTP server share the CPU"
        )


def make_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA plus server and client certificates (EC P-256), valid for a day."""
    directory.mkdir(mode=0o700)
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
        leaf = not cert_sign
        return x509.KeyUsage(
            digital_signature=leaf, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=leaf, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
        )  # fmt: skip

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, **kind: bool
    ) -> x509.Certificate:
        is_ca = kind.get("ca", False)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
            .add_extension(key_usage(cert_sign=is_ca), critical=True)
        )
        if not is_ca:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if kind.get("server") else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(filename: str, data: bytes) -> Path:
        path = directory / filename
        path.touch(mode=0o600)
        path.write_bytes(data)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca": write("ca.crt", issue("tlx-bench-ca", ca_key, "tlx-bench-ca", ca_key, ca=True).public_bytes(PEM))}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(f"tlx-bench-{role}", key, "tlx-bench-ca", ca_key, server=role == "server")
        files[f"{role}.crt"] = write(f"{role}.crt", cert.public_bytes(PEM))
        pkcs8 = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        files[f"{role}.key"] = write(f"{role}.key", pkcs8)
    return files


# -- report ------------------------------------------------------------------------


def ratios(rows: list[Row]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each row's up/down/p4 divided by raw veth's, by OpenVPN TCP's and by tunlib offload's
    (the reference of the TLS targets), where both exist."""
    base = {row.key: row for row in rows if row.status == "ok"}
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in rows:
        out[row.key] = {}
        for ref in ("veth", "openvpn", "offload"):
            out[row.key][ref] = {}
            for metric in METRICS:
                mine, theirs = getattr(row, metric), getattr(base.get(ref), metric, None)
                out[row.key][ref][metric] = mine / theirs if mine is not None and theirs else None
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio_cell(values: dict[str, float | None]) -> str:
    return "/".join(fmt(values[m], ".2f" if (values[m] or 0) < 10 else ".1f") for m in METRICS)


def added_rtt(row: Row, veth: Row | None, interval: str) -> float | None:
    """RTT added by the tunnel at one ping interval: the row's average minus raw veth's."""
    if veth is None or interval not in row.rtt_ms or interval not in veth.rtt_ms:
        return None
    return row.rtt_ms[interval] - veth.rtt_ms[interval]


@dataclass(frozen=True)
class Target:
    """One target of issue 11: a figure of this run against a bound computed from this run."""

    name: str
    value: float | None
    bound: float | None
    unit: str
    at_most: bool = False
    """The figure must be <= the bound (latency) instead of >= it (throughput)."""

    def verdict(self) -> str:
        if self.value is None or self.bound is None:
            return "not measured"
        met = self.value <= self.bound if self.at_most else self.value >= self.bound
        return "met" if met else "MISSED"


def targets(rows: list[Row]) -> list[Target]:
    """The issue 11 targets, each as ratio or bound within this one run (never loosened)."""
    ok = {row.key: row for row in rows if row.status == "ok"}
    veth, offload, plain, multi, openvpn = (ok.get(k) for k in ("veth", "offload", "plain", "multi", "openvpn"))

    def scaled(row: Row | None, metric: str, factor: float) -> float | None:
        value = getattr(row, metric, None) if row is not None else None
        return None if value is None else value * factor

    def value(row: Row | None, metric: str) -> float | None:
        return getattr(row, metric, None) if row is not None else None

    veth_best = max((v for v in (value(veth, "up"), value(veth, "p4")) if v is not None), default=None)
    found = [
        Target("offload single stream up >= 0.5 x raw veth up", value(offload, "up"), scaled(veth, "up", 0.5),
               "Mbit/s"),
        Target("offload single stream down >= 0.5 x raw veth down", value(offload, "down"),
               scaled(veth, "down", 0.5), "Mbit/s"),
        Target("plain MTU 1400 up >= 1500 Mbit/s", value(plain, "up"), 1500.0 if plain else None, "Mbit/s"),
        Target("plain MTU 1400 down >= 1500 Mbit/s", value(plain, "down"), 1500.0 if plain else None, "Mbit/s"),
        Target("4 clients sum >= 0.4 x raw veth (best of up, 4 streams)", value(multi, "p4"),
               None if veth_best is None else 0.4 * veth_best, "Mbit/s"),
    ]  # fmt: skip
    offload6 = ok.get("offload6")
    for metric in ("up", "down"):
        name = f"IPv6 inside, offload {metric} >= 0.9 x IPv4 inside (issue 10)"
        bound = scaled(offload, metric, 0.9) if offload6 else None
        found.append(Target(name, value(offload6, metric), bound, "Mbit/s"))
    flood = ok.get("flood")
    for case in ("at_victim", "at_server"):
        got = flood.details.get(case, {}) if flood is not None else {}
        where = case.replace("_", " ")
        for metric in ("down", "up"):
            name = f"victim keeps >= 40% of its {metric} with a flood {where} (issue 7)"
            found.append(Target(name, got.get(f"{metric}_share"), 0.4 if got else None, "share"))
        name = f"victim ping loss <= 2% with a flood {where} (issue 7)"
        found.append(Target(name, got.get("ping_loss"), 0.02 if got else None, "share", at_most=True))
    for key, factor in (("tls", 0.8), ("tls-squid", 0.5)):
        for metric in ("up", "down"):
            name = f"{key} single stream {metric} >= {factor} x tunlib offload (issue 8)"
            found.append(Target(name, value(ok.get(key), metric), scaled(offload, metric, factor), "Mbit/s"))
    for interval in (str(i) for i in PING_INTERVALS):
        for row in (offload, plain):
            if row is not None:
                found.append(
                    Target(
                        f"{row.key} added RTT at {interval} s <= OpenVPN-TCP's",
                        added_rtt(row, veth, interval),
                        added_rtt(openvpn, veth, interval) if openvpn is not None else None,
                        "ms",
                        at_most=True,
                    )
                )
    return found


def render(rows: list[Row], settings: Settings, table_ratios: dict) -> str:
    veth = next((r for r in rows if r.key == "veth" and r.status == "ok"), None)
    intervals = [str(i) for i in PING_INTERVALS]
    rtt_heads = "".join(f" {'RTT@' + i:>8} {'+RTT@' + i:>9}" for i in intervals)
    header = (
        f"{'row':34} {'up':>8} {'down':>8} {'4 str':>8}  {'vs veth up/dn/4':>16} {'vs OpenVPN up/dn/4':>19}"
        f"{rtt_heads} {'CPU s':>6} {'CPU s/GB':>8}"
    )
    lines = [
        f"tunlib benchmark, {settings.mode} mode: {settings.seconds} s per iperf3 test"
        f" (+{settings.omit} s omitted); pings every {' s and every '.join(intervals)} s"
        f" ({settings.pings * PING_INTERVALS[0]:.0f} s of each); Mbit/s, RTT = median in ms",
        header,
        "-" * len(header),
    ]
    for row in rows:
        if row.status != "ok":
            lines.append(f"{row.label:34} {row.status}: {row.note}")
            continue
        r = table_ratios[row.key]
        rtt_cells = "".join(
            f" {fmt(row.rtt_ms.get(i), '.3f'):>8} {fmt(added_rtt(row, veth, i), '+.3f'):>9}" for i in intervals
        )
        lines.append(
            f"{row.label:34} {fmt(row.up, ',.0f'):>8} {fmt(row.down, ',.0f'):>8} {fmt(row.p4, ',.0f'):>8}"
            f"  {ratio_cell(r['veth']):>16} {ratio_cell(r['openvpn']):>19}"
            f"{rtt_cells} {fmt(row.cpu_s, '.1f'):>6} {fmt(row.cpu_s_per_gb, '.2f'):>8}"
        )
    lines.append("")
    lines += [f"  {row.key}: {row.note}" for row in rows if row.status == "ok" and row.note]
    lines += [
        f"  {row.key} vs tunlib offload (up/down/4): {ratio_cell(table_ratios[row.key]['offload'])}"
        for row in rows
        if row.key.startswith("tls") and row.status == "ok"
    ]
    lines.append(
        "  'multi' puts its 4-client sum under '4 str'; 'gateway' puts its download under 'down'."
        " CPU = user+sys of the tunnel processes during the throughput tests."
    )
    lines += ["", "targets (issues 11 and 8; figures and bounds from this run):"]
    for target in targets(rows):
        unit = target.unit
        spec = {"ms": ",.3f", "share": ".0%"}.get(unit, ",.0f")
        lines.append(
            f"  {target.verdict():>12}  {target.name}: {fmt(target.value, spec)}"
            f" {'<=' if target.at_most else '>='} {fmt(target.bound, spec)}{'' if unit == 'share' else ' ' + unit}"
        )
    return "\n".join(lines)


def environment() -> dict:
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()

    def version(*argv: str) -> str:
        if shutil.which(argv[0]) is None:
            return "missing"
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"

    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
        "tunlib_commit": commit,
        "iperf3": version("iperf3", "--version"),
        "openvpn": version("openvpn", "--version"),
    }


# -- main --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per test and fewer pings (CI smoke run)")
    parser.add_argument("--duration", type=int, metavar="S", help="seconds per iperf3 test (default 10, quick 2)")
    parser.add_argument(
        "--rows", default=",".join(ROW_KEYS), help=f"comma-separated subset of {','.join(ROW_KEYS)} (default: all)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json", help="where to write the results")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the lab's logs, state and certificates in DIR (a new directory)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists")
    args.rows = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = sorted(set(args.rows) - set(ROW_KEYS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {','.join(ROW_KEYS)}")
    if args.duration is not None and not 1 <= args.duration <= 300:
        parser.error("--duration must be 1..300 seconds")
    return args


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_rows(bench: Bench, rows: list[Row]) -> bool:
    """Run each row; a failure is recorded on the row, never stops the others. True if none failed."""
    runners: dict[str, Callable[[Row], None]] = {
        key: getattr(bench, f"row_{key.replace('-', '_')}") for key in ROW_KEYS
    }
    ok = True
    for row in rows:
        log.info("row %s: %s", row.key, row.label)
        started = time.monotonic()
        try:
            runners[row.key](row)
            row.status = "ok"
        except Interrupted:
            row.status, row.note = "skipped", "interrupted while this row ran"
            raise
        except RowSkipped as exc:
            row.status, row.note = "skipped", str(exc)
        except Exception as exc:
            log.exception("row %s failed", row.key)
            row.status, row.note, ok = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300], False
        row.details["wall_s"] = round(time.monotonic() - started, 1)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    problem = netlab.have_lab_privileges() or (None if shutil.which("iperf3") else "iperf3 is not installed")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = Settings.make(args.quick, args.duration)
    rows = [Row(key, ROW_LABELS[key]) for key in ROW_KEYS if key in args.rows]
    env = environment()
    # Explicitly for SIGINT too: a shell starts background jobs with SIGINT ignored, and
    # Python then never installs its KeyboardInterrupt handler.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    status, lab = 0, None
    try:
        lab = BenchLab(args.keep)
        bench = Bench(lab, settings)
        bench.build(args.rows)
        status = 0 if run_rows(bench, rows) else 1
    except Interrupted as exc:
        log.warning("interrupted by %s: tearing down", exc)
        status = 130
    except Exception as exc:
        log.exception("building the lab failed")
        for row in rows:
            if row.status == "pending":
                row.status, row.note = "failed", f"lab: {exc}".splitlines()[0][:300]
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # teardown must finish
        if lab is not None:
            lab.close()
            if lab.leftovers():
                log.error("teardown left %s", lab.leftovers())
                status = status or 1
    for row in rows:
        if row.status == "pending":
            row.status, row.note = "skipped", "interrupted before this row ran"
    table_ratios = ratios(rows)
    table = render(rows, settings, table_ratios)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.with_suffix(".txt").write_text(table + "\n")
    report = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "environment": {**env, "loadavg_after": os.getloadavg()},
        "units": {"up/down/p4": "Mbit/s (iperf3 receiver)", "rtt_ms": "ms, median", "cpu_s": "s user+sys"},
        "rows": [{**asdict(row), "ratios": table_ratios[row.key]} for row in rows],
        "targets": [{**asdict(t), "verdict": t.verdict()} for t in targets(rows)],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log.info("results: %s (and .txt)", args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
