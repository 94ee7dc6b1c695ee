"""The virtio_net_hdr that starts every TUN read and write in offload mode.

With IFF_VNET_HDR set, the kernel puts a 10-byte header (struct virtio_net_hdr,
<linux/virtio_net.h>) in front of each packet it hands to us, and expects one in front
of each packet we write. The header tells the receiver two things the packet bytes
cannot:

* "Finish my checksum" (flags NEEDS_CSUM, csum_start, csum_offset). The sender left the
  TCP/UDP checksum partial, as hardware checksum offload would. The receiver computes
  the sum from csum_start to the end of the packet and stores it at csum_start +
  csum_offset.
* "I am many packets in one" (gso_type, gso_size, hdr_len). A TCP "super-packet" of up
  to 64 KB stands for a run of segments of gso_size bytes each. Passing one of them
  instead of ~48 MTU-sized packets is what makes a Python tunnel fast; see
  ../shared/notes/tun-offload.md (beside the repository).

The tunnel copies the header from one end's TUN read to the other end's TUN write
unchanged. The writing end's kernel rejects a bad header with EINVAL
(virtio_net_hdr_to_skb and tun_get_user in the Linux source). The header came from the
peer, which may be hostile, so `vnet_problem` checks it before the write. It applies
every rule the kernel applies, plus a few stricter ones for headers that Linux itself
never produces and that would make the kernel do odd work. The data path can then drop
a bad packet with a counted reason instead of finding out from an errno.

Nothing here does I/O. All fields are little-endian: TUN devices use the modern
virtio byte order unless someone called TUNSETVNETBE, and tundev.py does not.
"""

from __future__ import annotations

import struct

from packets import IPV4_MIN_HEADER_LEN, Buffer

VIRTIO_NET_HDR_LEN = 10

# flags (uapi/linux/virtio_net.h)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1  # csum_start/csum_offset are valid; finish the checksum
VIRTIO_NET_HDR_F_DATA_VALID = 2  # checksum already verified (reads only; ignored on write)

# gso_type (uapi/linux/virtio_net.h)
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3  # UFO: legacy, IP-fragmenting UDP offload
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5  # USO: UDP segmentation (one datagram per gso_size)
VIRTIO_NET_HDR_GSO_ECN = 0x80  # TCP super-packet carries CWR; segments need ECN care

# Kernel internals that bound what a write may ask for.
GSO_BY_FRAGS = 0xFFFF  # include/linux/netdevice.h: special gso_size, never valid from users
UDP_MAX_SEGMENTS = 128  # include/linux/udp.h; 128 measured on Linux 6.18, older kernels had 64

IPPROTO_TCP = 6
IPPROTO_UDP = 17
# IPv6 extension headers that sit between the fixed header and TCP/UDP and share the
# "next header, length in 8-octet units minus one" layout (RFC 8200 section 4).
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_DSTOPTS = 60

_IPV6_HEADER_LEN = 40
_TCP_MIN_HEADER_LEN = 20
_UDP_HEADER_LEN = 8
# Where the checksum sits inside each transport header; the kernel insists on these.
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6

_KNOWN_FLAGS = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID
_TCP_GSO = (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6)
_MAX_IPV6_EXTENSION_HEADERS = 8

VIRTIO_NET_HDR = struct.Struct("<BBHHHH")
"""flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (the 10-byte struct)."""


PLAIN_VNET_HDR: bytes = bytes(VIRTIO_NET_HDR_LEN)
"""Header for a packet built in user space with complete checksums: no GSO, nothing to do."""


def _transport(frame: Buffer, version: int, packet_len: int) -> tuple[int, int] | str:
    """Find the transport header: (protocol number, offset from the IP header) or a reason.

    For IPv4 this is the protocol field and IHL * 4. For IPv6, walk past hop-by-hop,
    routing and destination-options headers, at most 8 of them. A fragment header, AH
    or an unknown header stops the walk. The protocol returned is then that header's
    number, which is not TCP or UDP, so the GSO checks below refuse the packet.
    """
    ip = VIRTIO_NET_HDR_LEN
    if version == 4:
        header_len = (frame[ip] & 0x0F) * 4
        if header_len < IPV4_MIN_HEADER_LEN or header_len > packet_len:
            return "bad IPv4 header length"
        return frame[ip + 9], header_len
    if packet_len < _IPV6_HEADER_LEN:
        return "packet shorter than an IPv6 header"
    proto, offset = frame[ip + 6], _IPV6_HEADER_LEN
    for _ in range(_MAX_IPV6_EXTENSION_HEADERS):
        if proto not in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
            break
        if offset + 2 > packet_len:
            return "truncated IPv6 extension header"
        proto, offset = frame[ip + offset], offset + (frame[ip + offset + 1] + 1) * 8
    if offset > packet_len:
        return "truncated IPv6 extension header"
    return proto, offset


def vnet_problem(frame: Buffer) -> str | None:
    """Say why `frame` (virtio_net_hdr + IPv4/IPv6 packet) must not be written to a TUN.

    Returns None if the frame is acceptable. Otherwise returns a short reason, for logs
    and counters. Never raises, whatever the bytes.

    Rules the Linux kernel enforces with EINVAL on write (tun_vnet_hdr_get,
    virtio_net_hdr_to_skb, skb_partial_csum_set, tun_get_user):

    * the packet's first nibble must be 4 or 6 (a TUN without packet info guesses
      the protocol from it);
    * hdr_len must not exceed the packet. With NEEDS_CSUM the kernel first raises
      hdr_len to csum_start + csum_offset + 2, so the 2-byte checksum field must lie
      inside the packet too;
    * gso_type must be NONE, TCPV4, UDP, TCPV6 or UDP_L4, optionally with ECN. The ECN
      bit alone, or on UDP_L4, is rejected;
    * a GSO type needs gso_size != 0 and != GSO_BY_FRAGS (0xFFFF);
    * with NEEDS_CSUM, csum_start must point past the minimum IP header (40 bytes for
      TCPV6), and csum_offset must be 16 for TCP GSO and 6 for UDP_L4;
    * UDP_L4 needs NEEDS_CSUM and at most UDP_MAX_SEGMENTS segments.

    Rules added here because Linux never produces such headers and a hostile peer
    could use them to make our kernel do odd work:

    * only the NEEDS_CSUM and DATA_VALID flag bits, never both (the kernel ignores
      unknown bits today, but newer ones such as UDP_TUNNEL_CSUM change meaning), and
      no gso_type bits beyond those listed (this refuses AccECN, 0x10; the UDP tunnel
      bits 0x20/0x40 are EINVAL anyway with a 10-byte header);
    * a GSO frame must have NEEDS_CSUM, ECN only on TCP, TCPV4 only on IPv4 and
      TCPV6 only on IPv6, the IP protocol matching (TCP for TCP GSO, UDP for UDP GSO),
      csum_start exactly at that transport header, and the whole transport header
      inside the packet;
    * a partial checksum must not start inside the IP header. When it starts at the
      packet's own TCP or UDP header, csum_offset must be 16 or 6. It may also start
      deeper, as with tunnelled traffic whose outer checksum is already done.

    A frame with no flags and no GSO (ICMP, packets built in user space, and every
    packet when offloads are off) needs only the length and version checks and
    returns after a few comparisons.
    """
    frame_len = len(frame)
    if frame_len < VIRTIO_NET_HDR_LEN:
        return "frame shorter than virtio_net_hdr"
    packet_len = frame_len - VIRTIO_NET_HDR_LEN
    if packet_len == 0:
        return "empty packet"
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VIRTIO_NET_HDR.unpack_from(frame)
    version = frame[VIRTIO_NET_HDR_LEN] >> 4
    if version not in (4, 6):
        return "not an IPv4 or IPv6 packet"
    if not flags and not gso_type:
        return "hdr_len exceeds packet" if hdr_len > packet_len else None

    if flags & ~_KNOWN_FLAGS:
        return "unknown flag bits"
    needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM
    if needs_csum and flags & VIRTIO_NET_HDR_F_DATA_VALID:
        return "NEEDS_CSUM and DATA_VALID together"
    if needs_csum and csum_start + csum_offset + 2 > packet_len:
        return "checksum field outside packet"
    if hdr_len > packet_len:
        return "hdr_len exceeds packet"
    if version == 4 and packet_len < IPV4_MIN_HEADER_LEN:
        return "packet shorter than an IPv4 header"

    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso not in (
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    ):
        return "unknown gso_type bits"
    if gso_type & VIRTIO_NET_HDR_GSO_ECN and gso not in _TCP_GSO:
        return "ECN bit without TCP GSO"

    if gso == VIRTIO_NET_HDR_GSO_NONE and not needs_csum:
        return None  # DATA_VALID only: an informational hint, nothing to check

    found = _transport(frame, version, packet_len)
    if isinstance(found, str):
        return found
    proto, l4_offset = found

    if needs_csum:
        if csum_start < l4_offset:
            return "csum_start inside the IP header"
        if csum_start == l4_offset:
            if proto == IPPROTO_TCP and csum_offset != TCP_CSUM_OFFSET:
                return "csum_offset is not 16 for TCP"
            if proto == IPPROTO_UDP and csum_offset != UDP_CSUM_OFFSET:
                return "csum_offset is not 6 for UDP"

    if gso == VIRTIO_NET_HDR_GSO_NONE:
        return None

    if gso_size == 0:
        return "gso_size 0 with a GSO type"
    if gso_size == GSO_BY_FRAGS:
        return "gso_size is GSO_BY_FRAGS"
    if not needs_csum:
        return "GSO without NEEDS_CSUM"
    if gso == VIRTIO_NET_HDR_GSO_TCPV4 and version != 4:
        return "TCPV4 GSO on a non-IPv4 packet"
    if gso == VIRTIO_NET_HDR_GSO_TCPV6 and version != 6:
        return "TCPV6 GSO on a non-IPv6 packet"
    if csum_start != l4_offset:
        return "csum_start is not the transport header"
    if gso in _TCP_GSO:
        if proto != IPPROTO_TCP:
            return "TCP GSO on a non-TCP packet"
        # csum_offset == 16 was enforced above, so byte 12 (data offset: the header
        # length in 32-bit words, at least 5) is inside the packet.
        tcp_header_len = 4 * (frame[VIRTIO_NET_HDR_LEN + l4_offset + 12] >> 4)
        if tcp_header_len < _TCP_MIN_HEADER_LEN or l4_offset + tcp_header_len > packet_len:
            return "bad TCP header length"
        return None
    if proto != IPPROTO_UDP:
        return "UDP GSO on a non-UDP packet"
    # csum_offset == 6 was enforced above, so the 8-byte UDP header is inside the packet.
    payload_len = packet_len - l4_offset - _UDP_HEADER_LEN
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4 and payload_len > gso_size * UDP_MAX_SEGMENTS:
        return "more than UDP_MAX_SEGMENTS segments"
    return None
