"""What the two handshake messages carry inside their encrypted payloads.

Message 1 (client to server) carries a TAI64N timestamp and a JSON object for extensions. The server
keeps the newest timestamp of each client's confirmed sessions and refuses any message 1 that is
not newer, so a recorded message 1 replayed later cannot open a session (as in WireGuard).

Message 2 (server to client) carries the session settings as JSON: the client's tunnel
address, the MTU and the data-path mode. Later features (routes, DNS) add keys; unknown keys
are ignored so old clients keep working. This module does no I/O; the caller passes the clock.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass, field

TAI64N = struct.Struct("!QI")
TAI64N_LEN = TAI64N.size
TAI64_EPOCH = 2**62
"""TAI64 labels second 0 of 1970 as 2**62 (the small leap-second offset is ignored, as in
WireGuard: only the ordering matters)."""

MAX_PAYLOAD = 512
"""Upper bound for either payload, checked before JSON parsing."""

DEFAULT_MTU = 1400
MIN_MTU = 576
"""The smallest datagram every IPv4 host must accept (RFC 791)."""
MAX_MTU = 65535
MIN_TIMER, MAX_TIMER = 0.1, 3600.0
"""Bounds a pushed ``rekey_after`` or ``keepalive`` (seconds) must lie within."""


def valid_mtu(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_MTU <= value <= MAX_MTU


def _timer(fields: dict, key: str) -> float | None:
    """An optional number of seconds in MIN_TIMER..MAX_TIMER (``true`` is not a number here)."""
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not MIN_TIMER <= value <= MAX_TIMER:
        raise MessageError(f"session settings: {key} must be a number of seconds in {MIN_TIMER:g}..{MAX_TIMER:g}")
    return float(value)


class MessageError(ValueError):
    """A handshake payload is malformed."""


def tai64n(unix_ns: int) -> bytes:
    """Encode a Unix time in nanoseconds as a 12-byte TAI64N label (sortable as bytes)."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return TAI64N.pack(TAI64_EPOCH + seconds, nanos)


def _load_json_object(data: bytes) -> dict:
    if len(data) > MAX_PAYLOAD:
        raise MessageError("payload too large")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MessageError("payload is not a JSON object")
    return value


def _text(value: object) -> str:
    """Addresses travel as strings; ``ipaddress`` would also take a number, which we refuse."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _list(value: object) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class ClientHello:
    """Payload of message 1: a timestamp, then a JSON object kept for future extensions
    (version 1 sends ``{}``; a server ignores keys it does not know)."""

    timestamp: bytes

    def encode(self) -> bytes:
        return self.timestamp + _dump({})

    @classmethod
    def decode(cls, data: bytes) -> ClientHello:
        if len(data) < TAI64N_LEN:
            raise MessageError("hello shorter than a timestamp")
        _load_json_object(data[TAI64N_LEN:])
        return cls(timestamp=bytes(data[:TAI64N_LEN]))


@dataclass(frozen=True)
class SessionSettings:
    """Payload of message 2: how the client must configure its end of the tunnel."""

    address: ipaddress.IPv4Interface
    """The client's tunnel address with the tunnel prefix, e.g. 10.0.0.2/24."""
    server_address: ipaddress.IPv4Address
    mtu: int = DEFAULT_MTU
    offload: bool = False
    """True: every DATA plaintext starts with a virtio-net header (TUN offload mode)."""
    routes: tuple[ipaddress.IPv4Network, ...] = field(default=())
    """Networks the server offers behind the tunnel (besides the tunnel subnet)."""
    dns: tuple[ipaddress.IPv4Address, ...] = field(default=())
    rekey_after: float | None = None
    """The server's ``--rekey-after`` seconds, if given (None: the protocol's REKEY_AFTER_TIME)."""
    keepalive: float | None = None
    """The server's ``--keepalive`` seconds, if given (None: the protocol's KEEPALIVE)."""

    def encode(self) -> bytes:
        fields: dict[str, object] = {
            "address": str(self.address),
            "server_address": str(self.server_address),
            "mtu": self.mtu,
            "offload": self.offload,
            "routes": [str(r) for r in self.routes],
            "dns": [str(d) for d in self.dns],
        }
        # Only when set, so a server with the default timers sends the same bytes as before.
        for key, value in (("rekey_after", self.rekey_after), ("keepalive", self.keepalive)):
            if value is not None:
                fields[key] = int(value) if value == int(value) else value
        return _dump(fields)

    @classmethod
    def decode(cls, data: bytes) -> SessionSettings:
        fields = _load_json_object(data)
        try:
            address = ipaddress.IPv4Interface(_text(fields["address"]))
            server_address = ipaddress.IPv4Address(_text(fields["server_address"]))
            mtu = fields.get("mtu", DEFAULT_MTU)
            offload = fields.get("offload", False)
            routes = tuple(ipaddress.IPv4Network(_text(r)) for r in _list(fields.get("routes", [])))
            dns = tuple(ipaddress.IPv4Address(_text(d)) for d in _list(fields.get("dns", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"bad session settings: {exc!r}") from None
        rekey_after, keepalive = _timer(fields, "rekey_after"), _timer(fields, "keepalive")
        if not valid_mtu(mtu):
            raise MessageError(f"session settings: mtu must be an integer in {MIN_MTU}..{MAX_MTU}")
        if not isinstance(offload, bool):
            raise MessageError("session settings: offload must be true or false")
        return cls(address, server_address, mtu, offload, routes, dns, rekey_after, keepalive)
