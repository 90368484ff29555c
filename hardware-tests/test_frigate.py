"""A real Frigate NVR: /api/stats over HTTP, and its MQTT topics on the site broker."""

from __future__ import annotations

import asyncio
import contextlib

from _checks import device, two_polls
from conftest import optional, rig

from outpost_iot.agent import SystemClock
from outpost_iot.agent.profiles import find_profile
from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget


async def test_frigate_http_stats() -> None:
    (url,) = rig("OUTPOST_HW_FRIGATE_URL")  # http://nvr:5000
    polled, _ = device(profile="frigate", target=url)
    first, _ = await two_polls(polled, gap=1)
    assert "frigate_camera" in {r.measurement for r in first.readings}


async def test_frigate_mqtt_stats() -> None:
    (broker,) = rig("OUTPOST_HW_FRIGATE_MQTT")  # mqtt://broker:1883; stats come every 60 s
    got: list[str] = []
    source = MqttDeviceSource(
        name="frigate",
        profile=find_profile("frigate"),
        target=MqttTarget.parse(broker),
        clock=SystemClock(),
        username=optional("OUTPOST_HW_MQTT_USERNAME"),
        password=optional("OUTPOST_HW_MQTT_PASSWORD"),
    )
    task = asyncio.create_task(source.run(lambda rs, es: got.extend(r.measurement for r in rs)))
    await asyncio.sleep(75)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "frigate_camera" in got
