"""Open a Linux TUN device: the kernel's door between its IP stack and our process.

Every IP packet the kernel routes to the TUN interface becomes one ``read()`` on the file
descriptor, and every ``write()`` becomes a packet the kernel receives from that interface.

Two modes:

* **plain**: one read = one IP packet of at most the MTU.
* **offload** (``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``): each read starts with a 10-byte
  virtio-net header and may carry a TCP "super-packet" of up to 64 KB, which the kernel would
  otherwise have cut into MTU-sized pieces. The peer writes it, header and all, into its own
  TUN, and the receiving kernel handles it as one packet. Python then pays its per-packet cost
  once per 64 KB instead of once per 1.4 KB. (Constants from ``<linux/if_tun.h>``; measured
  behaviour in ``../shared/notes/tun-offload.md``, beside the repository.)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass

from errors import UserError
from vnet import VIRTIO_NET_HDR_LEN

log = logging.getLogger(__name__)

TUN_CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")

OFFLOAD_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
"""Checksum and TCP segmentation offload. UDP (USO) is left off: UDP GSO packets would need
the peer kernel to support USO too, and TCP is where the bulk of VPN traffic is."""


@dataclass
class TunDevice:
    """An open TUN interface. ``vnet_hdr_len`` is 0 in plain mode, 10 in offload mode."""

    fd: int
    name: str
    vnet_hdr_len: int

    @property
    def offload(self) -> bool:
        return self.vnet_hdr_len > 0

    def close(self) -> None:
        """Close the descriptor; the kernel then deletes the (non-persistent) interface."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _set_iff(fd: int, name: str, flags: int) -> str:
    ifr = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags))
    return IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()


def open_tun(name: str, offload: bool) -> TunDevice:
    """Create TUN interface ``name``; with ``offload``, try offload mode and fall back to plain.

    Raises :class:`UserError` for what the user can fix: no ``/dev/net/tun``, no privilege,
    a bad or busy name.
    """
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
        raise UserError(f"bad interface name {name!r}: 1-15 characters, no '/' or spaces")
    try:
        fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{TUN_CLONE_DEVICE} does not exist: load the tun module (modprobe tun)") from None
    except PermissionError:
        raise UserError(f"cannot open {TUN_CLONE_DEVICE}: run as root (CAP_NET_ADMIN is needed)") from None
    try:
        if offload:
            try:
                actual = _set_iff(fd, name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_LEN))
                fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOAD_FLAGS)
                return TunDevice(fd, actual, VIRTIO_NET_HDR_LEN)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
                    raise
                log.warning("kernel refused TUN offloads (%s); falling back to plain mode", exc.strerror)
                os.close(fd)
                fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        actual = _set_iff(fd, name, IFF_TUN | IFF_NO_PI)
        return TunDevice(fd, actual, 0)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EPERM:
            raise UserError("creating a TUN device needs root (CAP_NET_ADMIN)") from None
        if exc.errno == errno.EBUSY:
            raise UserError(f"interface {name} is busy: is another tunnel running?") from None
        if exc.errno == errno.EINVAL:
            raise UserError(f"cannot create TUN {name}: a non-TUN interface may have that name") from None
        raise UserError(f"cannot create TUN {name}: {exc.strerror}") from None
