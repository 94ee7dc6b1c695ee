#!/usr/bin/env python3
"""tunlib under attack: what strangers and a rogue client cost the server and its clients.

    flock /tmp/tunlib-bench.lock .venv/bin/python -m bench.attack [--quick] [--seconds S] [--only NAME,...]
    (from the repository directory, like every module of bench/)

A measuring tool, not a test: figures are printed (and saved to bench/results/attack.{txt,json}),
never asserted. One run builds a namespace lab (``netlab.py``, names ``tla<pid>_<n>-*``)::

    server ── alice, bob      two legitimate clients running client.py (bob is the one measured)
           ── carol           a registered client used only to time handshakes (the probe)
           ── attacker        one source address
           ── attacker16      16 source addresses (198.51.100.1-16, routed by the server)

and runs each scenario for a bounded time, the first one without any attack (the baseline).
In each scenario the attack starts, runs alone for a moment (its server CPU per refused
connection is taken then, when nothing else runs), and then, with the attack still on:

* carol makes handshakes one after another (``attackers.py probe``): success rate, connect time;
* bob downloads from the server with iperf3 (``-R``, single TCP stream): throughput;
* bob pings the server's tunnel address every 50 ms: loss;
* the server's RSS and thread count are sampled (maximum reported).

For the idle-connection attacks, alice's or bob's connection (whichever is older) is then cut
(``ss -K`` in the server's namespace), once old enough to be redialled without backoff, and
the time until that client has reconnected is reported.

Scenarios: ``baseline``; ``idle`` and ``slowloris`` (256 connections from one host);
``idle16`` (the same from 16 addresses); ``garbage`` and ``wrong-mac`` (message-1 floods from
one host at its top rate); ``registry`` (a legitimate handshake's server CPU with 3 and with
1,000 registered clients); ``flood-client`` and ``flood-server`` (alice, authenticated, sends
UDP at 1 Gbit/s to bob's tunnel address, then to the server's: what bob keeps).

Bounded: every process has a deadline; the whole run takes about 2 minutes (``--quick``: under
60 s). Needs root, iperf3 and ``ss``. Run it only under ``flock /tmp/tunlib-bench.lock``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import netlab
from config import encode_key
from handshake import generate_private_key, public_key

BENCH_DIR = Path(__file__).resolve().parent

log = logging.getLogger("attack")

RESULTS_DIR = BENCH_DIR / "results"
ATTACKERS = ("-m", "bench.attackers")
"""The attacking programs, run as a module (labs run commands in the repository directory)."""
SUBNET = "10.99.0.0/21"
"""Room for 1,000 clients."""
EXTRA_SOURCES = ipaddress.IPv4Network("198.51.100.0/27")
"""attacker16's addresses come from here (TEST-NET-2): .1 to .16, each a /32; the server routes the /27."""
IPERF_PORT, IPERF_FLOOD_CLIENT_PORT, IPERF_FLOOD_SERVER_PORT = 5201, 5202, 5203
STABLE_SESSION = 10.0
"""client.STABLE_SESSION: a client whose session lasted this long reconnects at once, without
backoff. A connection is cut only once its session is this old, so that the figure is the
server's doing, not the client's backoff after the previous scenario's cut."""
REGISTRY_SIZE = 1000
REGISTRY_PROBE_INTERVAL = 0.06
"""Between the registry scenario's handshakes: under the server's 20 per second per source."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SCENARIOS = (
    "baseline",
    "idle",
    "slowloris",
    "idle16",
    "garbage",
    "wrong-mac",
    "registry",
    "flood-client",
    "flood-server",
)


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwind through every ``finally`` so the lab is torn down."""


class AttackLab(netlab.TunnelLab):
    NAME_PREFIX = "tla"


@dataclass
class Timing:
    attack_s: float
    """The attack alone, before the measurements: server CPU per refused connection."""
    measure_s: int
    """iperf3 and ping run this long."""
    probes: int
    probe_interval: float
    registry_handshakes: int
    """Sequential handshakes per registry size: /proc counts CPU in 10 ms ticks, so many."""

    @classmethod
    def make(cls, quick: bool, seconds: int | None) -> Timing:
        if quick:
            return cls(1.0, seconds or 2, 6, 0.2, 50)
        return cls(3.0, seconds or 8, 30, 0.2, 100)


@dataclass
class Result:
    name: str
    legit_ok: str = ""
    connect_ms: str = ""
    bob_mbit: float | None = None
    ping_loss_pct: float | None = None
    rss_mb: float | None = None
    threads: int | None = None
    refused: int | None = None
    cpu_us_per_refused: float | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


# -- the server process, from /proc and its log --------------------------------------


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_and_threads(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)[1])
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)[1])
    return rss_kb / 1024, threads


def refused_so_far(server: netlab.Process) -> int:
    """The server's total of refused connections, from the statistics SIGUSR1 makes it log."""
    lines = server.log().count("admission: ")
    server.send_signal(signal.SIGUSR1)
    netlab.wait_until(lambda: server.log().count("admission: ") > lines, 10, "server statistics")
    last = re.findall(r"admission: .*refused: (.*)", server.log())[-1]
    return sum(int(n) for n in re.findall(r" (\d+)(?:,|$)", last))


# -- the benchmark --------------------------------------------------------------------


class Attack:
    def __init__(self, lab: AttackLab, timing: Timing, attacker_nice: int = 0) -> None:
        self.lab = lab
        self.timing = timing
        self.attacker_nice = attacker_nice
        """Niceness of the stranger attackers: on a shared machine, a high value stands in for an
        attacker on a machine of its own (its CPU is then not taken from the tunnel)."""
        self.baseline_mbit: float | None = None

    def build(self) -> None:
        lab = self.lab
        self.server = lab.start_server()
        self.alice, self.bob, self.carol = (lab.add_client(n) for n in ("alice", "bob", "carol"))
        self.attacker = lab.add_namespace("attacker")
        self.attacker_link = lab.connect(lab.server, self.attacker)
        self.attacker16 = lab.add_namespace("attacker16")
        link16 = lab.connect(lab.server, self.attacker16)
        self.sources16 = [str(EXTRA_SOURCES.network_address + i) for i in range(1, 17)]
        for address in self.sources16:
            self.attacker16.ip("address", "add", f"{address}/32", "dev", link16.ifname_b)
        lab.server.ip("route", "add", str(EXTRA_SOURCES), "via", link16.address_b)
        self.target16 = f"{link16.address_a}:{netlab.SERVER_PORT}"
        for ns in (self.attacker, self.attacker16):  # the attackers' own namespaces: reuse ports fast
            ns.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        lab.start_client(self.alice)
        lab.start_client(self.bob)
        self.connected_at = {"alice": time.monotonic(), "bob": time.monotonic()}
        iperf_servers = [(lab.server, IPERF_PORT), (lab.server, IPERF_FLOOD_SERVER_PORT)]
        for ns, port in [*iperf_servers, (self.bob.ns, IPERF_FLOOD_CLIENT_PORT)]:
            ns.spawn(f"iperf3-s-{port}", "iperf3", "-s", "-p", port, "--forceflush").wait_for_log("Server listening")
        log.info("lab %s built", lab.prefix)

    # -- one scenario ---------------------------------------------------------
    def run(self, name: str) -> Result:
        result = Result(name)
        if name == "registry":
            self.registry(result)
            return result
        attack = self.start_attack(name)
        try:
            pid = self.server.pid
            if attack is not None:
                cpu0, refused0, attacker0 = cpu_seconds(pid), refused_so_far(self.server), cpu_seconds(attack.pid)
                time.sleep(self.timing.attack_s)
                cpu1, refused1 = cpu_seconds(pid), refused_so_far(self.server)
                attacker_pct = round((cpu_seconds(attack.pid) - attacker0) / self.timing.attack_s * 100)
                result.details["attacker_cpu_pct"] = attacker_pct
                result.refused = refused1 - refused0
                if result.refused:
                    result.cpu_us_per_refused = round((cpu1 - cpu0) / result.refused * 1e6, 1)
                result.details["attack_cpu_pct"] = round((cpu1 - cpu0) / self.timing.attack_s * 100)
            if attack is not None:
                result.note = f"CPU server {result.details['attack_cpu_pct']} %, attacker {attacker_pct} %"
            self.measure(result)
            if name in ("idle", "slowloris", "idle16"):
                name, seconds = self.cut_client()
                result.note += f"; {name} cut: back in {seconds:.1f} s"
        finally:
            if attack is not None:
                attack.stop()
                with contextlib.suppress(ValueError, IndexError):
                    result.details["attacker"] = json.loads(attack.log().strip().splitlines()[-1])
        if name in ("garbage", "wrong-mac") and "attacker" in result.details:
            result.note += f"; {result.details['attacker'].get('per_second')} attempts/s"
        return result

    def start_attack(self, name: str) -> netlab.Process | None:
        """The attacker process, or None for the baseline. Its own deadline ends it in any case."""
        bound = str(self.timing.attack_s + self.timing.measure_s + 30)
        target = f"{self.attacker_link.address_a}:{netlab.SERVER_PORT}"
        tool = ["nice", "-n", str(self.attacker_nice), sys.executable, *ATTACKERS]
        if name in ("idle", "slowloris"):
            argv = [*tool, "idle", "--target", target, "--connections", "256", "--duration", bound]
            return self.attacker.spawn(name, *argv, *(["--drip"] if name == "slowloris" else []))
        if name == "idle16":
            sources = [arg for s in self.sources16 for arg in ("--source", s)]
            argv = [*tool, "idle", "--target", self.target16, "--connections", "256", "--duration", bound]
            return self.attacker16.spawn(name, *argv, *sources)
        if name in ("garbage", "wrong-mac"):
            return self.attacker.spawn(name, *tool, "flood", "--target", target, "--kind", name, "--duration", bound)
        if name in ("flood-client", "flood-server"):
            address, port = (
                (self.bob.tunnel_ip, IPERF_FLOOD_CLIENT_PORT)
                if name == "flood-client"
                else (self.lab.server_ip, IPERF_FLOOD_SERVER_PORT)
            )
            argv = ["iperf3", "-u", "-b", "1G", "-l", "1400", "-c", address, "-p", port, "-t", bound]
            return self.alice.ns.spawn(name, *argv)
        return None

    def measure(self, result: Result) -> None:
        """Probe handshakes, bob's download and pings, all at once; sample the server meanwhile."""
        t, lab, bob = self.timing, self.lab, self.bob
        seconds = t.measure_s
        probe = self.carol.ns.spawn(
            "probe", sys.executable, *ATTACKERS, "probe", "--profile", self.carol.profile,
            "--endpoint", self.carol.endpoint, "--count", t.probes, "--interval", t.probe_interval,
        )  # fmt: skip
        count = int(seconds / 0.05)
        ping = bob.ns.spawn("ping", "ping", "-n", "-q", "-i", "0.05", "-c", count, "-w", seconds + 10, lab.server_ip)
        iperf = bob.ns.spawn("iperf", "iperf3", "-c", lab.server_ip, "-p", IPERF_PORT, "-R", "-J", "-t", seconds)
        peak_rss, peak_threads = 0.0, 0
        deadline = time.monotonic() + seconds + 60
        while any(p.returncode is None for p in (probe, ping, iperf)) and time.monotonic() < deadline:
            rss, threads = rss_and_threads(self.server.pid)
            peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
            time.sleep(0.25)
        for process in (probe, ping, iperf):
            process.stop()
        result.rss_mb, result.threads = round(peak_rss, 1), peak_threads
        try:
            report = json.loads(probe.log().strip().splitlines()[-1])
            times = report["times"]
            result.legit_ok = f"{report['ok']}/{report['count']}"
            if times:
                result.connect_ms = f"{statistics.median(times) * 1000:.0f}/{max(times) * 1000:.0f}"
            if report["errors"]:
                result.details["probe_errors"] = report["errors"]
        except (ValueError, IndexError, KeyError):
            result.legit_ok = "probe failed"
        match = re.search(r"(\d+) packets transmitted, (\d+) received", ping.log())
        if match:
            sent, received = int(match[1]), int(match[2])
            result.ping_loss_pct = round((sent - received) / sent * 100, 1) if sent else None
        with contextlib.suppress(ValueError, KeyError):
            data = json.loads(iperf.log()[iperf.log().index("{") :])
            result.bob_mbit = round(data["end"]["sum_received"]["bits_per_second"] / 1e6)

    def cut_client(self) -> tuple[str, float]:
        """Destroy the carrier connection of whichever of alice and bob has had its session
        longer, on the server; (name, seconds until its client has reconnected)."""
        peer = min((self.alice, self.bob), key=lambda p: self.connected_at[p.name])
        process = peer.process
        assert process is not None
        time.sleep(max(0.0, self.connected_at[peer.name] + STABLE_SESSION + 0.5 - time.monotonic()))
        before = process.log().count("reconnected to")
        start = time.monotonic()
        self.lab.server.run("ss", "-K", "dst", peer.link.address_b, "sport", "=", f":{netlab.SERVER_PORT}")
        try:
            netlab.wait_until(lambda: process.log().count("reconnected to") > before, 30, f"{peer.name} to reconnect")
        except TimeoutError:
            return peer.name, float("nan")
        self.connected_at[peer.name] = time.monotonic()
        return peer.name, self.connected_at[peer.name] - start

    # -- registry size ---------------------------------------------------------
    def registry(self, result: Result) -> None:
        """Server CPU per legitimate handshake with 3 registered clients, then with 1,000."""
        small = self.handshake_cost()
        clients = self.lab.state_dir / "clients"
        network = ipaddress.IPv4Network(SUBNET)
        hosts = network.hosts()
        taken = {str(next(network.hosts()))} | {p.tunnel_ip for p in self.lab.peers.values()}
        added = 0
        for address in hosts:
            if added == REGISTRY_SIZE - len(self.lab.peers):
                break
            if str(address) in taken:
                continue
            record = {
                "public_key": encode_key(public_key(generate_private_key())),
                "psk": encode_key(secrets.token_bytes(32)),
                "address": str(address),
            }
            path = clients / f"load{added:04d}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            added += 1
        self.handshake_cost(count=1)  # the first lookup after the change loads the 1,000 records
        large = self.handshake_cost()
        ratio = large[0] / small[0] if small[0] else float("nan")
        result.legit_ok = f"{large[2]}/{large[3]}"
        result.connect_ms = f"{large[1]:.0f} (3: {small[1]:.0f})"
        result.note = (
            f"server CPU per handshake: {small[0] * 1000:.2f} ms with 3 clients, "
            f"{large[0] * 1000:.2f} ms with {added + len(self.lab.peers)}: x{ratio:.2f}"
        )
        result.details.update(cpu_ms_3=small[0] * 1000, cpu_ms_1000=large[0] * 1000, ratio=ratio)

    def handshake_cost(self, count: int | None = None) -> tuple[float, float, int, int]:
        """(server CPU s per handshake, median connect ms, ok, count) over sequential probes."""
        count = count or self.timing.registry_handshakes
        cpu0 = cpu_seconds(self.server.pid)
        run = self.carol.ns.run(
            sys.executable, *ATTACKERS, "probe", "--profile", self.carol.profile, "--endpoint",
            self.carol.endpoint, "--count", str(count), "--interval", str(REGISTRY_PROBE_INTERVAL), timeout=120,
        )  # fmt: skip
        cpu = cpu_seconds(self.server.pid) - cpu0
        report = json.loads(run.stdout.strip().splitlines()[-1])
        median = statistics.median(report["times"]) * 1000 if report["times"] else float("nan")
        return cpu / max(report["ok"], 1), median, report["ok"], count


# -- report ------------------------------------------------------------------------


def fmt(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def render(results: list[Result], timing: Timing, quick: bool, nice: int) -> str:
    baseline = next((r.bob_mbit for r in results if r.name == "baseline"), None)
    header = (
        f"tunlib under attack ({'quick' if quick else 'full'}, attackers at nice {nice}: "
        f"attack alone {timing.attack_s} s, then {timing.measure_s} s of measurements)\n"
        "scenario      legit ok  connect ms   bob Mbit/s (vs base)  ping loss %  RSS MB  threads  "
        "refused  CPU us/refused  note"
    )
    lines = [header]
    for r in results:
        share = f" ({r.bob_mbit / baseline * 100:.0f} %)" if r.bob_mbit is not None and baseline else ""
        lines.append(
            f"{r.name:<13} {fmt(r.legit_ok):>8}  {fmt(r.connect_ms):>11}  "
            f"{fmt(r.bob_mbit) + share:>20}  {fmt(r.ping_loss_pct):>11}  {fmt(r.rss_mb):>6}  "
            f"{fmt(r.threads):>7}  {fmt(r.refused):>7}  {fmt(r.cpu_us_per_refused):>14}  {r.note}"
        )
    lines.append(
        "connect ms: median/max of carol's handshakes. CPU us/refused and the CPU % in the notes (of one core):\n"
        "measured while the attack ran alone, before the measurements."
    )
    return "\n".join(lines)


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: under 60 s in all")
    parser.add_argument("--seconds", type=int, help="measurement time per scenario (default 8, quick 3)")
    parser.add_argument("--only", help=f"comma-separated scenarios (baseline always runs): {','.join(SCENARIOS)}")
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="N",
        help="run the strangers' attack programs at this niceness (0-19): 19 comes closer to an attacker "
        "on its own machine, whose CPU the tunnel does not share",
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "attack.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    problem = netlab.have_lab_privileges()
    for tool in ("iperf3", "ss"):
        if problem is None and shutil.which(tool) is None:
            problem = f"{tool} is not installed"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    names = list(SCENARIOS)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(SCENARIOS)
        if unknown:
            print(f"error: unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        names = [n for n in SCENARIOS if n == "baseline" or n in wanted]
    if args.seconds is not None and not 1 <= args.seconds <= 60:
        print("error: --seconds must be 1-60", file=sys.stderr)
        return 2
    timing = Timing.make(args.quick, args.seconds)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    results: list[Result] = []
    status, lab, started = 0, None, time.monotonic()
    try:
        lab = AttackLab(subnet=SUBNET)
        bench = Attack(lab, timing, args.attacker_nice)
        bench.build()
        for name in names:
            log.info("scenario %s", name)
            try:
                results.append(bench.run(name))
            except (Exception, TimeoutError) as exc:
                log.exception("scenario %s failed", name)
                results.append(Result(name, note=f"failed: {exc}".splitlines()[0][:200]))
                status = 1
    except Interrupted as exc:
        log.warning("interrupted by %s: tearing down", exc)
        status = 130
    except Exception:
        log.exception("building the lab failed")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if lab is not None:
            lab.close()
            if lab.leftovers():
                log.error("teardown left %s", lab.leftovers())
                status = status or 1
    wall = f"\n(wall time {time.monotonic() - started:.0f} s)"
    table = render(results, timing, args.quick, args.attacker_nice) + wall
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.with_suffix(".txt").write_text(table + "\n")
    args.json.write_text(json.dumps({"timing": asdict(timing), "results": [asdict(r) for r in results]}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
