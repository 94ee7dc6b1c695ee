"""Configure a tunnel interface with the ``ip`` command from iproute2, and run such commands.

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

PACKAGES = {"ip": "iproute2", "nft": "nftables", "resolvectl": "systemd-resolved"}


def run_command(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a network command (``ip``, ``nft``, ``resolvectl``), logging it with ``-v``.

    A missing command is a one-line :class:`UserError` naming the package to install.
    """
    if shutil.which(args[0]) is None:
        raise UserError(f"the '{args[0]}' command is missing: install {PACKAGES.get(args[0], args[0])}")
    log.debug("run: %s", " ".join(args))
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)


def run_ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure becomes a one-line :class:`UserError`."""
    result = run_command(["ip", *args])
    if result.returncode != 0:
        raise UserError(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")


def configure_interface(
    name: str, address: ipaddress.IPv4Interface, mtu: int, address6: ipaddress.IPv6Interface | None = None
) -> None:
    """Give the interface its addresses (which also installs the subnet routes), MTU, and bring it up.

    The IPv6 address gets ``nodad``: duplicate address detection would hold it "tentative"
    (unusable) for a second or more, and on a point-to-point tunnel whose addresses the server
    hands out there is nobody to collide with.
    """
    run_ip("address", "add", str(address), "dev", name)
    if address6 is not None:
        run_ip("-6", "address", "add", str(address6), "dev", name, "nodad")
    # No link-local address: without one the kernel sends no router solicitations or other
    # link-scope chatter into the tunnel, where the other end could only drop it.
    run_ip("link", "set", "dev", name, "addrgenmode", "none")
    run_ip("link", "set", "dev", name, "mtu", str(mtu), "up")
