"""A UNIX control socket speaking the JSON-lines protocol of :mod:`control`, and its client side.

The client daemon (``client.py daemon``) and the running server (``server.py run``) each serve
one. The kernel tells us who is calling (``SO_PEERCRED``: pid, uid, gid, which the caller cannot
forge); ``authorize`` decides from that alone, before any request is read. The socket file's
mode and group are the first gate, this check the second, as systemd and Docker do.

Each connection gets a thread, at most MAX_CONNECTIONS at once; a caller that sends nothing for
IDLE_TIMEOUT seconds, sends more than :data:`control.MAX_LINE` bytes without a newline, or
hangs up halfway through a line, is disconnected and costs nothing else.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control import ControlError, LineBuffer, Request, error_reply, ok_reply, parse_reply, parse_request
from errors import UserError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0
"""Seconds a caller may stay silent before the daemon hangs up (a half-written request)."""
ACCEPT_POLL = 0.5
SUN_PATH_MAX = 107
"""``sizeof(sockaddr_un.sun_path)`` minus the terminating NUL."""
REPLY_TIMEOUT = 120.0
"""How long the command-line client waits for the next line (``connect --best`` may try many
servers, each up to 15 s)."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a control connection, as the kernel says."""

    pid: int
    uid: int
    gid: int

    def groups(self) -> list[int]:
        """The caller's primary group and its user's supplementary groups (the group database)."""
        try:
            entry = pwd.getpwuid(self.uid)
        except KeyError:
            return [self.gid]
        return sorted({self.gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)})


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid, uid, gid)


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Reply:
    """Sends the lines of one request's answer; a caller that vanished is noted, not fatal."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gone = False

    def send(self, line: bytes) -> None:
        if self.gone:
            return
        try:
            self.sock.sendall(line)
        except OSError:
            self.gone = True


Handler = Callable[[Request, Peer, Reply], Any]
"""Answers one valid request: returns the ``result`` (sent as the ok reply), may send progress
lines through ``Reply`` first, and raises ControlError or UserError to refuse."""


class ControlSocket:
    """Serve ``handler`` on a UNIX socket at ``path`` until :meth:`close`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        authorize: Callable[[Peer], str | None],
        mode: int = 0o600,
        gid: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.authorize = authorize
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.closing = threading.Event()
        self.listener = self._bind(mode, gid)
        self.thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self.thread.start()

    def _bind(self, mode: int, gid: int | None) -> socket.socket:
        if len(os.fsencode(self.path)) > SUN_PATH_MAX:
            raise UserError(f"control socket path too long (max {SUN_PATH_MAX} bytes): {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise UserError(f"{self.path} exists and is not a socket")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.path))
                except OSError:
                    self.path.unlink()  # left by a process that died: nobody listens
                else:
                    raise UserError(f"another process already serves {self.path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never world-connectable, not even for a moment
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(self.path, 0, gid)
        os.chmod(self.path, mode)
        sock.listen(MAX_CONNECTIONS)
        sock.settimeout(ACCEPT_POLL)
        return sock

    def _accept_loop(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.closing.is_set():
                    return
                log.warning("control socket accept failed: %s", exc.strerror or exc)
                self.closing.wait(ACCEPT_POLL)
                continue
            if not self.slots.acquire(blocking=False):
                Reply(conn).send(error_reply("too many control connections; try again"))
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IDLE_TIMEOUT)
                peer = peer_of(conn)
                reply = Reply(conn)
                refusal = self.authorize(peer)
                if refusal is not None:
                    log.warning("control: refused uid %d (pid %d): %s", peer.uid, peer.pid, refusal)
                    reply.send(error_reply(refusal))
                    return
                self._serve_requests(conn, peer, reply)
        finally:
            self.slots.release()

    def _serve_requests(self, conn: socket.socket, peer: Peer, reply: Reply) -> None:
        lines = LineBuffer()
        while not reply.gone:
            try:
                data = conn.recv(65536)
            except OSError:
                return  # idle too long, or reset
            if not data:
                return  # a half-written request (lines.partial) is simply dropped
            try:
                for line in lines.feed(data):
                    self._answer(line, peer, reply)
            except ControlError as exc:  # an oversized line: answer, then hang up
                reply.send(error_reply(str(exc)))
                return

    def _answer(self, line: bytes, peer: Peer, reply: Reply) -> None:
        try:
            request = parse_request(line)
            result = self.handler(request, peer, reply)
        except (ControlError, UserError) as exc:
            reply.send(error_reply(str(exc)))
            return
        except Exception:  # a bug: log it with its traceback, keep serving everyone else
            log.exception("control: request %r failed", line[:200])
            reply.send(error_reply("internal error (see the log)"))
            return
        reply.send(ok_reply(result))

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self.thread.join(ACCEPT_POLL * 2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- the calling side ---------------------------------------------------------------------


def call(
    path: str | os.PathLike[str],
    request: bytes,
    on_progress: Callable[[str], None] | None = None,
    what: str = "the daemon ('client.py daemon', tunlib-client)",
) -> Any:
    """Send one request line and return the ``result`` of its reply.

    Progress lines go to ``on_progress``; an error reply, or ``what`` serves the socket and
    cannot be reached, is a :class:`UserError` with one clear line.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(f"nothing listens on {path}: is {what} running?") from None
        except PermissionError:
            raise UserError(f"permission denied on {path}: you must be root or in the group that may use it") from None
        sock.settimeout(REPLY_TIMEOUT)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # if refused before it read this, its reply still waits for us
        lines = LineBuffer()
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise UserError(f"no answer on {path} within {REPLY_TIMEOUT:.0f} s") from None
            if not data:
                raise UserError(f"{path} closed the connection without an answer")
            for line in lines.feed(data):
                try:
                    reply = parse_reply(line)
                except ControlError as exc:
                    raise UserError(str(exc)) from None
                if "progress" in reply:
                    if on_progress is not None:
                        on_progress(reply["progress"])
                    continue
                if not reply["ok"]:
                    raise UserError(reply["error"])
                return reply["result"]
    except ControlError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"talking to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
