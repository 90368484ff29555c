"""When to try again: one policy for every reconnect loop (uplink, collector, site brokers),
and the doubling schedule that polling a device that stopped answering follows too.

Full jitter (``uniform(0, ceiling)``) over a ceiling that doubles with each consecutive failure,
from ``base`` up to a low ``cap``, so a gateway is back within seconds of its path returning and a
fleet that lost the broker together does not come back in step. Two refinements:

- **Brief failures retry fast.** The ceiling starts again from ``base`` only after a session that
  lasted ``healthy_after`` seconds: a link that drops after a good while is tried again within a
  fraction of a second, while a broker that accepts and drops at once keeps backing off.
- **A busy broker is left alone longer.** A failure that cost the broker work (it took the
  connection but did not answer in time, or said it is busy) sets a second ceiling, eight times
  ``cap`` at the first and doubling with each such failure in a row up to ``busy_cap``, until a
  connection succeeds. A
  fleet that comes back together thus spreads its attempts wider until they fit what the broker
  can take, whatever the fleet's size. Refused and unreachable attempts cost the broker nothing
  and stay under ``cap``.

``docs/operations.md`` works out what this means for a fleet of 10,000 gateways.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def doubling(base: float, cap: float, failures: int) -> float:
    """``base`` doubled for each failure in a row, up to ``cap``: the ceiling of every retry
    schedule (reconnects here, polls of a device that stopped answering in the agent)."""
    return min(cap, base * 2.0 ** min(failures, 40))


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
        self._busy = 0  # costly failures in a row, since the last connection
        self._since: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (what the next ceiling grows from)."""
        return self._failures

    def connected(self) -> None:
        """A session started (the broker took us: it is not too busy); if it lasts
        ``healthy_after``, the next failure counts as the first."""
        self._since = self._clock()
        self._busy = 0

    def reset(self) -> None:
        self._failures = 0
        self._busy = 0
        self._since = None

    def ceiling(self, *, busy: bool = False) -> float:
        """The most the next delay can be (after one more busy failure, with ``busy``)."""
        low = doubling(self._base, self._cap, self._failures)
        if not busy:
            return low
        return min(self._busy_cap, max(low, self._cap * 2.0 ** min(self._busy + 3, 40)))

    def next_delay(self, *, busy: bool = False) -> float:
        """The wait before the next attempt, after a failed attempt or a session that ended."""
        if self._since is not None and self._clock() - self._since >= self._healthy_after:
            self._failures = 0
        self._since = None
        ceiling = self.ceiling(busy=busy)
        self._failures += 1
        if busy:
            self._busy += 1
        return self._rng.uniform(0.0, ceiling)
