"""Clock correction: gateways that booted with a wrong wall clock.

Each batch says under which wall − monotonic offset its readings were taken (``clock``) and in
which boot. Each publish carries the gateway's monotonic and wall time at send (MQTT user
properties). The collector's clock is the reference: ``true offset = received − sent_mono``.
The first estimate for a (gateway, boot) is stored and reused, so a retransmitted batch gets
exactly the same correction (and the idempotent store sees the same timestamps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from collector.stores import DocumentStore
from wire import Batch, BoundedDict


@dataclass(frozen=True, slots=True)
class SendStamp:
    """What the gateway said about its clocks when it published."""

    boot_id: str
    mono_ns: int
    wall_ns: int


class ClockCorrector:
    def __init__(
        self, *, docs: DocumentStore, tolerance_ns: int, logger: logging.Logger | None = None
    ) -> None:
        self._docs = docs
        self._tolerance = tolerance_ns
        self._log = logger or logging.getLogger("outpost.collector.clock")
        # Boot ids come from gateways: a bounded cache (the store has them all).
        self._offsets: BoundedDict[tuple[str, str], int] = BoundedDict(100_000)
        self._flagged: BoundedDict[str, bool] = BoundedDict(100_000)

    def observe(self, gateway_id: str, stamp: SendStamp, received_ns: int) -> None:
        """Learn the boot's true offset and flag the gateway if its wall clock is off."""
        estimate = received_ns - stamp.mono_ns
        key = (gateway_id, stamp.boot_id)
        known = self._offset(gateway_id, stamp.boot_id)
        # Keep the first estimate (deterministic corrections); replace it only if the
        # monotonic clock has drifted from it by more than the tolerance.
        if known is None or abs(estimate - known) > self._tolerance:
            self._docs.set_boot_offset(gateway_id, stamp.boot_id, estimate)
            self._offsets[key] = estimate
        skew_ns = stamp.wall_ns - received_ns
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
        return delta if abs(delta) > self._tolerance else 0

    def _offset(self, gateway_id: str, boot_id: str) -> int | None:
        key = (gateway_id, boot_id)
        if key not in self._offsets:
            found = self._docs.boot_offset(gateway_id, boot_id)
            if found is None:
                return None
            self._offsets[key] = found
        return self._offsets[key]
