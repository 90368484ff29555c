"""Real sensors on the site's broker (Tasmota, Zigbee2MQTT, Shelly Gen2, ESPHome)."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import optional, rig

from outpost_iot.agent import SystemClock
from outpost_iot.agent.profiles import find_profile
from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget


async def test_sensor_family_publishes_readings() -> None:
    broker, profile = rig("OUTPOST_HW_MQTT_BROKER", "OUTPOST_HW_MQTT_PROFILE")
    listen = float(optional("OUTPOST_HW_MQTT_SECONDS", "60") or 60)
    got: list[str] = []
    source = MqttDeviceSource(
        name="site",
        profile=find_profile(profile),
        target=MqttTarget.parse(broker),
        clock=SystemClock(),
        username=optional("OUTPOST_HW_MQTT_USERNAME"),
        password=optional("OUTPOST_HW_MQTT_PASSWORD"),
    )
    task = asyncio.create_task(source.run(lambda rs, es: got.extend(r.measurement for r in rs)))
    await asyncio.sleep(listen)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert got, f"no readings from {profile} devices on {broker} in {listen:g} s"
