"""Clock correction: gateways that booted with a wrong wall clock.

Each batch says under which wall − monotonic offset its readings were taken (``clock``) and in
which boot. Each publish carries the gateway's monotonic and wall time at send (MQTT user
properties). The collector's clock is the reference. One publish gives an *upper bound* on the
boot's true offset: ``received − sent_mono`` = true offset + the time the publish took to arrive,
and that time is never negative. So the lowest estimate is the best one (the filter NTP and
Cristian's algorithm use: the fastest exchange carries the least error).

Per (gateway, boot) the collector stores one offset and reuses it, so a retransmitted batch gets
exactly the same correction (and the idempotent store sees the same timestamps):

- the first estimate is stored;
- an estimate lower than the stored one by more than the tolerance replaces it (the stored one
  carried delivery time, or the gateway's monotonic clock runs slow against ours);
- estimates higher by more than the tolerance are delivery time (a loaded collector, a replica
  taking what its session held) until they have been so for ``DRIFT_WINDOW_NS`` of the gateway's
  monotonic time with no prompt publish among them: only then is it drift (a fast monotonic clock,
  our clock stepped), and the offset moves up to the lowest of them. Drift of a monotonic clock
  is some parts per million: seconds take hours, so the window costs nothing.

A batch marked ``synced`` (the gateway's time service says its clock is right) is trusted unless
it is provably wrong: readings stamped later than the collector received them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from outpost_iot.collector.stores import DocumentStore
from outpost_iot.wire import Batch, BoundedDict

DRIFT_WINDOW_NS = 300 * 10**9  # how long estimates must stay high before the offset moves up


@dataclass(frozen=True, slots=True)
class SendStamp:
    """What the gateway said about its clocks when it published."""

    boot_id: str
    mono_ns: int
    wall_ns: int


@dataclass(slots=True)
class _Rising:
    """Estimates above the stored offset: since when (gateway monotonic), and the lowest."""

    since_mono_ns: int
    lowest: int


class ClockCorrector:
    def __init__(
        self, *, docs: DocumentStore, tolerance_ns: int, logger: logging.Logger | None = None
    ) -> None:
        self._docs = docs
        self._tolerance = tolerance_ns
        self._log = logger or logging.getLogger("outpost.collector.clock")
        # Boot ids come from gateways: bounded caches (the store has the offsets).
        self._offsets: BoundedDict[tuple[str, str], int] = BoundedDict(100_000)
        self._rising: BoundedDict[tuple[str, str], _Rising] = BoundedDict(100_000)
        self._flagged: BoundedDict[str, bool] = BoundedDict(100_000)

    def observe(self, gateway_id: str, stamp: SendStamp, received_ns: int) -> None:
        """Learn the boot's true offset and flag the gateway if its wall clock is off."""
        estimate = received_ns - stamp.mono_ns
        key = (gateway_id, stamp.boot_id)
        known = self._offset(gateway_id, stamp.boot_id)
        if known is None or estimate < known - self._tolerance:
            self._store(key, estimate)
            known = estimate
        elif estimate > known + self._tolerance:
            rising = self._rising.get(key)
            if rising is None or stamp.mono_ns < rising.since_mono_ns:
                self._rising[key] = _Rising(stamp.mono_ns, estimate)
            else:
                rising.lowest = min(rising.lowest, estimate)
                if stamp.mono_ns - rising.since_mono_ns >= DRIFT_WINDOW_NS:
                    self._log.info(
                        "gateway %s: its monotonic clock drifted %.1f s from ours; following it",
                        gateway_id,
                        (rising.lowest - known) / 1e9,
                    )
                    known = rising.lowest
                    self._store(key, known)
        else:
            self._rising.pop(key, None)  # a prompt publish: the stored offset holds
        # The gateway's own offset at send against the best known one: delivery time left out.
        skew_ns = (stamp.wall_ns - stamp.mono_ns) - known
        flagged = abs(skew_ns) > self._tolerance
        previous = self._flagged.get(gateway_id)
        if previous != flagged:
            self._flagged[gateway_id] = flagged
            self._docs.set_clock(gateway_id, skew_ns / 1e9, flagged)
            if flagged:
                self._log.warning(
                    "gateway %s: wall clock is off by %.1f s; correcting its timestamps",
                    gateway_id,
                    skew_ns / 1e9,
                )
            elif previous:
                self._log.info("gateway %s: wall clock is in sync again", gateway_id)

    def delta_ns(self, gateway_id: str, batch: Batch) -> int:
        """Nanoseconds to add to every timestamp of ``batch`` (0 when its clock was right)."""
        true_offset = self._offset(gateway_id, batch.boot_id)
        if true_offset is None:
            return 0  # a boot we never heard from live: nothing better than its own clock
        delta = true_offset - batch.clock.offset_ns
        if batch.clock.synced and delta >= -self._tolerance:
            return 0  # a synchronized clock not ahead of ours: any lag is delivery time
        return delta if abs(delta) > self._tolerance else 0

    def _store(self, key: tuple[str, str], offset: int) -> None:
        self._docs.set_boot_offset(key[0], key[1], offset)
        self._offsets[key] = offset
        self._rising.pop(key, None)

    def _offset(self, gateway_id: str, boot_id: str) -> int | None:
        key = (gateway_id, boot_id)
        if key not in self._offsets:
            found = self._docs.boot_offset(gateway_id, boot_id)
            if found is None:
                return None
            self._offsets[key] = found
        return self._offsets[key]
