"""Devices on the site network against the agent: whatever a device or a local-broker client
publishes, the mapper neither raises nor produces what the collector would refuse.

For every profile, the golden testcases' real payloads are taken as seeds and mutated by
hypothesis: values replaced by integers past int64, non-finite and huge numbers, long strings,
deep nesting; keys and topic levels made long or strange. Every outcome must be readings and
events that the buffer stores and the collector decodes, plus drops counted by reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.agent import Outbox
from outpost_iot.agent.profiles import Mapper, decode_mqtt_payload, load_profile, profiles_dir
from outpost_iot.agent.sources._mqtt import MAX_PAYLOAD_BYTES, MqttDeviceSource, MqttTarget
from outpost_iot.agent.sources._polling import MAX_RESPONSE_BYTES, DeviceError
from outpost_iot.dev._processes import LocalBroker
from tests._fuzz import budget
from tests.agent.test_buffer import FakeClock

FOLDERS = sorted(p for p in profiles_dir().iterdir() if p.is_dir())
NOW = 1_700_000_000 * 10**9

hostile_leaf = st.one_of(
    st.sampled_from(
        [2**63, 2**64 - 1, -(2**63) - 1, 10**30, 1e308, -1e308, "1e400", "inf", "nan", "-0", ""]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.text(min_size=1000, max_size=1100),
    st.sampled_from([{"a": {"b": {"c": {"d": [1, [2, [3]]]}}}}, [[[[[]]]]], {}]),
)


def seeds(folder: Path) -> list[tuple[str, Any]]:
    out = []
    for case in sorted((folder / "testcases").glob("*.json")):
        spec = json.loads(case.read_text())
        out += [(item["key"], item["payload"]) for item in spec["inputs"]]
    return out


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))
    yield path


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(value[head], tuple(rest), new)
    return copy


def renamed(value: Any, path: tuple[Any, ...], name: str) -> Any:
    """The member at ``path`` under a new (long, strange) key."""
    if len(path) == 1 and isinstance(value, dict) and path[0] in value:
        copy = {k: v for k, v in value.items() if k != path[0]}
        copy[name] = value[path[0]]
        return copy
    if not path or not isinstance(value, dict | list):
        return value
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = renamed(value[head], tuple(rest), name)
    return copy


@st.composite
def mutated(draw: st.DrawFn, folder: Path) -> tuple[str, Any]:
    key, payload = draw(st.sampled_from(seeds(folder)))
    if isinstance(payload, str) and payload.lstrip().startswith(("{", "[")):
        payload = json.loads(payload)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(leaves(payload))
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()) or not path:
            payload = replaced(payload, path, draw(hostile_leaf))
        else:
            payload = renamed(payload, path, draw(st.text(min_size=200, max_size=400)))
    levels = key.split("/")
    if draw(st.booleans()) and len(levels) > 1:  # a device name (a topic level) gone wild
        i = draw(st.integers(min_value=0, max_value=len(levels) - 1))
        levels[i] = draw(
            st.one_of(st.text(min_size=1, max_size=5), st.text(min_size=1100, max_size=1200))
        )
    return "/".join(levels), payload


def check(folder: Path, tmp: Path, key: str, payload: Any) -> None:
    profile = load_profile(folder)
    mapper = Mapper(profile, variables={"prefix": "dev"}, device="dev-1")
    if isinstance(payload, dict | list) and "mqtt" in profile.profile.transports:
        payload = decode_mqtt_payload(profile, json.dumps(payload))  # as it arrives: bytes
    out = mapper.apply(key, payload, NOW)  # never raises
    assert all(n > 0 for n in out.drops.values())
    # What the mapper gives, the buffer stores and the collector accepts.
    with Outbox(path=tmp / "b.db", gateway_id="gw-1", clock=FakeClock(), max_bytes=64 << 20) as ob:
        ob.append(out.readings, out.events, drops=out.drops)
        batch = ob.form_batch()
        if batch is not None:
            decoded = wire.decode_batch(batch.payload)
            assert decoded.reading_count == len(out.readings)
            assert len(decoded.events) == len(out.events)
        assert sum(ob.stats().drops.values()) == sum(out.drops.values())
    (tmp / "b.db").unlink()


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
@settings(
    max_examples=budget(60),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_no_device_payload_breaks_the_mapper_or_the_batch(
    folder: Path, tmp_path: Path, data: st.DataObject
) -> None:
    check(folder, tmp_path, *data.draw(mutated(folder)))


def test_an_integer_past_int64_becomes_a_float_and_a_long_tag_drops_the_reading() -> None:
    profile = load_profile(profiles_dir() / "tasmota")
    mapper = Mapper(profile, variables={"prefix": "tele"})
    energy = {"COUNTER": {"C1": 2**64 - 1}, "Time": "2024-01-01T00:00:00"}
    out = mapper.apply("tele/plug-1/SENSOR", energy, NOW)
    totals = [r.fields["c1"] for r in out.readings if "c1" in r.fields]
    assert totals == [float(2**64 - 1)], "a counter near 2^64 is kept as a float, not dropped"
    long_name = "p" * 2000
    out = mapper.apply(f"tele/{long_name}/SENSOR", energy, NOW)
    assert out.readings == []
    assert out.drops["invalid_reading"] >= 1


def test_a_deep_event_body_is_dropped_and_counted() -> None:
    profile = load_profile(profiles_dir() / "frigate")
    mapper = Mapper(profile, variables={"prefix": "frigate"})
    deep: Any = "x"
    for _ in range(300):
        deep = {"d": deep}
    after = {"id": "1", "camera": "c", "label": "person", "current_zones": deep}  # copied
    out = mapper.apply("frigate/events", {"type": "new", "before": {}, "after": after}, NOW)
    assert out.events == []
    assert out.drops["invalid_event"] == 1
    shallow = {**after, "current_zones": ["door"]}
    out = mapper.apply("frigate/events", {"type": "new", "before": {}, "after": shallow}, NOW)
    assert [e.body["current_zones"] for e in out.events] == [["door"]]


@pytest.mark.broker
async def test_retained_poison_on_the_site_broker_does_not_stop_the_agent(
    site_broker: LocalBroker,
) -> None:
    """Sent retained, a poisoned message is delivered at every start: each time it is counted,
    and the good messages around it still become readings."""
    import paho.mqtt.publish as publish

    deep: Any = 1
    for _ in range(300):
        deep = {"d": deep}
    poison = [
        ("zigbee2mqtt/" + "x" * 5000, json.dumps({"temperature": 21.5}), True),
        ("zigbee2mqtt/sensor-1", json.dumps({"temperature": 2**64, "k" * 2000: 1}), True),
        ("zigbee2mqtt/sensor-2", json.dumps({"action": deep}), True),
        ("zigbee2mqtt/sensor-3", "x" * (MAX_PAYLOAD_BYTES + 1), True),
        ("zigbee2mqtt/good", json.dumps({"temperature": 20.0}), True),
    ]
    publish.multiple(
        [{"topic": t, "payload": p, "qos": 1, "retain": r} for t, p, r in poison],
        hostname="127.0.0.1",
        port=site_broker.port,
    )
    for _start in range(2):  # at every start the same retained messages come again
        got, drops = await listen_until_good(site_broker.port, len(poison))
        assert drops.get("message_too_large", 0) >= 1
        assert sum(drops.values()) >= 2, drops
        assert [r.fields for r in got if r.tags.get("device") == "good"] == [
            {"temperature_c": 20.0}
        ]


async def listen_until_good(port: int, messages: int) -> tuple[list[wire.Reading], dict[str, int]]:
    """Run a Zigbee2MQTT source until it has seen every message and the good reading."""
    got: list[wire.Reading] = []
    drops: dict[str, int] = {}

    def submit(readings: Any, events: Any, dropped: Any) -> None:
        got.extend(readings)
        for k, v in dict(dropped).items():
            drops[k] = drops.get(k, 0) + v

    source = MqttDeviceSource(
        name="z2m",
        profile=load_profile(profiles_dir() / "zigbee2mqtt"),
        target=MqttTarget.parse(f"mqtt://127.0.0.1:{port}"),
        clock=FakeClock(),  # type: ignore[arg-type]
    )
    task = asyncio.create_task(source.run(submit))
    try:
        async with asyncio.timeout(20):
            while source.messages < messages or not any(  # noqa: ASYNC110
                r.tags.get("device") == "good" for r in got
            ):
                await asyncio.sleep(0.05)
            while not drops:  # noqa: ASYNC110 - the flush comes a quarter second later
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return got, drops


async def test_a_device_answer_past_the_limit_is_refused_not_read(tmp_path: Path) -> None:
    import http.server
    import threading

    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no Content-Length: streamed until the client stops reading
            chunk = b" " * 65536
            try:
                for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 10):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from outpost_iot.agent.sources._http import HttpDeviceClient

    client = HttpDeviceClient(
        profile=load_profile(profiles_dir() / "frigate"),
        base_url=f"http://127.0.0.1:{server.server_address[1]}",
        timeout=20,
    )
    try:
        with pytest.raises(DeviceError, match="answered more than") as caught:
            await client.fetch()
        assert caught.value.kind == "bad_response"
    finally:
        await client.aclose()
        server.shutdown()
        server.server_close()
