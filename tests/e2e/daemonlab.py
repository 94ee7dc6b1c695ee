"""A lab for the client daemon: two servers, a home namespace running the daemon, real users.

::

    +--- P-srva ---------------+          +--- P-home -----------------------+
    | server.py A  10.97.0.1   |          | client.py daemon (root)          |
    | veth 192.0.2.1/30 -------+----------+ veth 192.0.2.2/30                |
    +--------------------------+          |                                  |
    +--- P-srvb ---------------+          |                                  |
    | server.py B  10.96.0.1   |          |                                  |
    | relay :443 -> :55555     |          |                                  |
    |   (holds each connection |          |                                  |
    |    RELAY_DELAY s first)  |          |                                  |
    | veth 192.0.2.5/30 -------+----------+ veth 192.0.2.6/30                |
    +--------------------------+          +----------------------------------+

Profile ``alpha`` names server A (first a closed port, then the real one: two ``Endpoint``
lines); profile ``beta`` names server B only through the relay, whose handshakes are slower by
RELAY_DELAY. There is no netem on this kernel, so the relay is a few lines of Python: a thread
of the test process with sockets made inside P-srvb.

The user commands run as two users this lab creates (and deletes): one in a group that may use
the daemon, one outside it, through ``ip netns exec P-home runuser -u USER -- ...``. The
daemon's socket and the users' copies of the profiles live in a 0755 directory of their own,
since pytest's temporary directories are root-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import netlab
from netlab import Lab, Namespace, Process

RELAY_DELAY = 0.8
"""Seconds the relay holds each new connection before connecting upstream."""
RELAY_PORT = 443
SERVER_PORT = netlab.SERVER_PORT
CLOSED_PORT = 4444
"""Nothing listens here on server A: the first of alpha's endpoints is refused at once."""


class Relay:
    """A TCP relay in ``ns``: accept on ``port``, wait ``delay``, connect to ``upstream``, copy both ways."""

    def __init__(self, ns: Namespace, port: int, upstream: tuple[str, int], delay: float) -> None:
        self.ns, self.upstream, self.delay = ns, upstream, delay
        self.stopping = threading.Event()
        self.listener = ns.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("0.0.0.0", port))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.ns.lab.track_socket(conn)
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        if self.stopping.wait(self.delay):
            conn.close()
            return
        try:
            upstream = self.ns.socket()
            upstream.connect(self.upstream)
        except OSError:  # the server is down, or the lab already gone
            conn.close()
            return
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._copy, args=(a, b), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()


class Server:
    """One tunlib server of the lab: its namespace, state directory, TUN and process."""

    def __init__(self, lab: DaemonLab, key: str, subnet: str) -> None:
        self.lab = lab
        self.ns = lab.add_namespace(f"srv{key}")
        self.link = lab.connect(self.ns, lab.home)
        self.outer = self.link.address_a
        self.state_dir = lab.workdir / f"state-{key}"
        self.tun = lab.ifname(f"s{key}")
        self.tunnel_ip = subnet.rsplit(".", 1)[0] + ".1"
        self.process: Process | None = None
        self.cli("init", "--subnet", f"{subnet}/24", "--listen", f"0.0.0.0:{SERVER_PORT}", check=True)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.ns.run(sys.executable, "server.py", *args, "--state-dir", str(self.state_dir), check=check)

    def register(self, name: str, *endpoints: str) -> str:
        """``add-client NAME``; return the profile text with ``endpoints`` as its Endpoint lines."""
        text = self.cli("add-client", name, check=True).stdout
        lines = [line for line in text.splitlines() if not line.startswith("Endpoint")]
        return "\n".join(lines + [f"Endpoint = {e}" for e in endpoints]) + "\n"

    def start(self, *args: str, notify_socket: str | None = None) -> Process:
        env = ["env", f"NOTIFY_SOCKET={notify_socket}"] if notify_socket else []
        self.process = self.ns.spawn(
            f"server-{self.tun}",
            *env,
            sys.executable,
            "server.py",
            "run",
            "--state-dir",
            self.state_dir,
            "--tun",
            self.tun,
            *args,
        )
        self.process.wait_for_log(r"serving on")
        return self.process

    def status(self) -> dict:
        result = self.cli("status", "--json", check=True)
        return json.loads(result.stdout)


class DaemonLab(Lab):
    """Servers A and B, the home namespace, the group and users, and the daemon (see module doc)."""

    NAME_PREFIX = "tld"

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        super().__init__(workdir)
        self.users: list[str] = []
        self.group: str | None = None
        self.shared = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.daemon: Process | None = None
        try:
            self.shared.chmod(0o755)
            self.socket = str(self.shared / "client.sock")
            self.home = self.add_namespace("home")
            self.a = Server(self, "a", "10.97.0.0")
            self.b = Server(self, "b", "10.96.0.0")
            self.relay = Relay(self.b.ns, RELAY_PORT, ("127.0.0.1", SERVER_PORT), RELAY_DELAY)
            self.tun = self.ifname("c0")
            self.group = f"{self.prefix}g"[:32]
            subprocess.run(["groupadd", self.group], check=True, capture_output=True)
            self.member = self._add_user("m", self.group)
            self.outsider = self._add_user("o", None)
        except BaseException:
            self.close()
            raise

    def _add_user(self, suffix: str, group: str | None) -> str:
        name = f"{self.prefix}{suffix}"[:32]
        args = ["useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin"]
        if group:
            args += ["--groups", group]
        self.users.append(name)
        subprocess.run([*args, name], check=True, capture_output=True)
        return name

    def give(self, user: str, name: str, text: str) -> Path:
        """Write ``text`` to a file ``user`` owns and alone can read (their profile copy)."""
        path = self.shared / f"{name}.conf"
        path.touch(mode=0o600)
        path.write_text(text)
        shutil.chown(path, user)
        return path

    # -- the daemon ---------------------------------------------------------------
    def start_daemon(self, notify_socket: str | None = None) -> Process:
        env = ["env", f"NOTIFY_SOCKET={notify_socket}"] if notify_socket else []
        self.daemon = self.home.spawn(
            "daemon",
            *env,
            sys.executable,
            "client.py",
            "daemon",
            "--socket",
            self.socket,
            "--group",
            str(self.group),
            "--state-dir",
            str(self.workdir / "profiles"),
            "--tun",
            self.tun,
        )
        self.daemon.wait_for_log(r"daemon serving")
        return self.daemon

    def as_user(self, user: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``client.py ARGS --socket <lab's>`` as ``user``, inside the home namespace."""
        return self.home.run(
            "runuser", "-u", user, "--", sys.executable, "client.py", *args, "--socket", self.socket, timeout=timeout
        )

    def status(self, user: str | None = None) -> dict:
        result = self.as_user(user or self.member, "status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # -- teardown -------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything, drop the journals a killed daemon left, delete the users and group."""
        if self._closed:
            return
        if getattr(self, "relay", None) is not None:
            self.relay.stop()
        self.stop_processes()
        for ns in self.namespaces:
            for journal in netlab.TunnelLab.journals(ns):
                journal.unlink(missing_ok=True)
        for user in self.users:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        if self.group:
            subprocess.run(["groupdel", self.group], capture_output=True, check=False)
        shutil.rmtree(self.shared, ignore_errors=True)
        super().close()

    def leftovers(self) -> list[str]:
        left = super().leftovers()
        for user in self.users:
            if subprocess.run(["id", user], capture_output=True, check=False).returncode == 0:
                left.append(f"user {user}")
        if self.shared.exists():
            left.append(str(self.shared))
        return left
