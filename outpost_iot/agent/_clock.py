"""Wall clock, monotonic clock and boot identity, injectable for tests.

Gateways often boot without a real-time clock and run with a wrong wall clock until NTP
synchronizes. Every reading is taken under a *clock epoch*: (boot id, wall − monotonic offset).
When the offset jumps (the clock was set), a new epoch starts. A batch holds readings of one
epoch only, so the collector can correct a whole batch with one delta.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
# A change of wall − monotonic beyond this is a clock step, not drift.
EPOCH_JUMP_NS = 1_000_000_000


class Clock(Protocol):
    """What the agent needs to know about time."""

    boot_id: str

    def wall_ns(self) -> int: ...

    def mono_ns(self) -> int:
        """Nanoseconds since boot, counting suspend; comparable only within one boot."""
        ...

    def synced(self) -> bool:
        """Best knowledge of whether the wall clock has been synchronized."""
        ...


def read_boot_id() -> str:
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        # Not Linux: one id per process is the safe approximation (no cross-process reuse).
        return str(uuid.uuid4())


class SystemClock:
    """The real clocks of the machine."""

    def __init__(self, *, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or read_boot_id()

    def wall_ns(self) -> int:
        return time.time_ns()

    def mono_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def synced(self) -> bool:
        return _TIMESYNC_FLAG.exists()


class SkewedClock(SystemClock):
    """The system clock shifted by ``skew_ns``: a gateway that booted with a wrong clock.

    Used by tests and by ``outpost-agent run --simulate-clock-skew`` to show the correction.
    """

    def __init__(self, *, skew_ns: int, boot_id: str | None = None) -> None:
        super().__init__(boot_id=boot_id)
        self.skew_ns = skew_ns

    def wall_ns(self) -> int:
        return time.time_ns() + self.skew_ns

    def synced(self) -> bool:
        return self.skew_ns == 0


@dataclass(frozen=True, slots=True)
class ClockEpoch:
    id: int
    boot_id: str
    offset_ns: int
    synced: bool
