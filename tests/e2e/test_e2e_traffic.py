"""Traffic through a running tunnel, in both data-path modes: pings, 20 MB TCP streams,
client-to-client forwarding, and proof that what crosses the wire is encrypted.

All tests share one lab per mode (server + alice + bob, see the ``tunnel`` fixture).
"""

from __future__ import annotations

import os
import secrets

import pytest

from netlab import Capture, StreamResult, TunnelLab, tcp_stream

STREAM_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def payload() -> bytes:
    """20 MB of random bytes: nothing in the path can compress or special-case them."""
    return os.urandom(STREAM_BYTES)


def assert_stream_intact(result: StreamResult) -> None:
    assert result.received == result.sent, f"{result.received} of {result.sent} bytes arrived"
    assert result.received_sha256 == result.sent_sha256


def test_ping_client_to_server(tunnel: TunnelLab) -> None:
    alice = tunnel.peers["alice"]
    result = alice.ns.ping(tunnel.server_ip)
    assert result.all_answered, result.output


def test_ping_server_to_client(tunnel: TunnelLab) -> None:
    for peer in tunnel.peers.values():
        result = tunnel.server.ping(peer.tunnel_ip)
        assert result.all_answered, result.output


def test_large_pings_cross_the_tunnel(tunnel: TunnelLab) -> None:
    """1372 bytes of ICMP data make a 1400-byte packet: exactly the tunnel MTU."""
    alice = tunnel.peers["alice"]
    result = alice.ns.ping(tunnel.server_ip, size=1372)
    assert result.all_answered, result.output


def test_ping_client_to_client(tunnel: TunnelLab) -> None:
    alice, bob = tunnel.peers["alice"], tunnel.peers["bob"]
    there = alice.ns.ping(bob.tunnel_ip)
    back = bob.ns.ping(alice.tunnel_ip)
    assert there.all_answered, there.output
    assert back.all_answered, back.output


def test_tcp_stream_client_to_server(tunnel: TunnelLab, payload: bytes) -> None:
    alice = tunnel.peers["alice"]
    assert_stream_intact(tcp_stream(alice.ns, tunnel.server, tunnel.server_ip, payload))


def test_tcp_stream_server_to_client(tunnel: TunnelLab, payload: bytes) -> None:
    alice = tunnel.peers["alice"]
    assert_stream_intact(tcp_stream(tunnel.server, alice.ns, alice.tunnel_ip, payload))


def test_tcp_stream_client_to_client(tunnel: TunnelLab, payload: bytes) -> None:
    """The server forwards between clients itself (no kernel forwarding in between)."""
    alice, bob = tunnel.peers["alice"], tunnel.peers["bob"]
    assert_stream_intact(tcp_stream(alice.ns, bob.ns, bob.tunnel_ip, payload))
    assert_stream_intact(tcp_stream(bob.ns, alice.ns, alice.tunnel_ip, payload[: 2 * 1024 * 1024]))


def test_marker_is_encrypted_on_the_wire(tunnel: TunnelLab) -> None:
    """A marker sent through the tunnel is on the TUN in clear, and nowhere on the veth."""
    alice = tunnel.peers["alice"]
    marker = f"tunlib-e2e-marker-{secrets.token_hex(8)}".encode()
    data = (marker + b"\n") * (1024 * 1024 // (len(marker) + 1))
    on_veth = Capture(tunnel.server, alice.link.ifname_a, "veth")
    on_tun = Capture(tunnel.server, tunnel.server_tun, "tun")
    assert_stream_intact(tcp_stream(alice.ns, tunnel.server, tunnel.server_ip, data))
    tun_bytes, veth_bytes = on_tun.stop(), on_veth.stop()
    assert marker in tun_bytes, "the TUN capture should show the plaintext (else the capture proves nothing)"
    assert len(veth_bytes) > len(data), "the veth capture should hold the whole encrypted stream"
    assert marker not in veth_bytes, "plaintext leaked onto the wire"
