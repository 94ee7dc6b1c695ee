"""Tell systemd how a ``Type=notify`` service is doing, without the libsystemd binding.

The protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines sent to the UNIX socket
named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace. Outside
systemd the variable is unset and this does nothing, so the programs run the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify_address(value: str) -> str:
    """The ``connect`` address for a ``$NOTIFY_SOCKET`` value (``@name`` -> abstract ``\\0name``)."""
    return "\0" + value[1:] if value.startswith("@") else value


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not under systemd or it failed."""
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(notify_address(value))
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd on %s: %s", value, exc.strerror or exc)
        return False
    return True
