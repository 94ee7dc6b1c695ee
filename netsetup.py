"""Configure a tunnel interface with the ``ip`` command from iproute2.

We call ``ip`` rather than speaking netlink ourselves so that every step is a command a reader
can type by hand; ``-v`` logs each one. The interface disappears with the TUN descriptor, and
with it every address and route on it, so there is nothing to undo at exit.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess

from errors import UserError

log = logging.getLogger(__name__)


def run_ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure becomes a one-line :class:`UserError`."""
    ip = shutil.which("ip")
    if ip is None:
        raise UserError("the 'ip' command is missing: install iproute2")
    log.debug("ip %s", " ".join(args))
    result = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")


def configure_interface(name: str, address: ipaddress.IPv4Interface, mtu: int) -> None:
    """Give the interface its address (which also installs the subnet route), MTU, and bring it up."""
    run_ip("address", "add", str(address), "dev", name)
    run_ip("link", "set", "dev", name, "mtu", str(mtu), "up")


def add_route(network: ipaddress.IPv4Network, device: str) -> None:
    run_ip("route", "replace", str(network), "dev", device)
