"""Who gets a handshake slot: limits per source address, a global bound, refusal counts.

Pure bookkeeping, no sockets and no clock: every method takes ``now`` (seconds, any monotonic
clock), so tests drive it with made-up times. The server's selector loop (gatekeeper.py) asks
:meth:`SourceLimiter.admit` for every accepted TCP connection and reports when the connection
leaves the handshake with :meth:`SourceLimiter.release`.

The rules, and why:

- **Handshake rate per source**: a token bucket of HANDSHAKE_RATE per second with a burst of
  HANDSHAKE_BURST, WireGuard's numbers (its ratelimiter.c). A real client makes one handshake per
  connection, a reconnecting one a few; a flood from one host is cut to 20 attempts a second.
- **Unauthenticated connections per source**: at most MAX_PENDING_PER_SOURCE in the handshake
  at once, so one host cannot fill the table however slowly it talks.
- **A global bound, oldest evicted**: past MAX_PENDING the oldest pending connection is closed
  to make room. A stranger's slot gets older every second, a real client needs a few
  milliseconds, so under any flood the newcomer wins (refusing the new one instead would let
  whoever holds the slots keep them).
- A "source" is an IPv4 address, or the /64 of an IPv6 address (one host's usual allocation).
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

HANDSHAKE_RATE = 20.0
"""Handshakes per second per source, sustained (WireGuard: PACKETS_PER_SECOND)."""
HANDSHAKE_BURST = 5
"""...and at once after a quiet spell (WireGuard: PACKETS_BURSTABLE)."""
MAX_PENDING_PER_SOURCE = 8
"""Connections one source may have in the handshake at once. A handshake takes a round trip,
so even several clients behind one NAT reconnecting together rarely need more than one or two."""
MAX_PENDING = 256
"""Connections in the handshake at once, all sources together; past it the oldest is evicted."""
MAX_SOURCES = 8192
"""Sources tracked at once (WireGuard: TABLE_SIZE / 8 entries). A new source past this is
refused until idle entries are collected, so the table itself cannot be grown without bound."""
SUMMARY_INTERVAL = 5.0
LIMIT_REFUSALS = frozenset({"per-source", "rate", "too-many-sources", "evicted"})
"""The refusal reasons that mean "over a limit" (the others: the handshake itself failed)."""
"""Refused connections are logged as one summary line at most this often, never one line each."""


def source_of(address: str) -> str:
    """The limiter's key for a peer address: the IPv4 address, or the IPv6 /64."""
    if ":" not in address:  # IPv4 as the kernel formats it: the usual case, and the hot path
        return address
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Source:
    tokens: float
    updated: float
    pending: int = 0


@dataclass(frozen=True)
class Decision:
    """The answer for one new connection. ``refused`` is the reason (counted), or None to admit;
    ``evict`` lists connections to close first (the oldest pending ones)."""

    refused: str | None
    evict: tuple[object, ...] = ()


@dataclass
class SourceLimiter:
    """Token buckets and pending counts per source, plus the global oldest-first table."""

    rate: float = HANDSHAKE_RATE
    burst: int = HANDSHAKE_BURST
    max_per_source: int = MAX_PENDING_PER_SOURCE
    max_pending: int = MAX_PENDING
    max_sources: int = MAX_SOURCES
    _sources: dict[str, _Source] = field(default_factory=dict)
    _pending: OrderedDict[object, str] = field(default_factory=OrderedDict)
    """Connection -> source, oldest first."""

    def admit(self, connection: object, address: str, now: float) -> Decision:
        """Decide whether ``connection`` from ``address`` may start a handshake; if so, track it."""
        key = source_of(address)
        source = self._sources.get(key)
        if source is None:
            if len(self._sources) >= self.max_sources:
                self.collect(now)
                if len(self._sources) >= self.max_sources:
                    return Decision("too-many-sources")
            source = self._sources[key] = _Source(float(self.burst), now)
        source.tokens = min(float(self.burst), source.tokens + (now - source.updated) * self.rate)
        source.updated = now
        if source.pending >= self.max_per_source:
            return Decision("per-source")
        if source.tokens < 1.0:
            return Decision("rate")
        source.tokens -= 1.0
        evict = []
        while len(self._pending) >= self.max_pending:
            oldest, _ = next(iter(self._pending.items()))
            self.release(oldest)
            evict.append(oldest)
        source.pending += 1
        self._pending[connection] = key
        return Decision(None, tuple(evict))

    def release(self, connection: object) -> None:
        """``connection`` left the handshake (established, refused, timed out or evicted)."""
        key = self._pending.pop(connection, None)
        if key is not None:
            self._sources[key].pending -= 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    def collect(self, now: float) -> None:
        """Forget sources with nothing pending whose bucket has refilled: they are as new."""
        idle_for = self.burst / self.rate
        for key in [k for k, s in self._sources.items() if not s.pending and now - s.updated >= idle_for]:
            del self._sources[key]

    @property
    def sources(self) -> int:
        return len(self._sources)


@dataclass
class RefusalTally:
    """Refused connections counted by reason, turned into a log line at most every ``interval``."""

    interval: float = SUMMARY_INTERVAL
    counts: Counter[str] = field(default_factory=Counter)
    """Since the last summary."""
    totals: Counter[str] = field(default_factory=Counter)
    """Since the start (for statistics)."""
    _last_summary: float | None = None

    def add(self, reason: str) -> None:
        self.counts[reason] += 1
        self.totals[reason] += 1

    def summary(self, now: float) -> str | None:
        """The line to log now, or None: nothing new, or the last summary was too recent.

        The first refusal after a quiet spell is reported at once, later ones wait their turn.
        """
        if not self.counts or (self._last_summary is not None and now - self._last_summary < self.interval):
            return None
        total = sum(self.counts.values())
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        since = "" if self._last_summary is None else f" in the last {now - self._last_summary:.0f} s"
        self.counts.clear()
        self._last_summary = now
        return f"refused {total} connection{'s' if total != 1 else ''}{since}: {detail}"
