"""Per-gateway token buckets (readings/s and bytes/s). Over the limit → nack with retry-after."""

from __future__ import annotations

from dataclasses import dataclass

from outpost_iot.wire import LimitName


@dataclass(slots=True)
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` may be taken (a request above capacity needs a full bucket)."""
        need = min(amount, self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: LimitName | None = None
    retry_after_s: float = 0.0


class RateLimiter:
    """Two buckets per gateway. A batch passes only if both allow it; then both are charged.

    A batch larger than a bucket's capacity passes when the bucket is full and drives it into
    debt, so an oversized-but-valid batch is slowed down, never refused forever.
    """

    def __init__(
        self,
        *,
        readings_per_s: float,
        readings_burst: float,
        bytes_per_s: float,
        bytes_burst: float,
    ) -> None:
        self._limits = (readings_per_s, readings_burst, bytes_per_s, bytes_burst)
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def _pair(self, gateway_id: str, now: float) -> tuple[TokenBucket, TokenBucket]:
        pair = self._buckets.get(gateway_id)
        if pair is None:
            rr, rb, br, bb = self._limits
            pair = (TokenBucket(rr, rb, rb, now), TokenBucket(br, bb, bb, now))
            self._buckets[gateway_id] = pair
        return pair

    def consume(self, gateway_id: str, readings: int, size: int, now: float) -> Verdict:
        r_bucket, b_bucket = self._pair(gateway_id, now)
        r_bucket.refill(now)
        b_bucket.refill(now)
        r_wait, b_wait = r_bucket.wait_for(readings), b_bucket.wait_for(size)
        if r_wait > 0 or b_wait > 0:
            if r_wait >= b_wait:
                return Verdict(False, "readings_per_s", r_wait)
            return Verdict(False, "bytes_per_s", b_wait)
        r_bucket.tokens -= readings
        b_bucket.tokens -= size
        return Verdict(True)

    def refund(self, gateway_id: str, readings: int, size: int) -> None:
        """Give tokens back for a batch that was charged but not stored."""
        pair = self._buckets.get(gateway_id)
        if pair:
            pair[0].tokens = min(pair[0].capacity, pair[0].tokens + readings)
            pair[1].tokens = min(pair[1].capacity, pair[1].tokens + size)
