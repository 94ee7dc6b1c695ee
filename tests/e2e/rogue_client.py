"""A hand-driven tunlib client for tests: a real handshake, then frames a real client never sends.

Run inside a client namespace, from the repository: ``python -m tests.e2e.rogue_client PROFILE
ENDPOINT``. It completes the handshake with the product's own session code, so the server sees an
authenticated peer, then sends, as DATA frames:

1. in offload mode, an echo request behind a virtio-net header the kernel would reject
   (a GSO type with gso_size 0);
2. an echo request whose source address is not ours (spoofed);
3. three bytes that cannot be an IPv4 packet (malformed);
4. a well-formed echo request to the server's tunnel address,

and waits for the reply to the last. It prints one JSON line: what the server announced and
whether the echo reply came back, proving the session survived the others.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import sys

from config import Profile
from packets import internet_checksum
from session import client_handshake, dial
from tests.wiretools import VirtioNetHdr
from tunlib import LinkClosed
from vnet import PLAIN_VNET_HDR, VIRTIO_NET_HDR_GSO_TCPV4

ECHO_ID = 0x7E57


def echo_request(src: bytes, dst: bytes, seq: int) -> bytes:
    payload = b"tunlib rogue client probe"
    icmp = struct.pack("!BBHHH", 8, 0, 0, ECHO_ID, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + icmp


class GotReply(Exception):
    pass


def main() -> None:
    profile, endpoint = Profile.load(sys.argv[1]), sys.argv[2]
    sock = dial(endpoint)
    settings, link = client_handshake(sock, profile)
    own, server = settings.address.ip.packed, settings.server_address.packed
    prefix = PLAIN_VNET_HDR if settings.offload else b""
    bad_vnet = VirtioNetHdr(0, VIRTIO_NET_HDR_GSO_TCPV4, 0, 0, 0, 0).pack()
    spoofed = ipaddress.IPv4Address("10.250.250.250").packed

    packets = []
    if settings.offload:
        packets.append(bad_vnet + echo_request(own, server, 1))
    packets.append(prefix + echo_request(spoofed, server, 2))
    packets.append(prefix + b"\x45\x00\x00")  # shorter than any IPv4 header: malformed
    packets.append(prefix + echo_request(own, server, 3))
    link.send_packets(packets)

    def deliver(packet: memoryview) -> None:
        ip = bytes(packet[len(prefix) :])
        if len(ip) >= 28 and ip[9] == 1 and ip[20] == 0 and struct.unpack("!HH", ip[24:28]) == (ECHO_ID, 3):
            raise GotReply

    sock.settimeout(5)
    replied = False
    try:
        link.receive_packets(deliver)
    except GotReply:
        replied = True
    except LinkClosed:
        pass
    link.close()
    print(json.dumps({"offload": settings.offload, "replied": replied}))


if __name__ == "__main__":
    main()
