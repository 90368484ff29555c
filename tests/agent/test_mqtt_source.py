"""MQTT device families against a real local Mosquitto (plain, as on a site)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from outpost_iot.agent import SystemClock
from outpost_iot.agent.cli import main as agent_cli
from outpost_iot.agent.profiles import find_profile
from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget
from outpost_iot.dev._processes import LocalBroker, find_mosquitto, free_port
from outpost_iot.wire import Event, Reading
from tests._wait import until
from tests.conftest import require_service

pytestmark = [pytest.mark.broker]


def publish(port: int, messages: list[tuple[str, str]], *, retain: bool = False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


class Collected:
    def __init__(self) -> None:
        self.drops: dict[str, int] = {}
        self.readings: list[Reading] = []
        self.events: list[Event] = []

    def __call__(self, readings: object, events: object, drops: object = None) -> None:
        for reason, n in dict(drops or {}).items():  # type: ignore[call-overload]
            self.drops[reason] = self.drops.get(reason, 0) + n
        self.readings += list(readings)  # type: ignore[call-overload]
        self.events += list(events)  # type: ignore[call-overload]

    def __str__(self) -> str:
        fields = [dict(r.fields) for r in self.readings[-5:]]
        bodies = [(e.source, e.body) for e in self.events[-5:]]
        return (
            f"{len(self.readings)} readings (last {fields}), {len(self.events)} events"
            f" (last {bodies}), drops {self.drops}"
        )


@contextlib.asynccontextmanager
async def listening(
    broker: LocalBroker, profile: str, submit: object
) -> AsyncIterator[MqttDeviceSource]:
    """A source of ``profile`` on ``broker``, running and subscribed, stopped afterwards."""
    src = MqttDeviceSource(
        name=profile,
        profile=find_profile(profile),
        target=MqttTarget("127.0.0.1", broker.port),
        clock=SystemClock(),
    )
    task = asyncio.create_task(src.run(submit))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(src.connected.wait(), 10)
        yield src
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_tasmota_devices_on_the_site_broker_become_readings(site_broker: LocalBroker) -> None:
    got = Collected()
    src = MqttDeviceSource(
        name="site",
        profile=find_profile("tasmota"),
        target=MqttTarget("127.0.0.1", site_broker.port),
        clock=SystemClock(),
    )
    task = asyncio.create_task(src.run(got))
    try:
        await asyncio.wait_for(src.connected.wait(), 10)
        await asyncio.to_thread(
            publish,
            site_broker.port,
            [
                (
                    "tele/kitchen/SENSOR",
                    '{"Time":"x","AM2301":{"Temperature":24.6,"Humidity":58.2},"TempUnit":"C"}',
                ),
                ("tele/hall/SENSOR", '{"Time":"x","DS18B20":{"Id":"01","Temperature":19.5}}'),
                ("stat/kitchen/RESULT", '{"POWER":"ON"}'),  # not subscribed to
                ("tele/kitchen/LWT", "Offline"),
            ],
        )
        await until(lambda: len(got.readings) == 2 and len(got.events) == 1, seen=got.__str__)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    by_device = {r.tags["device"]: r for r in got.readings}
    assert by_device["kitchen"].fields == {"temperature_c": 24.6, "humidity_pct": 58.2}
    assert by_device["hall"].tags["sensor"] == "DS18B20"
    assert by_device["hall"].fields == {"temperature_c": 19.5}
    assert got.events[0].body["state"] == "offline"
    assert got.events[0].source == "kitchen"


async def test_the_source_survives_its_local_broker_restarting(site_broker: LocalBroker) -> None:
    got = Collected()
    src = MqttDeviceSource(
        name="site",
        profile=find_profile("esphome"),
        target=MqttTarget("127.0.0.1", site_broker.port),
        clock=SystemClock(),
    )
    task = asyncio.create_task(src.run(got))
    try:
        await asyncio.wait_for(src.connected.wait(), 10)
        await asyncio.to_thread(publish, site_broker.port, [("node1/sensor/temp/state", "20.5")])
        await until(lambda: len(got.readings) == 1, seen=got.__str__)
        site_broker.stop()
        await until(
            lambda: any(e.body["state"] == "offline" and e.source == "site" for e in got.events),
            seen=got.__str__,
        )
        site_broker.start()
        await until(lambda: src.connected.is_set(), within=30)
        await asyncio.to_thread(publish, site_broker.port, [("node1/sensor/temp/state", "21.0")])
        await until(lambda: len(got.readings) == 2, seen=got.__str__)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [r.fields["value"] for r in got.readings] == [20.5, 21.0]
    states = [e.body["state"] for e in got.events if e.source == "site"]
    assert states == ["offline", "online"]


def test_probe_prints_json_lines_and_a_summary(site_broker: LocalBroker) -> None:
    def device() -> None:
        time.sleep(1.0)
        publish(
            site_broker.port,
            [
                ("zigbee2mqtt/hall-climate", '{"temperature":21.3,"humidity":45.1,"battery":97}'),
                ("zigbee2mqtt/front-door/availability", "offline"),
            ],
        )

    t = threading.Thread(target=device)
    t.start()
    result = CliRunner().invoke(
        agent_cli,
        [
            "probe",
            "--profile",
            "zigbee2mqtt",
            "--target",
            f"mqtt://127.0.0.1:{site_broker.port}",
            "--duration",
            "3",
        ],
    )
    t.join()
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {
        "measurement": "sensor",
        "tags": {"device": "hall-climate"},
        "fields": {"temperature_c": 21.3, "humidity_pct": 45.1, "battery_pct": 97},
        "ts": lines[0]["ts"],
    }
    assert lines[1]["type"] == "availability"
    assert "1 readings and 1 events from 1 device(s)" in result.stderr


def _probe_while(port: int, messages: list[tuple[str, str]], *extra: str) -> tuple[str, str]:
    """Probe zigbee2mqtt on the site broker while a device publishes ``messages``."""

    def device() -> None:
        time.sleep(1.0)
        publish(port, messages)

    t = threading.Thread(target=device)
    t.start()
    target = f"mqtt://127.0.0.1:{port}"
    args = ["probe", "--profile", "zigbee2mqtt", "--target", target, "--duration", "3", *extra]
    result = CliRunner().invoke(agent_cli, args)
    t.join()
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_probe_says_why_a_topic_gave_nothing(site_broker: LocalBroker) -> None:
    """Messages arrive, nothing maps: the probe names each topic and the reason, instead of
    blaming the device for not publishing."""
    out, err = _probe_while(
        site_broker.port,
        [
            ("zigbee2mqtt/bridge/logging", '{"level":"info","message":"MQTT publish"}'),
            ("zigbee2mqtt/garden/pump", '{"update":{"state":"idle"}}'),
        ],
    )
    assert out == ""
    assert "2 message(s) on 2 topic(s), but nothing mapped" in err
    assert "zigbee2mqtt/bridge/logging: 'bridge/logging' is not a device" in err
    assert "zigbee2mqtt/garden/pump: sensor: none of its fields (on) has a value" in err
    assert "no messages on" not in err


def test_probe_unmapped_lists_values_no_rule_read(site_broker: LocalBroker) -> None:
    out, err = _probe_while(
        site_broker.port,
        [
            (
                "zigbee2mqtt/kitchen/floor_light",
                '{"state":"ON","brightness":120,"color":{"x":0.31,"y":0.33},"color_mode":"xy"}',
            ),
        ],
        "--unmapped",
    )
    light = json.loads(out.splitlines()[0])
    assert light["tags"] == {"device": "kitchen/floor_light"}
    assert light["fields"] == {"on": True, "brightness": 120}
    assert "values no rule read" in err
    assert "zigbee2mqtt/kitchen/floor_light  .color.x = 0.31" in err
    assert "zigbee2mqtt/kitchen/floor_light  .color_mode = 'xy'" in err
    assert ".brightness" not in err


def test_probe_errors_are_in_device_terms(tmp_path: Path) -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    closed = free_port()
    r = CliRunner().invoke(
        agent_cli,
        [
            "probe",
            "--profile",
            "tasmota",
            "--target",
            f"mqtt://127.0.0.1:{closed}",
            "--duration",
            "1",
        ],
    )
    assert r.exit_code == 1
    assert "connection refused; check the address" in r.output
    protected = LocalBroker(tmp_path / "protected", users={"agent": "right-password"})
    protected.start()
    try:
        r = CliRunner().invoke(
            agent_cli,
            [
                "probe",
                "--profile",
                "tasmota",
                "--target",
                f"mqtt://127.0.0.1:{protected.port}",
                "--username",
                "agent",
                "--password",
                "wrong-password",
                "--duration",
                "1",
            ],
        )
        assert r.exit_code == 1
        assert "refused the credentials" in r.output
        assert "wrong-password" not in r.output
    finally:
        protected.stop()
    r = CliRunner().invoke(agent_cli, ["probe", "--profile", "no-such", "--target", "mqtt://x"])
    assert r.exit_code == 2
    assert "known profiles:" in r.output
    r = CliRunner().invoke(agent_cli, ["probe", "--profile", "tasmota", "--target", "https://x"])
    assert r.exit_code == 2
    assert "mqtt://host[:port]" in r.output


async def test_a_password_never_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    protected = LocalBroker(tmp_path / "protected", users={"agent": "right-password"})
    protected.start()
    got = Collected()
    src = MqttDeviceSource(
        name="site",
        profile=find_profile("tasmota"),
        target=MqttTarget("127.0.0.1", protected.port),
        clock=SystemClock(),
        username="agent",
        password="s3cret-wrong",
    )
    try:
        with caplog.at_level(logging.DEBUG):
            task = asyncio.create_task(src.run(got))
            await until(lambda: got.events, within=10, seen=got.__str__)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        protected.stop()
    assert got.events[0].body["state"] == "offline"
    assert "s3cret-wrong" not in caplog.text


async def test_a_burst_reaches_the_buffer_in_bounded_groups_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """5,000 Zigbee2MQTT messages at once, to a buffer that is slow to commit: no hand-over
    holds more than FLUSH_AT readings, the client stops reading while the buffer is busy, and
    every message becomes a reading. The site broker holds the whole burst for the agent, as
    docs/agent.md ("Bursts") tells a busy site to set it: with Mosquitto's default of 1,000 a
    busy machine's broker drops what the agent has not yet read, which is the broker's limit."""
    from outpost_iot.agent.sources._mqtt import FLUSH_AT

    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    site_broker = LocalBroker(tmp_path / "site-broker", max_queued_messages=10_000)
    site_broker.start()
    sizes: list[int] = []
    got = Collected()

    def slow_buffer(readings: object, events: object, drops: object = None) -> None:
        sizes.append(len(readings) + len(events))  # type: ignore[arg-type]
        time.sleep(0.02)  # a commit on an SD card
        got(readings, events, drops)

    try:
        async with listening(site_broker, "zigbee2mqtt", slow_buffer):
            burst = [
                (f"zigbee2mqtt/sensor {i % 50}", json.dumps({"temperature": i / 10}))
                for i in range(5000)
            ]
            await asyncio.to_thread(publish, site_broker.port, burst)
            await until(
                lambda: len(got.readings) == 5000,
                within=180,  # generous: 5,000 round trips and 20 slow commits on a busy machine
                seen=lambda: f"{len(got.readings)} of 5,000 readings, drops {got.drops}",
            )
    finally:
        site_broker.stop()
    assert max(sizes) <= FLUSH_AT
    assert sorted(r.fields["temperature_c"] for r in got.readings) == sorted(
        i / 10 for i in range(5000)
    )
