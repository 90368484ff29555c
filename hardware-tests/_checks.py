"""Checks shared by the hardware tests: one or two polls through the agent's own code."""

from __future__ import annotations

import asyncio
import math
import os

from outpost_iot.agent import SystemClock
from outpost_iot.agent._agent import make_device_client
from outpost_iot.agent._config import DeviceConfig
from outpost_iot.agent.profiles import Mapper, find_profile
from outpost_iot.agent.sources._base import Collection
from outpost_iot.agent.sources._polling import PolledDevice
from outpost_iot.wire import Reading


def device(**config: object) -> tuple[PolledDevice, DeviceConfig]:
    cfg = DeviceConfig.model_validate({"name": "rig", **config})
    profile = find_profile(cfg.profile)
    polled = PolledDevice(
        name=cfg.name,
        client=make_device_client(cfg, profile),
        mapper=Mapper(profile, variables=cfg.variables, device=cfg.name),
        interval=cfg.interval or profile.profile.interval,
        clock=SystemClock(),
        timeout=60,
    )
    return polled, cfg


async def two_polls(polled: PolledDevice, gap: float = 5.0) -> tuple[Collection, Collection]:
    gap = float(os.environ.get("OUTPOST_HW_RATE_GAP") or gap)
    try:
        first = await polled.collect_once()
        await asyncio.sleep(gap)
        second = await polled.collect_once()
    finally:
        await polled._client.aclose()
    return first, second


def check_sane(readings: list[Reading]) -> None:
    """Every rate is finite, not negative, and below 100 Gbit/s worth of anything."""
    for r in readings:
        for name, value in r.fields.items():
            if isinstance(value, float):
                assert math.isfinite(value), (r.measurement, name)
            if name.endswith(("_per_s", "_bps")):
                assert 0 <= float(value) < 1e11, (r.measurement, r.tags, name, value)
