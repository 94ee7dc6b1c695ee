"""Just enough IPv4 for a VPN data path: addresses, the internet checksum, and ping replies.

A tunnel mostly moves packets without looking inside them. Routing needs only the IPv4
source and destination addresses, at fixed offsets (IPV4_SRC, IPV4_DST), which the packet
core (core.py) slices out inline because it does so for every packet. This module covers
the two other reasons to look inside:

* Checksums. IPv4 and ICMP protect their headers with the ones'-complement "internet
  checksum" of RFC 1071 (`internet_checksum`).
* Answering ping. A tunnel endpoint that answers pings to its own tunnel address
  (`echo_reply_for`) lets users test the tunnel with plain `ping`. The packets come from
  the other end of the tunnel, which may be hostile, so the parser checks every field
  it uses and returns None for anything it does not fully understand. It never raises.

Nothing here does I/O. Every function takes bytes-like objects (bytes, bytearray or
memoryview), so the caller can pass a slice of its receive buffer without copying it.
"""

from __future__ import annotations

import struct

# IP protocol number for ICMP (IANA "Assigned Internet Protocol Numbers", RFC 792).
IPPROTO_ICMP = 1
# ICMP message types from RFC 792.
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

Buffer = bytes | bytearray | memoryview
"""Anything the data path may hand us: its receive buffers are memoryviews."""

# RFC 791 fixed header: version/IHL, TOS, total length, identification,
# flags/fragment offset, TTL, protocol, header checksum, source, destination.
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV4_MIN_HEADER_LEN = 20
IPV4_SRC = 12
"""Offset of the 4-byte source address in the IPv4 header."""
IPV4_DST = 16
"""Offset of the 4-byte destination address in the IPv4 header."""
_ICMP_ECHO_HEADER_LEN = 8  # type, code, checksum, identifier, sequence number

# Flags and fragment offset share one 16-bit field (RFC 791 section 3.1).
IP_RF = 0x8000  # reserved bit, must be zero
IP_DF = 0x4000  # don't fragment
IP_MF = 0x2000  # more fragments
IP_OFFMASK = 0x1FFF  # fragment offset, in units of 8 bytes

# IP option types (RFC 791 section 3.1). The copied bit (0x80) is part of the type.
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_LSRR = 0x83  # loose source and record route
IPOPT_SSRR = 0x89  # strict source and record route

# The TTL our replies start with. 64 is what Linux uses (net.ipv4.ip_default_ttl) and
# what RFC 1700 recommended.
REPLY_TTL = 64

# The two ECN bits at the bottom of the TOS byte (RFC 3168). ICMP is not ECN-capable,
# so a reply must not claim it is, even if the request did.
_ECN_MASK = 0x03


def internet_checksum(data: Buffer) -> int:
    """Return the RFC 1071 internet checksum of `data`, as an int from 0 to 0xFFFF.

    The checksum is the ones'-complement of the ones'-complement sum of the data taken
    as big-endian 16-bit words. An odd-length input is padded with one zero byte at the
    end. To check a header that already contains its checksum, checksum the whole header:
    the result is 0 if the header is intact.

    A byte-by-byte Python loop would be slow for a 64 KB packet, so this uses a
    shortcut. Read the whole input as one big integer N = sum(w_i * 65536**k_i).
    Because 65536 = 1 (mod 65535), N mod 65535 equals the sum of the words mod 65535,
    and the "end-around carry" of ones'-complement addition is exactly arithmetic
    mod 65535. The one difference: ones'-complement arithmetic has two zeros, 0x0000
    and 0xFFFF. A sum of words that are not all zero never folds to 0x0000; it folds
    to 0xFFFF (the "negative zero"), so that case is mapped back by hand.
    int.from_bytes and the modulo both run in C, in time linear in the input size.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # the zero pad byte
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def _options_allow_reply(options: Buffer) -> bool:
    """Say whether an echo request carrying these IPv4 options can be answered.

    RFC 1122 section 3.2.2.6: Record Route and Timestamp options in a request SHOULD be
    updated and echoed in the reply. Dropping them is allowed, so replies never carry
    options. A Source Route option, however, MUST be reversed and used for the reply.
    That does not make sense for a point-to-point tunnel, so such requests are not
    answered. A badly formed option list also means no reply.
    """
    i = 0
    end = len(options)
    while i < end:
        kind = options[i]
        if kind == IPOPT_END:
            return True
        if kind == IPOPT_NOOP:
            i += 1
            continue
        if i + 1 >= end:
            return False  # the option's length byte is missing
        length = options[i + 1]
        if length < 2 or i + length > end:
            return False
        if kind in (IPOPT_LSRR, IPOPT_SSRR):
            return False
        i += length
    return True


def _is_unicast_source(address: bytes) -> bool:
    """Say whether `address` can receive a reply: not 0/8, 127/8, multicast or 240/4.

    Sending a reply to an unspecified, loopback, multicast or broadcast source would
    either go nowhere or reach many hosts. A peer sending such a source is broken or
    hostile.
    """
    first = address[0]
    return first not in (0, 127) and first < 224


def echo_reply_for(packet: Buffer, own_address: bytes) -> bytes | None:
    """Build the ICMP echo reply to `packet` if it is a ping to `own_address`.

    `packet` is a plain IPv4 packet (no virtio_net_hdr, no framing). The reply is
    returned only when all of these hold; otherwise the result is None, and no input
    makes this function raise:

    * a well-formed IPv4 header: version 4, IHL >= 5, valid header checksum,
      total length equal to len(packet), reserved flag bit clear;
    * not a fragment (MF clear, offset 0). Reassembly is the kernel's job, and a
      fragment's ICMP checksum cannot be checked alone;
    * protocol ICMP, destination `own_address`, source a unicast address;
    * options, if any, well-formed and with no source route;
    * an ICMP echo request (type 8, code 0) of at least 8 bytes with a valid checksum.

    The reply swaps the addresses, uses TTL 64 and no IP options, keeps the DSCP but
    clears ECN, sets DF with identification 0 (an atomic datagram, RFC 6864), and
    carries type 0 with the request's identifier, sequence number and payload. Both
    checksums are recomputed from scratch rather than patched. This is the rare path,
    so clarity wins over speed here.
    """
    if len(packet) < IPV4_MIN_HEADER_LEN:
        return None
    ver_ihl, tos, total_len, _, frag, _, proto, _, src, dst = _IPV4_HEADER.unpack_from(packet)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < IPV4_MIN_HEADER_LEN:
        return None
    if total_len != len(packet) or header_len + _ICMP_ECHO_HEADER_LEN > total_len:
        return None
    if frag & (IP_RF | IP_MF | IP_OFFMASK):
        return None
    if proto != IPPROTO_ICMP or dst != own_address or not _is_unicast_source(src):
        return None
    if internet_checksum(packet[:header_len]) != 0:
        return None
    options = packet[IPV4_MIN_HEADER_LEN:header_len]
    if options and not _options_allow_reply(options):
        return None
    icmp = packet[header_len:]
    if icmp[0] != ICMP_ECHO_REQUEST or icmp[1] != 0 or internet_checksum(icmp) != 0:
        return None

    reply_len = IPV4_MIN_HEADER_LEN + len(icmp)
    reply = bytearray(reply_len)
    _IPV4_HEADER.pack_into(reply, 0, 0x45, tos & ~_ECN_MASK, reply_len, 0, IP_DF, REPLY_TTL, IPPROTO_ICMP, 0, dst, src)
    struct.pack_into("!H", reply, 10, internet_checksum(memoryview(reply)[:IPV4_MIN_HEADER_LEN]))
    # Type 0, code 0, checksum 0 for now, then identifier, sequence and payload as received.
    reply[IPV4_MIN_HEADER_LEN] = ICMP_ECHO_REPLY
    reply[IPV4_MIN_HEADER_LEN + 4 :] = icmp[4:]
    icmp_checksum = internet_checksum(memoryview(reply)[IPV4_MIN_HEADER_LEN:])
    struct.pack_into("!H", reply, IPV4_MIN_HEADER_LEN + 2, icmp_checksum)
    return bytes(reply)
