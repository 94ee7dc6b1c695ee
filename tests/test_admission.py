"""Tests for admission.py: the per-source limiter and the refusal tally, with a made-up clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from admission import HANDSHAKE_BURST, HANDSHAKE_RATE, RefusalTally, SourceLimiter, source_of

T0 = 500.0


def admit_many(limiter: SourceLimiter, address: str, count: int, now: float, start: int = 0) -> list[str | None]:
    return [limiter.admit((address, start + i), address, now).refused for i in range(count)]


def test_burst_then_rate_per_source():
    limiter = SourceLimiter(max_per_source=1000)
    assert admit_many(limiter, "192.0.2.9", HANDSHAKE_BURST, T0) == [None] * HANDSHAKE_BURST
    assert limiter.admit("one too many", "192.0.2.9", T0).refused == "rate"
    # 1/20 s later exactly one more token has come back.
    later = T0 + 1 / HANDSHAKE_RATE
    assert admit_many(limiter, "192.0.2.9", 2, later, start=100) == [None, "rate"]


def test_sustained_rate_is_twenty_per_second():
    limiter = SourceLimiter(max_per_source=10_000)
    admitted = 0
    for tick in range(1000):  # 10 s in steps of 10 ms, 5 attempts each step
        now = T0 + tick / 100
        for i in range(5):
            if limiter.admit((tick, i), "192.0.2.9", now).refused is None:
                admitted += 1
    assert HANDSHAKE_BURST + 10 * HANDSHAKE_RATE - 1 <= admitted <= HANDSHAKE_BURST + 10 * HANDSHAKE_RATE


def test_sources_are_independent():
    limiter = SourceLimiter()
    admit_many(limiter, "192.0.2.9", 10, T0)
    assert limiter.admit("other", "198.51.100.7", T0).refused is None


def test_pending_per_source_is_bounded_and_released():
    limiter = SourceLimiter(rate=1000.0, burst=1000, max_per_source=3)
    assert admit_many(limiter, "192.0.2.9", 4, T0) == [None, None, None, "per-source"]
    limiter.release(("192.0.2.9", 0))
    assert limiter.admit("again", "192.0.2.9", T0).refused is None
    limiter.release("never admitted")  # harmless
    assert limiter.pending == 3


def test_global_bound_evicts_the_oldest_not_the_newest():
    limiter = SourceLimiter(max_pending=4)
    for n in range(4):
        assert limiter.admit(f"c{n}", f"192.0.2.{n + 1}", T0 + n).refused is None
    decision = limiter.admit("newcomer", "198.51.100.1", T0 + 10)
    assert decision.refused is None
    assert decision.evict == ("c0",)
    assert limiter.pending == 4
    # c0's source got its slot back: it may connect again (within its own limits).
    assert limiter.admit("c0-again", "192.0.2.1", T0 + 10).evict == ("c1",)


def test_ipv6_sources_are_grouped_by_64_and_v4_mapped_as_v4():
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.1") == source_of("192.0.2.1") == "192.0.2.1"
    limiter = SourceLimiter(max_per_source=1)
    limiter.admit("a", "2001:db8:1:2::1", T0)
    assert limiter.admit("b", "2001:db8:1:2::2", T0).refused == "per-source"


def test_source_table_is_bounded_and_idle_sources_are_collected():
    limiter = SourceLimiter(max_sources=2)
    limiter.admit("a", "192.0.2.1", T0)
    limiter.admit("b", "192.0.2.2", T0)
    assert limiter.admit("c", "192.0.2.3", T0).refused == "too-many-sources"
    limiter.release("a")
    limiter.release("b")
    assert limiter.admit("c", "192.0.2.3", T0 + 0.01).refused == "too-many-sources"  # buckets not full yet
    assert limiter.admit("c", "192.0.2.3", T0 + HANDSHAKE_BURST / HANDSHAKE_RATE).refused is None
    assert limiter.sources == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 5), st.floats(0, 0.5)),
        max_size=200,
    )
)
def test_invariants_hold_under_any_sequence(ops):
    """Pending never exceeds the bounds, and per-source counts match the table."""
    limiter = SourceLimiter(max_per_source=3, max_pending=7)
    now, live, n = T0, [], 0
    for is_admit, host, dt in ops:
        now += dt
        if is_admit or not live:
            n += 1
            decision = limiter.admit(n, f"192.0.2.{host}", now)
            for evicted in decision.evict:
                live.remove(evicted)
            if decision.refused is None:
                live.append(n)
        else:
            limiter.release(live.pop(0))
        assert limiter.pending == len(live) <= 7


def test_tally_summarises_at_most_every_interval():
    tally = RefusalTally(interval=10.0)
    assert tally.summary(T0) is None
    tally.add("foreign")
    assert tally.summary(T0) == "refused 1 connection: foreign 1"  # the first one at once
    for reason in ["rate", "rate", "foreign"]:
        tally.add(reason)
    assert tally.summary(T0 + 5) is None  # too soon: counted, not logged
    assert tally.summary(T0 + 10) == "refused 3 connections in the last 10 s: foreign 1, rate 2"
    assert tally.summary(T0 + 30) is None  # nothing new
    assert tally.totals == {"foreign": 2, "rate": 2}
