from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time

from outpost_iot.agent import Agent, Outbox, SystemClock
from outpost_iot.agent.sources import Collection, HostSource, SimulatedSource
from outpost_iot.wire import Reading


def test_host_source_reports_the_basics() -> None:
    src = HostSource(name="host", interval=10, clock=SystemClock())
    out = src.collect().readings
    by_measurement = {r.measurement: r for r in out}
    assert {"cpu", "mem", "net", "system"} <= set(by_measurement)
    assert 0 <= by_measurement["cpu"].fields["usage_pct"] <= 100
    assert by_measurement["mem"].fields["total_bytes"] > 0
    assert by_measurement["system"].fields["uptime_s"] > 0
    assert all(r.tags["source"] == "host" for r in out)
    assert any(r.measurement == "net" and r.tags["interface"] == "lo" for r in out)
    assert all(r.tags["host"] for r in out)
    second = {r.tags["interface"]: r for r in src.collect().readings if r.measurement == "net"}
    assert second["lo"].fields["rx_bps"] >= 0  # rates from the second snapshot on


def test_simulated_source_produces_per_device_readings_and_events() -> None:
    src = SimulatedSource(
        name="sim", interval=1, devices=3, clock=SystemClock(), events_every=2, rng=random.Random(1)
    )
    first, second = src.collect(), src.collect()
    assert len(first.readings) == 6
    assert not first.events
    assert {r.tags["device"] for r in first.readings} == {"sim-1", "sim-2", "sim-3"}
    assert len(second.events) == 1
    assert second.events[0].type == "motion"
    temps = [r.fields["temperature_c"] for r in first.readings if r.measurement == "environment"]
    assert all(15 < t < 27 for t in temps)  # type: ignore[operator]


async def test_a_late_collection_is_not_followed_by_one_a_moment_later(
    agent_and_outbox: tuple[Agent, Outbox],
) -> None:
    """A poll that came late (a slow device, a busy machine) is followed by the next no sooner
    than half an interval after it, not on the old schedule a moment later: two readings of a
    series a moment apart say nothing more, and VictoriaMetrics keeps only one per millisecond."""
    stamps: list[float] = []

    class LateOnce:
        name, interval = "late-once", 0.4

        def collect(self) -> Collection:
            if not stamps:
                time.sleep(0.3)  # the first answer comes late
            stamps.append(time.monotonic())
            return Collection(
                readings=[Reading(measurement="m", tags={}, fields={"n": len(stamps)}, ts=1)]
            )

    agent, ob = agent_and_outbox
    task = asyncio.create_task(agent._poll(LateOnce()))
    try:
        deadline = time.monotonic() + 60
        while len(stamps) < 4:
            assert time.monotonic() < deadline, f"only {len(stamps)} collections"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ob.stats().pending_readings >= 4
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.2, gaps  # sleeps only ever run late: a busy machine widens gaps
