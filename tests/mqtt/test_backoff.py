"""The reconnect policy: full jitter, a low cap, fast after a healthy session, longer when busy."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outpost_iot.mqtt import Backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0  # not zero: a session's length is a difference of two readings

    def __call__(self) -> float:
        return self.now


def test_ceiling_doubles_from_base_to_cap_with_full_jitter() -> None:
    b = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        b.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    # Full jitter: from zero to the ceiling, spread over the whole range.
    delays = [b.next_delay() for _ in range(2000)]
    assert min(delays) < 0.1
    assert max(delays) > 3.9
    assert 1.8 < statistics.mean(delays) < 2.2


def test_a_failure_after_a_healthy_session_is_retried_fast() -> None:
    clock = FakeClock()
    b = Backoff(base=0.5, cap=4.0, healthy_after=10.0, clock=clock, rng=random.Random(2))
    for _ in range(6):
        b.next_delay()
    assert b.ceiling() == 4.0
    b.connected()
    clock.now += 30.0  # the session was good for 30 s, then the link dropped
    assert b.next_delay() <= 0.5
    assert b.ceiling() == 1.0


def test_a_broker_that_accepts_and_drops_at_once_keeps_backing_off() -> None:
    clock = FakeClock()
    b = Backoff(base=0.5, cap=4.0, healthy_after=10.0, clock=clock, rng=random.Random(3))
    for _ in range(5):
        b.connected()
        clock.now += 0.2  # kicked right after connecting (e.g. not on the roster yet)
        b.next_delay()
    assert b.ceiling() == 4.0


def test_each_busy_failure_in_a_row_doubles_the_wait_until_a_connection_succeeds() -> None:
    b = Backoff(base=0.5, cap=4.0, busy_cap=60.0, rng=random.Random(6))
    for _ in range(6):
        b.next_delay()  # refused a few times: at the low cap
    ceilings = []
    for _ in range(5):
        ceilings.append(b.ceiling(busy=True))
        b.next_delay(busy=True)
    assert ceilings == [32.0, 60.0, 60.0, 60.0, 60.0]
    b.connected()  # the broker took us: it is not too busy any more
    assert b.ceiling(busy=True) == 32.0
    wide = Backoff(base=0.5, cap=4.0, busy_cap=1000.0)
    ceilings = []
    for _ in range(6):
        ceilings.append(wide.ceiling(busy=True))
        wide.next_delay(busy=True)
    assert ceilings == [32.0, 64.0, 128.0, 256.0, 512.0, 1000.0]


def test_a_busy_broker_gets_the_longer_cap() -> None:
    b = Backoff(base=0.5, cap=4.0, busy_cap=60.0, rng=random.Random(4))
    for _ in range(10):
        b.next_delay(busy=True)
    assert b.ceiling(busy=True) == 60.0
    assert b.ceiling() == 4.0  # a refused attempt after that is back on the low cap
    assert max(b.next_delay(busy=True) for _ in range(200)) > 30


def test_reset_starts_from_the_base_again() -> None:
    clock = FakeClock()
    b = Backoff(base=1.0, cap=30.0, busy_cap=1000.0, clock=clock, rng=random.Random(5))
    for _ in range(6):
        b.next_delay(busy=True)
    b.connected()
    b.reset()
    assert b.failures == 0
    assert b.ceiling() == 1.0
    assert b.ceiling(busy=True) == 240.0  # eight times the cap: the busy streak is gone too
    clock.now += 3600.0  # reset also forgets the session: no healthy reset at the next failure
    b.next_delay()
    assert b.ceiling() == 2.0


def test_a_session_counts_as_healthy_from_ten_seconds_by_default() -> None:
    for lasted, healthy in [(9.9, False), (10.0, True), (10.5, True)]:
        clock = FakeClock()
        b = Backoff(base=0.5, cap=4.0, clock=clock, rng=random.Random(7))
        for _ in range(5):
            b.next_delay()
        b.connected()
        clock.now += lasted
        b.next_delay()
        assert (b.ceiling() == 1.0) is healthy, f"a session of {lasted} s"
        assert b.failures == (1 if healthy else 6)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="base <= cap"):
        Backoff(base=5.0, cap=1.0)
    with pytest.raises(ValueError, match="0 < base"):
        Backoff(base=0.0, cap=1.0)  # a zero base would never wait: a reconnect storm
    assert Backoff(base=1.0, cap=1.0).ceiling() == 1.0


@given(
    base=st.floats(0.01, 10),
    extra=st.floats(0, 100),
    busy_extra=st.floats(0, 1000),
    outcomes=st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=60),
)
def test_delays_stay_within_the_caps_whatever_happens(
    base: float, extra: float, busy_extra: float, outcomes: list[tuple[bool, float]]
) -> None:
    clock = FakeClock()
    cap = base + extra
    b = Backoff(base=base, cap=cap, busy_cap=cap + busy_extra, clock=clock, rng=random.Random(0))
    for busy, lasted in outcomes:
        b.connected()
        clock.now += lasted
        d = b.next_delay(busy=busy)
        assert 0 <= d <= (cap + busy_extra if busy else cap)
