"""Process plumbing shared by ``client.py`` and ``server.py``: logging, privilege, signals, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator

from errors import UserError
from journal import cleanup
from messages import MIN_TIMER
from rekey import KEEPALIVE, REKEY_AFTER_TIME

CAP_NET_ADMIN = 12
"""Bit number in the capability sets (``<linux/capability.h>``)."""
EXIT_USER_ERROR = 2


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def require_net_admin() -> None:
    """Fail early, with one clear line, when we may not create interfaces."""
    if os.geteuid() == 0:
        return
    try:
        with open("/proc/self/status") as f:
            cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        cap_eff = 0
    if not cap_eff >> CAP_NET_ADMIN & 1:
        raise UserError("this command needs root (or CAP_NET_ADMIN): try sudo")


class StopRequested(Exception):
    """Raised inside :meth:`StopSignal.interruptible` when SIGINT or SIGTERM arrives."""


class StopSignal:
    """A stop flag that signal handlers and threads can both raise.

    SIGINT and SIGTERM raise it. It is a pipe, not a
    ``threading.Event``: a signal handler runs in the main thread between two bytecodes, possibly
    while that thread holds the Event's internal lock inside ``wait()``, and setting the Event
    there would deadlock. Writing a byte to a pipe is safe anywhere.
    """

    def __init__(self, handle_signals: bool = True) -> None:
        """``handle_signals=False`` makes a flag that only threads raise: the daemon's tunnels
        run in worker threads, where signal handlers cannot be installed (the daemon's main
        thread handles SIGTERM and raises each tunnel's flag)."""
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.signal_name = ""
        self._interrupt = False
        if handle_signals:
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    @staticmethod
    def on_usr1(callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the main thread) on SIGUSR1: the programs log their counters."""
        signal.signal(signal.SIGUSR1, lambda _sig, _frame: callback())

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        self.set()
        if self._interrupt:
            raise StopRequested(self.signal_name)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Let a stop signal abort the blocking call inside this block with :class:`StopRequested`.

        A signal handler that raises interrupts whatever system call the main thread is blocked
        in (``connect`` for up to its timeout, say), which a flag alone cannot. Only use it around
        code that the main thread runs and that cleans up after any exception.
        """
        if self.is_set():
            raise StopRequested(self.signal_name)
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def fileno(self) -> int:
        """A descriptor that polls readable while the flag is raised: threads blocked in ``poll``
        on a TUN wake when the flag goes up, so this one flag is every thread's stop signal."""
        return self._read_fd

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"x")

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until the flag is raised (True) or ``timeout`` seconds pass (False)."""
        readable, _, _ = select.select([self._read_fd], [], [], timeout)
        return bool(readable)

    def is_set(self) -> bool:
        return self.wait(0)

    def request(self, reason: str) -> None:
        """Stop as a signal would, from any thread; ``reason`` stands in for the signal's name."""
        self.signal_name = reason
        self.set()

    def close(self) -> None:
        """Release the pipe (a daemon makes one flag per tunnel; ``run`` keeps its one for life)."""
        os.close(self._read_fd)
        os.close(self._write_fd)

    def clear(self) -> None:
        """Lower the flag raised by a thread; a signal, once received, stays raised."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 64):
                pass
        if self.signal_name:
            self.set()


def add_cleanup_command(sub: argparse._SubParsersAction, role: str, what: str) -> None:
    """The ``cleanup`` subcommand of both programs: undo what a crashed ``role`` left (journal.py)."""
    p = sub.add_parser(
        "cleanup", help=f"undo {what} left by a crashed run", description=f"undo {what} left by a crashed run"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    def cleanup_command(_args: argparse.Namespace) -> int:
        require_net_admin()
        undone = cleanup(role)
        print(f"undid {undone} change(s) left by a crashed {role}" if undone else "nothing to clean")
        return 0

    p.set_defaults(func=cleanup_command)


def _seconds_up_to(maximum: float) -> Callable[[str], float]:
    """An argparse type: seconds from MIN_TIMER to ``maximum``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not MIN_TIMER <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected seconds from {MIN_TIMER:g} to {maximum:g}, got {text!r}")
        return value

    return seconds


TIMER_OPTIONS = {"rekey_after": _seconds_up_to(REKEY_AFTER_TIME), "keepalive": _seconds_up_to(KEEPALIVE)}
"""The timer options and the parser that checks each (also for values ``server.py set`` stored)."""


def add_timer_options(p: argparse.ArgumentParser, default: object = None) -> None:
    """``--rekey-after`` and ``--keepalive`` of both programs: they only lower the protocol's timers
    (for tests and demos). The server pushes its values to clients, and a client uses the lower
    of its own and the server's (rekey.Policy). Not given, they are ``default`` (None: the
    protocol's values)."""
    p.add_argument(
        "--rekey-after",
        type=TIMER_OPTIONS["rekey_after"],
        default=default,
        metavar="SECONDS",
        help=f"new session keys after this many seconds (default and maximum {REKEY_AFTER_TIME:g})",
    )
    p.add_argument(
        "--keepalive",
        type=TIMER_OPTIONS["keepalive"],
        default=default,
        metavar="SECONDS",
        help=f"send a keepalive after this much send silence (default and maximum {KEEPALIVE:g})",
    )


def run_main(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> None:
    """Parse the command line, run the chosen subcommand and exit with its status.

    A :class:`UserError` becomes one ``error: ...`` line on stderr and status 2.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except OSError as exc:
        # The environment said no (a permission, a missing file, a full disk): the user can act
        # on that, so it gets the same one line as a UserError rather than a traceback.
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
