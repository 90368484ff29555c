"""Simulated sensors for the demo: temperature, humidity and power that drift like real ones."""

from __future__ import annotations

import math
import random
import uuid

from outpost_iot.agent._clock import Clock
from outpost_iot.agent._collection import Collection
from outpost_iot.wire import Event, Reading


class SimulatedSource:
    """``devices`` simulated sensors; optionally an event every ``events_every`` polls."""

    def __init__(
        self,
        *,
        name: str,
        interval: float,
        devices: int,
        clock: Clock,
        events_every: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self._devices = [f"{name}-{i + 1}" for i in range(devices)]
        self._clock = clock
        self._events_every = events_every
        self._rng = rng or random.Random()
        self._polls = 0

    def collect(self) -> Collection:
        ts = self._clock.wall_ns()
        phase = ts / 1e9 / 600 * 2 * math.pi  # one cycle every 10 minutes
        out = Collection()
        for i, device in enumerate(self._devices):
            tags = {"source": self.name, "device": device}
            noise = self._rng.gauss
            out.readings.append(
                Reading(
                    measurement="environment",
                    tags=tags,
                    fields={
                        "temperature_c": round(21.0 + 3 * math.sin(phase + i) + noise(0, 0.1), 2),
                        "humidity_pct": round(50 + 10 * math.cos(phase + i) + noise(0, 0.5), 1),
                        "battery_pct": max(0, 100 - (self._polls // 100) % 100),
                    },
                    ts=ts,
                )
            )
            out.readings.append(
                Reading(
                    measurement="power",
                    tags=tags,
                    fields={
                        "power_w": round(
                            max(0.0, 40 + 25 * math.sin(phase * 3 + i) + noise(0, 2)), 1
                        ),
                        "on": True,
                    },
                    ts=ts,
                )
            )
        self._polls += 1
        if self._events_every and self._polls % self._events_every == 0:
            device = self._rng.choice(self._devices)
            out.events.append(
                Event(
                    id=uuid.uuid4().hex,
                    type="motion",
                    ts=ts,
                    source=device,
                    body={"device": device, "zone": "entrance", "score": 0.9},
                )
            )
        return out
