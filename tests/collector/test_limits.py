from __future__ import annotations

import pytest

from outpost_iot.collector import RateLimiter


def limiter() -> RateLimiter:
    return RateLimiter(readings_per_s=100, readings_burst=200, bytes_per_s=1000, bytes_burst=1000)


def test_burst_then_refill() -> None:
    rl = limiter()
    assert rl.consume("g", 200, 10, now=0).allowed
    v = rl.consume("g", 50, 10, now=0)
    assert not v.allowed
    assert v.limit == "readings_per_s"
    assert v.retry_after_s == pytest.approx(0.5)
    assert rl.consume("g", 50, 10, now=0.5).allowed


def test_bytes_limit_is_named() -> None:
    rl = limiter()
    assert rl.consume("g", 1, 1000, now=0).allowed
    v = rl.consume("g", 1, 500, now=0)
    assert (v.allowed, v.limit) == (False, "bytes_per_s")
    assert v.retry_after_s == pytest.approx(0.5)


def test_gateways_have_separate_buckets() -> None:
    rl = limiter()
    assert rl.consume("a", 200, 1, now=0).allowed
    assert rl.consume("b", 200, 1, now=0).allowed


def test_a_batch_larger_than_the_burst_passes_when_the_bucket_is_full() -> None:
    rl = limiter()
    assert rl.consume("g", 500, 1, now=0).allowed  # goes into debt, never refused forever
    v = rl.consume("g", 1, 1, now=0)
    assert not v.allowed
    assert v.retry_after_s == pytest.approx(3.01)


def test_refund_returns_tokens() -> None:
    rl = limiter()
    assert rl.consume("g", 200, 1, now=0).allowed
    rl.refund("g", 200, 1)
    assert rl.consume("g", 200, 1, now=0).allowed


@pytest.mark.parametrize(("readings_burst", "bytes_burst"), [(50, 5000), (5000, 50)])
def test_refund_gives_each_bucket_back_its_own_tokens(
    readings_burst: int, bytes_burst: int
) -> None:
    rl = RateLimiter(
        readings_per_s=1, readings_burst=readings_burst, bytes_per_s=1, bytes_burst=bytes_burst
    )
    r, b = readings_burst * 4 // 5, bytes_burst * 4 // 5
    assert rl.consume("g", r, b, now=0).allowed  # a fifth of each bucket left
    rl.refund("g", r, b)
    assert rl.consume("g", readings_burst, bytes_burst, now=0).allowed, "both full again"
    assert not rl.consume("g", 1, 1, now=0).allowed
    rl.refund("g", readings_burst, bytes_burst)
    rl.refund("g", readings_burst, bytes_burst)  # refunded twice: no more than a full bucket
    assert rl.consume("g", readings_burst, bytes_burst, now=0).allowed
    verdict = rl.consume("g", 1, 1, now=0)
    assert (verdict.allowed, verdict.limit) == (False, "readings_per_s")
    rl.refund("nobody", 10, 10)  # a gateway never charged: nothing to give back, no error
