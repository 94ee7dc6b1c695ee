"""Tests for packets.py: internet checksum, IPv4 address extraction, ICMP echo replies."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packets import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    IPPROTO_ICMP,
    echo_reply6_for,
    echo_reply_for,
    icmpv6_checksum,
    internet_checksum,
)

# One real ICMP echo request, as sent by iputils `ping -c1 -W1 10.99.0.2` (56 data bytes:
# an 8-byte timeval then 0x10, 0x11, ...). Captured once on Linux 6.18 inside a throwaway
# network namespace, so no traffic left this machine:
#   ip netns add pk-$$; trap 'ip netns del pk-$$' EXIT
#   ip -n pk-$$ link set lo up
#   ip -n pk-$$ link add d0 type veth peer name d1; ip -n pk-$$ link set d1 up
#   ip -n pk-$$ addr add 10.99.0.1/24 dev d0; ip -n pk-$$ link set d0 up
#   ip -n pk-$$ neigh add 10.99.0.2 lladdr 02:00:00:00:00:02 dev d0 nud permanent
#   ip netns exec pk-$$ tcpdump -n -i d0 -c 1 -w ping.pcap icmp &
#   ip netns exec pk-$$ ping -c1 -W1 10.99.0.2
# followed by stripping the pcap record header and the 14-byte Ethernet header.
PING_REQUEST = bytes.fromhex(
    "4500005425994000400100480a6300010a630002"  # IPv4: id 0x2599, DF, TTL 64, csum 0x0048
    "08003b690d660001"  # ICMP echo request: csum 0x3b69, id 0x0d66, seq 1
    "0929026b00000000e0c8040000000000"  # struct timeval
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
)
PING_SRC = bytes([10, 99, 0, 1])
PING_DST = bytes([10, 99, 0, 2])


def reference_checksum(data: bytes) -> int:
    """RFC 1071 written the slow, obvious way: add 16-bit words, fold carries, invert."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(
    payload: bytes,
    *,
    src: bytes = PING_SRC,
    dst: bytes = PING_DST,
    proto: int = IPPROTO_ICMP,
    tos: int = 0,
    frag: int = 0x4000,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet with a correct header checksum (options must be a multiple of 4)."""
    header_len = 20 + len(options)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | header_len // 4,
            tos,
            header_len + len(payload),
            0x1234,
            frag,
            64,
            proto,
            0,
            src,
            dst,
        )
        + options
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def icmp_message(icmp_type: int, ident: int, seq: int, data: bytes, code: int = 0) -> bytes:
    """An ICMP echo message with a correct checksum."""
    message = bytearray(struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + data)
    struct.pack_into("!H", message, 2, internet_checksum(message))
    return bytes(message)


def with_fixed_ip_checksum(packet: bytearray) -> bytes:
    """Recompute the IPv4 header checksum after a test edited the header."""
    header_len = (packet[0] & 0x0F) * 4
    packet[10:12] = b"\x00\x00"
    struct.pack_into("!H", packet, 10, internet_checksum(packet[:header_len]))
    return bytes(packet)


def assert_valid_reply(request: bytes, reply: bytes) -> None:
    """Everything a correct echo reply to `request` must satisfy."""
    request_header_len = (request[0] & 0x0F) * 4
    request_icmp = request[request_header_len:]
    assert reply[0] == 0x45  # IPv4, no options
    assert struct.unpack_from("!H", reply, 2)[0] == len(reply) == 20 + len(request_icmp)
    assert internet_checksum(reply[:20]) == 0
    assert struct.unpack_from("!H", reply, 6)[0] & 0xBFFF == 0  # only DF may be set
    assert reply[8] == 64  # TTL
    assert reply[9] == IPPROTO_ICMP
    assert reply[1] == request[1] & 0xFC  # DSCP kept, ECN cleared
    assert reply[12:16] == request[16:20]
    assert reply[16:20] == request[12:16]
    icmp = reply[20:]
    assert icmp[0] == ICMP_ECHO_REPLY and icmp[1] == 0
    assert internet_checksum(icmp) == 0
    assert icmp[4:] == request_icmp[4:]  # identifier, sequence number, payload


# --- internet_checksum -----------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2 (after folding the
    # carry), so the checksum is its complement, 0x220d.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_of_known_ipv4_headers() -> None:
    # A commonly quoted example header with checksum 0xb861, with the field zeroed.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    # The real ping capture above: its header carries 0x0048.
    zeroed = PING_REQUEST[:10] + b"\x00\x00" + PING_REQUEST[12:20]
    assert internet_checksum(zeroed) == 0x0048
    assert internet_checksum(PING_REQUEST[:20]) == 0
    assert internet_checksum(PING_REQUEST[20:]) == 0


def test_checksum_odd_lengths_pad_with_zero() -> None:
    assert internet_checksum(b"\x01") == 0xFEFF  # the word 0x0100
    assert internet_checksum(b"\x00\x01\xf2") == internet_checksum(b"\x00\x01\xf2\x00")
    assert internet_checksum(b"\xff\xff\xff") == reference_checksum(b"\xff\xff\xff")


def test_checksum_edge_values() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(64)) == 0xFFFF
    # Words that sum to 0xFFFF (negative zero) must give checksum 0, not 0xFFFF.
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x12\x34\xed\xcb") == 0
    # Carries fold around: 0xFFFF + 0x0001 = 0x0001 in ones'-complement arithmetic.
    assert internet_checksum(b"\xff\xff\x00\x01") == 0xFFFE


@given(st.binary(max_size=2000))
def test_checksum_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)
    assert internet_checksum(memoryview(data)) == internet_checksum(bytearray(data))


@given(st.binary(min_size=2, max_size=1500), st.data())
def test_checksum_inserted_sums_to_zero(data: bytes, draw: st.DataObject) -> None:
    # Checksum fields sit at even offsets (16-bit aligned), as in IP/ICMP/TCP/UDP.
    position = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    buf = bytearray(data)
    buf[position : position + 2] = b"\x00\x00"
    struct.pack_into("!H", buf, position, internet_checksum(buf))
    assert internet_checksum(buf) == 0


# --- echo_reply_for: the real capture --------------------------------------------------


def test_reply_to_real_ping() -> None:
    reply = echo_reply_for(PING_REQUEST, PING_DST)
    assert reply is not None
    assert_valid_reply(PING_REQUEST, reply)
    assert len(reply) == len(PING_REQUEST)
    assert reply[12:16] == PING_DST and reply[16:20] == PING_SRC
    assert struct.unpack_from("!HH", reply, 24) == (0x0D66, 1)
    assert reply[28:] == PING_REQUEST[28:]


def test_reply_accepts_memoryview_and_bytearray() -> None:
    expected = echo_reply_for(PING_REQUEST, PING_DST)
    assert echo_reply_for(memoryview(PING_REQUEST), PING_DST) == expected
    assert echo_reply_for(bytearray(PING_REQUEST), PING_DST) == expected
    framed = b"\x00" * 10 + PING_REQUEST  # as the data path slices it out of a buffer
    assert echo_reply_for(memoryview(framed)[10:], PING_DST) == expected


def test_reply_keeps_dscp_clears_ecn() -> None:
    request = ipv4_packet(icmp_message(ICMP_ECHO_REQUEST, 7, 9, b"x"), tos=0xB8 | 0x02)
    reply = echo_reply_for(request, PING_DST)
    assert reply is not None
    assert reply[1] == 0xB8
    assert_valid_reply(request, reply)


def test_reply_with_empty_payload() -> None:
    request = ipv4_packet(icmp_message(ICMP_ECHO_REQUEST, 1, 2, b""))
    reply = echo_reply_for(request, PING_DST)
    assert reply is not None and len(reply) == 28
    assert_valid_reply(request, reply)


def _edit(offset: int, value: bytes, fix_ip_checksum: bool = True) -> bytes:
    packet = bytearray(PING_REQUEST)
    packet[offset : offset + len(value)] = value
    return with_fixed_ip_checksum(packet) if fix_ip_checksum else bytes(packet)


def _as_echo_reply() -> bytes:
    packet = bytearray(PING_REQUEST)
    packet[20] = ICMP_ECHO_REPLY
    packet[22:24] = b"\x00\x00"
    struct.pack_into("!H", packet, 22, internet_checksum(packet[20:]))
    return bytes(packet)


IPV6_ECHO_REQUEST = bytes.fromhex(
    "6000000000103a40"  # version 6, payload 16, next header ICMPv6, hop limit 64
    "fd000000000000000000000000000001"
    "fd000000000000000000000000000002"
    "8000000000010001" + "00" * 8  # ICMPv6 echo request (checksum not filled in)
)


@pytest.mark.parametrize(
    ("packet", "own"),
    [
        pytest.param(PING_REQUEST, PING_SRC, id="wrong-destination"),
        pytest.param(PING_REQUEST, bytes(4), id="other-own-address"),
        pytest.param(_as_echo_reply(), PING_DST, id="echo-reply"),
        pytest.param(_edit(10, b"\x00\x49", False), PING_DST, id="bad-ip-checksum"),
        pytest.param(_edit(8, b"\x3f", False), PING_DST, id="ttl-changed-checksum-not"),
        pytest.param(_edit(22, b"\x3b\x6a"), PING_DST, id="bad-icmp-checksum"),
        pytest.param(_edit(40, b"\xff"), PING_DST, id="payload-corrupted"),
        pytest.param(_edit(6, b"\x20\x00"), PING_DST, id="fragment-MF"),
        pytest.param(_edit(6, b"\x00\x05"), PING_DST, id="fragment-offset"),
        pytest.param(_edit(6, b"\x80\x00"), PING_DST, id="reserved-flag"),
        pytest.param(_edit(9, b"\x11"), PING_DST, id="protocol-udp"),
        pytest.param(_edit(21, b"\x01"), PING_DST, id="icmp-code-1"),
        pytest.param(_edit(12, bytes(4)), PING_DST, id="source-0.0.0.0"),
        pytest.param(_edit(12, b"\x7f\x00\x00\x01"), PING_DST, id="source-loopback"),
        pytest.param(_edit(12, b"\xe0\x00\x00\x01"), PING_DST, id="source-multicast"),
        pytest.param(_edit(12, b"\xff\xff\xff\xff"), PING_DST, id="source-broadcast"),
        pytest.param(PING_REQUEST[:-1], PING_DST, id="truncated-by-one"),
        pytest.param(PING_REQUEST[:27], PING_DST, id="truncated-icmp-header"),
        pytest.param(PING_REQUEST[:20], PING_DST, id="ip-header-only"),
        pytest.param(PING_REQUEST[:19], PING_DST, id="truncated-ip-header"),
        pytest.param(b"", PING_DST, id="empty"),
        pytest.param(PING_REQUEST + b"\x00", PING_DST, id="trailing-byte"),
        pytest.param(_edit(2, b"\x00\x53"), PING_DST, id="total-length-short"),
        pytest.param(_edit(2, b"\x00\x55"), PING_DST, id="total-length-long"),
        pytest.param(_edit(0, b"\x44"), PING_DST, id="ihl-4"),
        pytest.param(_edit(0, b"\x4f"), PING_DST, id="ihl-15-no-options"),
        pytest.param(IPV6_ECHO_REQUEST, PING_DST, id="ipv6"),
    ],
)
def test_no_reply(packet: bytes, own: bytes) -> None:
    assert echo_reply_for(packet, own) is None


# --- echo_reply_for: IP options ----------------------------------------------------------

ECHO = icmp_message(ICMP_ECHO_REQUEST, 0x4242, 3, b"options test")
RECORD_ROUTE = bytes([7, 11, 4]) + bytes(8) + b"\x00"  # RR with room for 2 hops, then EOL
TIMESTAMP = bytes([68, 12, 5, 0]) + bytes(8)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(b"\x01\x01\x01\x00", id="nops-eol"),
        pytest.param(RECORD_ROUTE, id="record-route"),
        pytest.param(TIMESTAMP, id="timestamp"),
        pytest.param(b"\x00\x83\x00\x00", id="junk-after-eol"),
    ],
)
def test_reply_drops_harmless_options(options: bytes) -> None:
    request = ipv4_packet(ECHO, options=options)
    reply = echo_reply_for(request, PING_DST)
    assert reply is not None
    assert_valid_reply(request, reply)
    assert len(reply) == len(request) - len(options)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(bytes([0x83, 7, 4]) + bytes(4) + b"\x00", id="loose-source-route"),
        pytest.param(bytes([0x89, 7, 4]) + bytes(4) + b"\x00", id="strict-source-route"),
        pytest.param(b"\x07\x00\x00\x00", id="length-0"),
        pytest.param(b"\x07\x01\x00\x00", id="length-1"),
        pytest.param(b"\x01\x07\x09\x00", id="length-past-end"),
        pytest.param(b"\x01\x01\x01\x07", id="length-byte-missing"),
    ],
)
def test_no_reply_to_bad_or_source_routed_options(options: bytes) -> None:
    assert echo_reply_for(ipv4_packet(ECHO, options=options), PING_DST) is None


# --- echo_reply_for: properties ------------------------------------------------------------

addresses = st.binary(min_size=4, max_size=4)
unicast = addresses.filter(lambda a: a[0] not in (0, 127) and a[0] < 224)


@given(
    src=unicast,
    dst=addresses,
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    data=st.binary(max_size=1500),
)
def test_reply_to_any_valid_request(src: bytes, dst: bytes, tos: int, ident: int, seq: int, data: bytes) -> None:
    request = ipv4_packet(icmp_message(ICMP_ECHO_REQUEST, ident, seq, data), src=src, dst=dst, tos=tos)
    reply = echo_reply_for(request, dst)
    assert reply is not None
    assert_valid_reply(request, reply)
    assert echo_reply_for(request, bytes(a ^ 1 for a in dst)) is None


@settings(max_examples=500)
@given(st.binary(max_size=200), addresses)
def test_arbitrary_bytes_never_raise(packet: bytes, own: bytes) -> None:
    reply = echo_reply_for(packet, own)
    if reply is not None:
        assert_valid_reply(packet, reply)


@settings(max_examples=1000)
@given(st.integers(0, len(PING_REQUEST) - 1), st.integers(1, 255), st.booleans())
def test_corrupted_capture_never_raises(position: int, xor: int, fix_checksum: bool) -> None:
    # Random bytes rarely get past the first checks; single-byte damage to a real
    # request exercises every later branch.
    packet = bytearray(PING_REQUEST)
    packet[position] ^= xor
    if fix_checksum and (packet[0] & 0x0F) * 4 <= len(packet):
        corrupted = with_fixed_ip_checksum(packet)
    else:
        corrupted = bytes(packet)
    reply = echo_reply_for(corrupted, PING_DST)
    if reply is not None:
        assert_valid_reply(corrupted, reply)


# -- ICMPv6 echo (RFC 4443) -------------------------------------------------------------------

# Captured from Linux 6.18: `ping -6 -c1 -s 24 -I 2001:db8::7 fd00:99::1` inside a scratch
# namespace, request and the kernel's own reply (whose flow label Linux picks at random).
KERNEL_REQUEST6 = bytes.fromhex(
    "600bf51200203a4020010db8000000000000000000000007fd000099000000000000000000000001"
    "80008af62a45000188590f6b00000000b0f80a00000000001011121314151617"
)
KERNEL_REPLY6 = bytes.fromhex(
    "6001ccce00203a40fd00009900000000000000000000000120010db8000000000000000000000007"
    "810089f62a45000188590f6b00000000b0f80a00000000001011121314151617"
)
OWN6 = bytes.fromhex("fd000099000000000000000000000001")
PEER6 = bytes.fromhex("20010db8000000000000000000000007")


def icmpv6_echo_request(src: bytes, dst: bytes, ident: int, seq: int, data: bytes, tclass: int = 0) -> bytes:
    message = bytearray(struct.pack("!BBHHH", ICMPV6_ECHO_REQUEST, 0, 0, ident, seq) + data)
    struct.pack_into("!H", message, 2, icmpv6_checksum(src, dst, message))
    header = struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20) | 0x12345, len(message), 58, 64, src, dst)
    return header + bytes(message)


def test_icmpv6_reply_matches_the_kernels_but_for_the_flow_label() -> None:
    reply = echo_reply6_for(KERNEL_REQUEST6, OWN6)
    assert reply is not None
    assert reply[0] == KERNEL_REPLY6[0] and reply[1] & 0xF0 == KERNEL_REPLY6[1] & 0xF0
    assert reply[1] & 0x0F == 0 and reply[2:4] == b"\x00\x00"  # flow label 0
    assert reply[4:] == KERNEL_REPLY6[4:]


def test_icmpv6_checksum_of_the_kernels_packets_verifies() -> None:
    for packet in (KERNEL_REQUEST6, KERNEL_REPLY6):
        assert icmpv6_checksum(packet[8:24], packet[24:40], packet[40:]) == 0


@pytest.mark.parametrize(
    "packet",
    [
        KERNEL_REQUEST6[:47],  # shorter than header + echo header
        b"\x40" + KERNEL_REQUEST6[1:],  # version 4
        KERNEL_REQUEST6[:5] + b"\x21" + KERNEL_REQUEST6[6:],  # payload length off by one
        KERNEL_REQUEST6 + b"\x00",  # trailing byte
        KERNEL_REQUEST6[:6] + b"\x00" + KERNEL_REQUEST6[7:],  # hop-by-hop header first: left to the kernel
        KERNEL_REQUEST6[:40] + b"\x81" + KERNEL_REQUEST6[41:],  # an echo reply, not a request
        KERNEL_REQUEST6[:42] + b"\x00\x00" + KERNEL_REQUEST6[44:],  # bad checksum
        icmpv6_echo_request(b"\xff\x02" + bytes(13) + b"\x01", OWN6, 1, 1, b"x"),  # multicast source
        icmpv6_echo_request(bytes(15) + b"\x01", OWN6, 1, 1, b"x"),  # ::1 source
        icmpv6_echo_request(bytes(10) + b"\xff\xff\xc0\x00\x02\x01", OWN6, 1, 1, b"x"),  # v4-mapped source
        icmpv6_echo_request(PEER6, PEER6, 1, 1, b"x"),  # not to us
    ],
)
def test_no_icmpv6_reply(packet: bytes) -> None:
    assert echo_reply6_for(packet, OWN6) is None


@given(
    src=st.binary(min_size=16, max_size=16).filter(lambda a: a[0] not in (0, 0xFF)),
    tclass=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    data=st.binary(max_size=300),
)
def test_icmpv6_reply_to_any_valid_request(src: bytes, tclass: int, ident: int, seq: int, data: bytes) -> None:
    request = icmpv6_echo_request(src, OWN6, ident, seq, data, tclass)
    reply = echo_reply6_for(request, OWN6)
    assert reply is not None
    assert reply[8:24] == OWN6 and reply[24:40] == src
    assert (int.from_bytes(reply[:4], "big") >> 20) & 0xFF == tclass & ~0x03  # DSCP kept, ECN cleared
    assert reply[6] == 58 and reply[7] == 64
    assert reply[40] == 129 and reply[41] == 0
    assert reply[44:] == request[44:]  # identifier, sequence, data
    assert icmpv6_checksum(OWN6, src, reply[40:]) == 0


@given(packet=st.binary(max_size=120), own=st.binary(min_size=16, max_size=16))
def test_icmpv6_arbitrary_bytes_never_raise(packet: bytes, own: bytes) -> None:
    echo_reply6_for(packet, own)


@given(position=st.integers(0, len(KERNEL_REQUEST6) - 1), xor=st.integers(1, 255))
def test_icmpv6_corrupted_request_gets_no_reply_or_a_valid_one(position: int, xor: int) -> None:
    packet = bytearray(KERNEL_REQUEST6)
    packet[position] ^= xor
    reply = echo_reply6_for(bytes(packet), OWN6)
    if reply is not None:  # only the traffic class, flow label or hop limit may have changed
        assert position in (1, 2, 3, 7) or (position == 0 and xor < 0x10)
        assert icmpv6_checksum(reply[8:24], reply[24:40], reply[40:]) == 0
