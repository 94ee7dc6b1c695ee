"""Happy Eyeballs (RFC 8305): the address order, and the race on loopback sockets.

Every socket here is on the loopback interface: a "black hole" is a listener whose accept
queue is full, so the kernel drops further SYNs and those connects hang as they would
towards a broken network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from happy_eyeballs import CONNECTION_ATTEMPT_DELAY, connect_first, interleave_families

V4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(1, 2**32 - 1))
V6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(1, 2**128 - 1))


def test_interleave_puts_ipv6_first_and_alternates() -> None:
    addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert interleave_families(addresses) == ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2", "2001:db8::3"]


@given(st.lists(st.one_of(V4, V6), max_size=12))
def test_interleave_keeps_every_address_once_and_each_family_in_order(addresses: list[str]) -> None:
    ordered = interleave_families(addresses)
    unique = list(dict.fromkeys(addresses))
    assert sorted(ordered) == sorted(unique)
    for version in (4, 6):
        family = [a for a in unique if ipaddress.ip_address(a).version == version]
        assert [a for a in ordered if ipaddress.ip_address(a).version == version] == family
    if any(ipaddress.ip_address(a).version == 6 for a in unique):
        assert ipaddress.ip_address(ordered[0]).version == 6
    # No two neighbours share a family while both families still have addresses left.
    for i in range(len(ordered) - 1):
        rest = {ipaddress.ip_address(a).version for a in ordered[i:]}
        if len(rest) == 2 and ipaddress.ip_address(ordered[i]).version == ipaddress.ip_address(ordered[i + 1]).version:
            raise AssertionError(f"{ordered[i]} and {ordered[i + 1]} share a family with both left")


@contextlib.contextmanager
def listener(address: str, port: int = 0) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(8)
        yield sock


@contextlib.contextmanager
def black_hole(address: str, port: int) -> Iterator[None]:
    """A listener on ``address:port`` that never accepts, its queue filled so new SYNs are dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(0)
        fillers = []
        try:
            for _ in range(2):  # backlog 0 still queues one; two make sure
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect((address, port))
                fillers.append(filler)
            time.sleep(0.05)
            yield
        finally:
            for filler in fillers:
                filler.close()


def test_connects_to_the_only_address() -> None:
    with listener("127.0.0.1") as server:
        port = server.getsockname()[1]
        with connect_first(["127.0.0.1"], port, 2.0) as sock:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.getblocking()


def test_a_refused_address_moves_on_at_once() -> None:
    with listener("127.0.0.1") as server:
        port = server.getsockname()[1]
        started = time.monotonic()
        with connect_first(["127.0.0.3", "127.0.0.1"], port, 2.0) as sock:  # nothing listens on .3
            assert sock.getpeername() == ("127.0.0.1", port)
        assert time.monotonic() - started < CONNECTION_ATTEMPT_DELAY


def test_a_black_hole_costs_one_attempt_delay_not_a_timeout() -> None:
    with listener("127.0.0.1") as server:
        port = server.getsockname()[1]
        with black_hole("127.0.0.2", port):
            started = time.monotonic()
            with connect_first(["127.0.0.2", "127.0.0.1"], port, 5.0) as sock:
                assert sock.getpeername() == ("127.0.0.1", port)
            elapsed = time.monotonic() - started
    assert CONNECTION_ATTEMPT_DELAY * 0.9 <= elapsed < 2.0


def test_nothing_answers_raises_the_error() -> None:
    with listener("127.0.0.1") as server:
        port = server.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        connect_first(["127.0.0.1"], port, 2.0)


def test_only_black_holes_time_out() -> None:
    with listener("127.0.0.1") as server:
        port = server.getsockname()[1]
    with black_hole("127.0.0.2", port):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connect_first(["127.0.0.2"], port, 0.5)
        assert time.monotonic() - started < 1.5
