"""Process plumbing shared by ``client.py`` and ``server.py``: logging, privilege, signals, exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from errors import UserError

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


class StopSignal:
    """SIGINT and SIGTERM set an event the main thread waits on; SIGUSR1 calls ``on_usr1``.

    Handlers only set flags: the shutdown itself runs in the main thread, in order.
    """

    def __init__(self, on_usr1: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        if on_usr1 is not None:
            signal.signal(signal.SIGUSR1, lambda _sig, _frame: on_usr1())

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run ``main`` and exit: a :class:`UserError` becomes ``error: ...`` and status 2."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
