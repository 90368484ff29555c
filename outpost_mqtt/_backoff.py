"""When to try a connection again: one policy for every reconnect loop (uplink, collector,
site brokers).

Full jitter (``uniform(0, ceiling)``) over a ceiling that doubles with each consecutive failure,
from ``base`` up to a low ``cap``, so a gateway is back within seconds of its path returning and a
fleet that lost the broker together does not come back in step. Two refinements:

- **Brief failures retry fast.** The ceiling starts again from ``base`` only after a session that
  lasted ``healthy_after`` seconds: a link that drops after a good while is tried again within a
  fraction of a second, while a broker that accepts and drops at once keeps backing off.
- **A busy broker is left alone longer.** A failure that cost the broker work (it took the
  connection but did not answer in time, or said it is busy) grows the ceiling up to
  ``busy_cap`` instead. Refused and unreachable attempts cost it nothing and stay on ``cap``.

``docs/operations.md`` works out what this means for a fleet of 10,000 gateways.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """Delays between connection attempts. ``connected()`` when a session starts,
    ``next_delay()`` when an attempt or a session has ended."""

    def __init__(
        self,
        *,
        base: float,
        cap: float,
        busy_cap: float | None = None,
        healthy_after: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff: need 0 < base <= cap, got base={base}, cap={cap}")
        self._base, self._cap = base, cap
        self._busy_cap = max(cap, busy_cap if busy_cap is not None else cap)
        self._healthy_after = healthy_after
        self._rng = rng or random.Random()
        self._clock = clock
        self._failures = 0
        self._since: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (what the next ceiling grows from)."""
        return self._failures

    def connected(self) -> None:
        """A session started; if it lasts ``healthy_after``, the next failure counts as the
        first."""
        self._since = self._clock()

    def reset(self) -> None:
        self._failures = 0
        self._since = None

    def ceiling(self, *, busy: bool = False) -> float:
        """The most the next delay can be."""
        cap = self._busy_cap if busy else self._cap
        return min(cap, self._base * 2.0 ** min(self._failures, 40))

    def next_delay(self, *, busy: bool = False) -> float:
        """The wait before the next attempt, after a failed attempt or a session that ended."""
        if self._since is not None and self._clock() - self._since >= self._healthy_after:
            self._failures = 0
        self._since = None
        ceiling = self.ceiling(busy=busy)
        self._failures += 1
        return self._rng.uniform(0.0, ceiling)
