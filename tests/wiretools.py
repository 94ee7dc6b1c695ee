"""Conveniences for tests that build or take apart wire bytes by hand.

The product modules offer only what the data path uses (``free_space``/``commit``,
``vnet_problem``); the slower, friendlier forms that tests want live here.
"""

from __future__ import annotations

from dataclasses import dataclass

from framing import FrameDecoder, FrameError
from packets import Buffer
from vnet import VIRTIO_NET_HDR, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_LEN


def feed(decoder: FrameDecoder, data: bytes) -> None:
    """Copy ``data`` into ``decoder`` as a socket's ``recv_into`` would, in as many steps as needed."""
    while data:
        space = decoder.free_space()
        if not space:
            raise FrameError("frame decoder buffer full")
        chunk = data[: len(space)]
        space[: len(chunk)] = chunk
        decoder.commit(len(chunk))
        data = data[len(chunk) :]


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """One struct virtio_net_hdr, decoded: for building and reading headers in tests.

    The data path never builds these: `vnet.vnet_problem` reads the fields straight from
    the buffer.
    """

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0  # bytes of IP + transport headers in front of the payload (a hint)
    gso_size: int = 0  # payload bytes per segment when the packet is cut up
    csum_start: int = 0  # offset from the IP header where checksumming starts
    csum_offset: int = 0  # where, after csum_start, to store the checksum

    def __post_init__(self) -> None:
        # Catch out-of-range values here. Otherwise they would surface later as a
        # struct.error from pack(), far from the bug.
        if not (0 <= self.flags <= 0xFF and 0 <= self.gso_type <= 0xFF):
            raise ValueError("flags and gso_type are 8-bit fields")
        for value in (self.hdr_len, self.gso_size, self.csum_start, self.csum_offset):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("hdr_len, gso_size, csum_start and csum_offset are 16-bit")

    def pack(self) -> bytes:
        """The 10 wire bytes, little-endian, ready to put in front of a packet."""
        return VIRTIO_NET_HDR.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    @classmethod
    def unpack(cls, data: Buffer) -> VirtioNetHdr:
        """Decode the first 10 bytes of `data` (extra bytes, e.g. the packet, are ignored).

        Raises ValueError if `data` is shorter than a header.
        """
        if len(data) < VIRTIO_NET_HDR_LEN:
            raise ValueError(f"virtio_net_hdr needs {VIRTIO_NET_HDR_LEN} bytes, got {len(data)}")
        return cls(*VIRTIO_NET_HDR.unpack_from(data))
