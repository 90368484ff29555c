from __future__ import annotations

import random

from agent import SystemClock
from agent.sources import HostSource, SimulatedSource


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
