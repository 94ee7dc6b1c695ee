"""A small network-namespace lab for tunlib's end-to-end tests and benchmarks.

Everything happens inside network namespaces this module creates, so no packet of a test
ever reaches the host's interfaces, routes or firewall. A :class:`TunnelLab` with two clients
(``P`` is the lab's prefix, e.g. ``tlb4242_0``)::

    +----------------------- P-server -----------------------+
    |  server.py: TUN Pt0 10.99.0.1/24                        |
    |  veth Pv0 192.0.2.1/30           veth Pv1 192.0.2.5/30  |
    +-------|--------------------------------|---------------+
    +-------|---- P-alice ------+   +--------|---- P-bob ------+
    |  veth Pw0 192.0.2.2/30    |   |  veth Pw1 192.0.2.6/30   |
    |  client.py: TUN Pc0       |   |  client.py: TUN Pc1      |
    |  10.99.0.2/24             |   |  10.99.0.3/24            |
    +---------------------------+   +--------------------------+

Each client namespace reaches the server over its own veth pair, numbered from TEST-NET-1
(RFC 5737, never routed on the Internet). Every name starts with ``tlb``, the process id and
a per-process counter, so concurrent labs on one machine never collide and anything left
behind is easy to recognise. Each namespace gets its own ``/etc/netns/NAME/resolv.conf``
(which ``ip netns exec`` mounts over ``/etc/resolv.conf``), so nothing run in the lab can
touch the host's.

:class:`Lab` knows namespaces, links, processes and teardown; :class:`TunnelLab` adds the
tunlib specifics (state directory, profiles, starting ``server.py`` and ``client.py``).
A lab is a context manager; its teardown stops every process it started (by PID: SIGTERM,
then SIGKILL), closes every socket it made, deletes its namespaces and their ``/etc/netns``
directories, and runs even when a test fails.

Sockets: :meth:`Namespace.socket` returns an ordinary Python socket that lives in the
namespace (made by a short-lived thread that entered it with ``setns``), so a test can talk
to the server from "inside" a client namespace without a helper process.

Requires root, iproute2 and ``/dev/net/tun``; ``tcpdump`` only for :class:`Capture`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import ipaddress
import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(os.environ.get("TUNLIB_REPO") or Path(__file__).resolve().parent)
"""The checkout whose ``server.py`` and ``client.py`` the lab runs (with ``sys.executable``):
this one, or the one named by ``$TUNLIB_REPO`` (e.g. to test or benchmark another revision)."""
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
LINK_NETWORKS = ipaddress.IPv4Network("192.0.2.0/24")
"""TEST-NET-1: cut into /30s, one per veth pair."""
TUNNEL_SUBNET = "10.99.0.0/24"
SERVER_PORT = 55555
JOURNAL_DIR = Path("/var/lib/tunlib")
"""Where tunlib journals host changes: ``{client,server}-<netns inode>-<tun>.json`` (journal.py)."""
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16
STOP_TIMEOUT = 5.0
"""How long a process gets after SIGTERM before SIGKILL."""
READY_TIMEOUT = 30.0
"""Generous: the machine is shared, and starting Python with cryptography takes a moment."""

_counter = itertools.count()
SHUTDOWN_DEADLINE = 2.0
"""The design's promise: SIGTERM ends a client or the server, cleanly, this fast."""
_open_labs: set[Lab] = set()
_libc = ctypes.CDLL(None, use_errno=True)


def have_lab_privileges() -> str | None:
    """Return why a lab cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespace lab needs root"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "iproute2 'ip' command missing"
    return None


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s.

    Readiness is always polled, never slept for: the machine is shared and speeds vary.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


class Process:
    """A process started in a namespace, its stdout and stderr captured to one log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid} rc={self.popen.returncode}>"

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """Wait until the log has a line matching ``pattern``; fail early if the process exits."""
        regex = re.compile(pattern, re.MULTILINE)

        def check() -> re.Match[str] | None:
            exited = self.returncode is not None  # before reading: a last line written at exit counts
            match = regex.search(self.log())
            if match is None and exited:
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before logging {pattern!r}:\n{self.log()}"
                )
            return match

        try:
            return wait_until(check, timeout, f"{self.name} to log {pattern!r}")  # type: ignore[return-value]
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; log so far:\n{self.log()}") from None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; raise ``subprocess.TimeoutExpired`` if it takes longer."""
        return self.popen.wait(timeout)

    def terminate(self, deadline: float = SHUTDOWN_DEADLINE) -> int:
        """SIGTERM; the exit status, failing the test if it takes longer than ``deadline``."""
        self.send_signal(signal.SIGTERM)
        try:
            return self.wait(deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {deadline} s after SIGTERM") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        if self.returncode is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    output: str
    count: int = 0
    """Replies asked for."""

    @property
    def ok(self) -> bool:
        """At least one reply came back."""
        return self.received > 0

    @property
    def all_answered(self) -> bool:
        return self.received >= self.count


class Namespace:
    """One network namespace of a lab: run commands in it, make sockets in it."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    def argv(self, *command: str | os.PathLike[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, command)]

    def run(
        self, *command: str | os.PathLike[str], timeout: float = 60.0, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace (in the repository directory)."""
        result = subprocess.run(
            self.argv(*command), capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, command))} failed with {result.returncode} in {self.name}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def spawn(self, name: str, *command: str | os.PathLike[str]) -> Process:
        """Start a long-running process; the lab stops it at teardown.

        Its log is ``NAME.log`` in the lab's directory (``NAME-2.log`` for a second one, and so on).
        """
        log_path = self.lab.workdir / f"{name}.log"
        for n in itertools.count(2):
            if not log_path.exists():
                break
            log_path = self.lab.workdir / f"{name}-{n}.log"
        return self.lab.track(Process(name, self.argv(*command), log_path, REPO))

    def ip(self, *args: str) -> str:
        return subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True, check=True).stdout

    def links(self, kind: str | None = None) -> list[str]:
        """Interface names in this namespace (only TUNs with ``kind="tun"``)."""
        args = ["-o", "link", "show"] + (["type", kind] if kind else [])
        return [line.split(":")[1].strip().split("@")[0] for line in self.ip(*args).splitlines() if line.strip()]

    def has_address(self, address: str) -> bool:
        return f" {address}/" in self.ip("-o", "-4", "address", "show")

    def wait_for_address(self, address: str, timeout: float = READY_TIMEOUT) -> None:
        wait_until(lambda: self.has_address(address), timeout, f"address {address} in {self.name}")

    @property
    def inode(self) -> int:
        """The namespace's inode number: what a process inside sees as ``/proc/self/ns/net``."""
        return (NETNS_RUN / self.name).stat().st_ino

    def pids(self) -> list[int]:
        """Processes still running inside this namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def ping(
        self, address: str, count: int = 3, interval: float = 0.2, wait: float = 10.0, size: int = 56
    ) -> PingResult:
        """Ping ``address`` from this namespace until ``count`` replies came back, or until ``wait``
        seconds after the last request; returns the counts instead of failing.

        A deadline (``-w``) rather than a per-reply timeout: otherwise iputils' ping gives up on
        the last reply after two round-trip times, which on a busy machine makes a late reply
        look like a loss.
        """
        deadline = math.ceil(count * interval + wait)
        args = ["-n", "-q", "-c", str(count), "-i", str(interval), "-w", str(deadline), "-s", str(size), address]
        result = self.run("ping", *args, timeout=deadline + 30)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", result.stdout)
        if match is None:
            return PingResult(0, 0, result.stdout + result.stderr, count)
        return PingResult(int(match[1]), int(match[2]), result.stdout, count)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this namespace, closed by the lab at teardown.

        A socket belongs to the namespace of the thread that created it, and ``setns`` changes
        only the calling thread; so a throwaway thread enters the namespace and makes it.
        """
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                with open(NETNS_RUN / self.name) as ns_file:
                    if _libc.setns(ns_file.fileno(), CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                made.append(socket.socket(family, kind))
            except BaseException as exc:  # handed to the caller's thread below
                made.append(exc)

        thread = threading.Thread(target=make, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return self.lab.track_socket(made[0])


@dataclass(frozen=True)
class Link:
    """A veth pair: one end (name, address) in each of two namespaces."""

    ifname_a: str
    address_a: str
    ifname_b: str
    address_b: str


class Lab:
    """Namespaces, veth links and processes, all removed again by :meth:`close`."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.prefix = self._claim_prefix()
        self.own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespaces: list[Namespace] = []
        self.processes: list[Process] = []
        self.sockets: list[socket.socket] = []
        self._links = 0
        self._closed = False
        _open_labs.add(self)

    NAME_PREFIX = "tlb"
    """Every namespace and link of a lab starts with this, then the pid and a counter, so labs
    of concurrent runs (and of the benchmark, the gateway tests, ...) never collide."""

    @classmethod
    def _claim_prefix(cls) -> str:
        """``<NAME_PREFIX><pid>_<n>``, skipping any prefix a dead earlier process with our pid left."""
        while True:
            prefix = f"{cls.NAME_PREFIX}{os.getpid()}_{next(_counter)}"
            if not any(p.name.startswith(f"{prefix}-") for p in NETNS_RUN.glob(f"{cls.NAME_PREFIX}*")):
                return prefix

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building -----------------------------------------------------------
    def add_namespace(self, role: str) -> Namespace:
        """Create ``<prefix>-<role>`` with loopback up and its own resolv.conf."""
        name = f"{self.prefix}-{role}"
        etc = NETNS_ETC / name
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("# tunlib test lab: no DNS\nnameserver 127.0.0.1\n")
        ns = Namespace(self, name)
        self.namespaces.append(ns)  # before 'ip netns add', so close() cleans up a half-made one
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns.ip("link", "set", "lo", "up")
        return ns

    def connect(self, a: Namespace, b: Namespace) -> Link:
        """Join ``a`` and ``b`` with a veth pair on the next /30 of TEST-NET-1."""
        index = self._links
        self._links += 1
        net = list(LINK_NETWORKS.subnets(new_prefix=30))[index]
        addr_a, addr_b = (str(ip) for ip in itertools.islice(net.hosts(), 2))
        link = Link(self.ifname(f"v{index}"), addr_a, self.ifname(f"w{index}"), addr_b)
        a.ip("link", "add", link.ifname_a, "type", "veth", "peer", "name", link.ifname_b, "netns", b.name)
        for ns, end, addr in ((a, link.ifname_a, addr_a), (b, link.ifname_b, addr_b)):
            ns.ip("address", "add", f"{addr}/30", "dev", end)
            ns.ip("link", "set", end, "up")
        return link

    def ifname(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        if len(name) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is too long")
        return name

    def track(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def track_socket(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Stop processes (newest first), close sockets, delete namespaces. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _open_labs.discard(self)
        self.stop_processes()
        for sock in self.sockets:
            sock.close()  # a socket keeps its namespace alive after 'ip netns del'
        for ns in reversed(self.namespaces):
            # Anything still inside was started by this lab (the name is ours alone), e.g. a
            # command whose ``ip netns exec`` was interrupted: end it by PID.
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
            shutil.rmtree(NETNS_ETC / ns.name, ignore_errors=True)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_processes(self) -> None:
        """Stop every process the lab started, newest first (SIGTERM, then SIGKILL)."""
        for process in reversed(self.processes):
            process.stop()

    def leftovers(self) -> list[str]:
        """Namespaces or /etc/netns directories of this lab that still exist (for tests)."""
        return [
            str(path) for ns in self.namespaces for path in (NETNS_RUN / ns.name, NETNS_ETC / ns.name) if path.exists()
        ]


@atexit.register
def _close_forgotten_labs() -> None:
    for lab in list(_open_labs):
        lab.close()


# -- tunlib on top of a lab ----------------------------------------------------------


@dataclass
class Peer:
    """One tunlib client: its namespace, veth link, profile and (once started) process."""

    name: str
    ns: Namespace
    link: Link
    """``a`` is the server's end, ``b`` the client's."""
    endpoint: str
    tunnel_ip: str
    profile: Path
    tun: str
    process: Process | None = None


class TunnelLab(Lab):
    """A server namespace with a tunlib state directory, plus one namespace per client.

    Typical use::

        with TunnelLab() as lab:
            lab.start_server("--no-offload")
            alice = lab.add_client("alice")
            lab.start_client(alice)
            assert lab.server.ping(alice.tunnel_ip).ok
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, subnet: str = TUNNEL_SUBNET) -> None:
        super().__init__(workdir)
        try:
            self.server = self.add_namespace("server")
            self.state_dir = self.workdir / "state"
            self.subnet = ipaddress.IPv4Network(subnet)
            self.server_ip = str(next(self.subnet.hosts()))
            self.server_tun = self.ifname("t0")
            self.server_process: Process | None = None
            self.peers: dict[str, Peer] = {}
            # Profiles name the server's end of the first link; start_client() always passes
            # each client's own end with --endpoint.
            result = self.server_cli(
                "init",
                "--subnet",
                subnet,
                "--listen",
                f"0.0.0.0:{SERVER_PORT}",
                "--endpoint",
                f"192.0.2.1:{SERVER_PORT}",
                check=True,
            )
            self.server_public_key = result.stdout.strip()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Also remove tunlib journals a killed process left for our namespaces.

        Their undo steps only concern the namespaces, which are about to go. Done while the
        namespaces still exist, so their inode numbers cannot belong to anyone else yet.
        """
        if not self._closed:
            self.stop_processes()
            for ns in self.namespaces:
                for journal in self.journals(ns):
                    journal.unlink(missing_ok=True)
        super().close()

    @staticmethod
    def journals(ns: Namespace) -> list[Path]:
        """tunlib's host-change journals for ``ns`` (see journal.py): none after a clean exit."""
        try:
            inode = ns.inode
        except FileNotFoundError:
            return []
        return sorted(JOURNAL_DIR.glob(f"*-{inode}-*.json"))

    def server_cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``server.py ARGS --state-dir <lab state>`` to completion (in the server namespace)."""
        return self.server.run(sys.executable, "server.py", *args, "--state-dir", str(self.state_dir), check=check)

    def start_server(self, *args: str) -> Process:
        """Start ``server.py run`` and wait until it serves."""
        process = self.server.spawn(
            "server", sys.executable, "server.py", "run", "--state-dir", self.state_dir, "--tun", self.server_tun, *args
        )
        process.wait_for_log(r"serving on")
        self.server_process = process
        return process

    def register(self, name: str) -> tuple[Path, str]:
        """``server.py add-client NAME``: write the profile (0600); return it and the tunnel address."""
        profile_text = self.server_cli("add-client", name, check=True).stdout
        profile = self.workdir / f"{name}.conf"
        profile.touch(mode=0o600)
        profile.write_text(profile_text)
        tunnel_ip = re.search(r"tunnel address ([\d.]+)/", profile_text)[1]  # type: ignore[index]
        return profile, tunnel_ip

    def add_client(self, name: str) -> Peer:
        """Register ``name``, give it a namespace linked to the server, write its profile (0600)."""
        ns = self.add_namespace(name)
        link = self.connect(self.server, ns)
        profile, tunnel_ip = self.register(name)
        peer = Peer(
            name, ns, link, f"{link.address_a}:{SERVER_PORT}", tunnel_ip, profile, self.ifname(f"c{len(self.peers)}")
        )
        self.peers[name] = peer
        return peer

    def client_argv(
        self, peer: Peer, *args: str, endpoint: str | None = None, profile: Path | None = None
    ) -> list[str | Path]:
        """The ``client.py run`` command line for ``peer`` (to run it yourself, e.g. expecting failure)."""
        return [
            sys.executable,
            "client.py",
            "run",
            "--config",
            profile or peer.profile,
            "--endpoint",
            endpoint or peer.endpoint,
            "--tun",
            peer.tun,
            *args,
        ]

    def start_client(self, peer: Peer, *args: str, endpoint: str | None = None) -> Process:
        """Start ``client.py run`` for ``peer`` and wait until its tunnel is up."""
        process = peer.ns.spawn(f"client-{peer.name}", *self.client_argv(peer, *args, endpoint=endpoint))
        process.wait_for_log(r"connected to ")
        peer.ns.wait_for_address(peer.tunnel_ip)
        peer.process = process
        return process


# -- traffic -----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    sent_sha256: str
    received_sha256: str
    sent: int
    received: int
    seconds: float

    @property
    def mbit_per_s(self) -> float:
        return self.received * 8 / self.seconds / 1e6


def tcp_stream(
    sender: Namespace, receiver: Namespace, address: str, data: bytes, *, port: int = 5201, timeout: float = 120.0
) -> StreamResult:
    """Send ``data`` over one TCP connection from ``sender`` to ``address:port`` in ``receiver``.

    The receiver hashes what arrives; compare the two digests to know every byte made it.
    """
    listener = receiver.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    listener.settimeout(timeout)
    outcome: dict[str, object] = {}

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                digest, total = hashlib.sha256(), 0
                buf = memoryview(bytearray(1 << 20))
                while count := conn.recv_into(buf):
                    digest.update(buf[:count])
                    total += count
            outcome["sha256"], outcome["bytes"] = digest.hexdigest(), total
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=receive, name="stream-receiver")
    thread.start()
    start = time.monotonic()
    try:
        with sender.socket() as sock:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            thread.join(timeout)
    finally:
        listener.close()  # unblocks accept() if the connection never came
        thread.join(timeout)
    seconds = time.monotonic() - start
    if "error" in outcome:
        raise AssertionError(f"stream receiver failed: {outcome['error']}")
    return StreamResult(
        hashlib.sha256(data).hexdigest(), str(outcome.get("sha256")), len(data), int(outcome.get("bytes", 0)), seconds
    )


def send_and_read(
    ns: Namespace, address: tuple[str, int], data: bytes, half_close: bool = False, timeout: float = 30.0
) -> tuple[bytes, float]:
    """Connect from ``ns``, send ``data`` (then ``shutdown(SHUT_WR)`` if ``half_close``), and read
    until the peer closes. Returns what the peer sent and the seconds from connect to close.

    For poking a server with bytes no real client would send; fails if the peer keeps the
    connection open longer than ``timeout``.
    """
    with ns.socket() as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        start = time.monotonic()
        if data:
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer: closed all the same
        except TimeoutError:
            raise AssertionError(f"{address} kept the connection open for {timeout} s") from None
        return bytes(reply), time.monotonic() - start


CAPTURE_BUFFER_KIB = 65536
"""tcpdump's kernel buffer: large, so a busy 2-core machine does not drop packets from a capture
that a test reads as the whole truth (tcpdump's default of 2 MB lost ~10 % of a 20 MB download)."""


class Capture:
    """``tcpdump`` writing every packet on one interface of a namespace to a pcap file."""

    def __init__(self, ns: Namespace, interface: str, name: str) -> None:
        self.path = ns.lab.workdir / f"{name}.pcap"
        self.process = ns.spawn(
            f"tcpdump-{name}",
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            str(CAPTURE_BUFFER_KIB),
            "-Z",
            "root",
            "-w",
            str(self.path),
        )
        self.process.wait_for_log(r"listening on")

    def stop(self) -> bytes:
        """Stop the capture; return the pcap file's bytes."""
        self.process.stop()
        return self.path.read_bytes()


# -- checks ------------------------------------------------------------------------


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Check the product's user-error contract: exit 2, exactly one line ``error: ...`` on
    stderr, no traceback; and that the line mentions each of ``fragments``. Returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}; stderr:\n{result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
