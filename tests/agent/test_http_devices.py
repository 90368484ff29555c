"""HTTP devices against simulators that answer like them; the polling discipline, measured."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator

import pytest

from outpost_iot.agent import SystemClock
from outpost_iot.agent.profiles import Mapper, find_profile
from outpost_iot.agent.sources._http import HttpDeviceClient
from outpost_iot.agent.sources._polling import PolledDevice
from outpost_iot.dev.simulators import DeviceSimulator, pfsense_routes
from outpost_iot.wire import Event, Reading

KEY = "sim-api-key-0123456789"


@pytest.fixture
def pfsense() -> Iterator[DeviceSimulator]:
    sim = DeviceSimulator(pfsense_routes(), api_key=KEY).start()
    yield sim
    sim.stop()


class Collected:
    def __init__(self) -> None:
        self.drops: dict[str, int] = {}
        self.readings: list[tuple[float, Reading]] = []
        self.events: list[Event] = []

    def __call__(self, readings: object, events: object, drops: object = None) -> None:
        for reason, n in dict(drops or {}).items():  # type: ignore[call-overload]
            self.drops[reason] = self.drops.get(reason, 0) + n
        now = asyncio.get_running_loop().time()
        self.readings += [(now, r) for r in readings]  # type: ignore[attr-defined]
        self.events += list(events)  # type: ignore[call-overload]


def device(name: str, url: str, *, interval: float, api_key: str = KEY) -> PolledDevice:
    profile = find_profile("pfsense-rest")
    return PolledDevice(
        name=name,
        client=HttpDeviceClient(profile=profile, base_url=url, api_key=api_key, timeout=5),
        mapper=Mapper(profile, device=name),
        interval=interval,
        clock=SystemClock(),
        timeout=0.5,
        max_backoff=1.0,
    )


async def run_for(seconds: float, *devices: PolledDevice) -> Collected:
    got = Collected()
    tasks = [asyncio.create_task(d.run(got)) for d in devices]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    for d in devices:
        await d._client.aclose()  # an unclosed client's connections warn later, in another test
    return got


async def test_pfsense_rest_readings_from_the_simulator(pfsense: DeviceSimulator) -> None:
    got = await run_for(1.5, device("fw-1", pfsense.url, interval=0.5))
    measurements = {r.measurement for _, r in got.readings}
    assert measurements == {
        "pfsense_system",
        "pfsense_gateway",
        "pfsense_states",
        "pfsense_interface",
    }
    system = next(r for _, r in got.readings if r.measurement == "pfsense_system")
    assert system.tags == {"device": "fw-1"}
    assert system.fields["cpu_count"] == 2
    states = next(r for _, r in got.readings if r.measurement == "pfsense_states")
    assert states.fields == {"current": 1234, "limit": 398000}  # maximumstates is null
    rates = [
        r for _, r in got.readings if r.measurement == "pfsense_interface" and "in_bps" in r.fields
    ]
    assert rates, "interface rates from the second poll on"
    assert rates[0].tags == {"device": "fw-1", "interface": "WAN", "port": "igc0"}
    assert not got.events
    assert not got.drops


async def test_an_endpoint_the_firewall_lacks_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An older REST package without status/interfaces: the rest is read, the miss counted."""
    routes = pfsense_routes()
    del routes["/api/v2/status/interfaces"]
    sim = DeviceSimulator(routes, api_key=KEY).start()
    try:
        fw = device("fw-old", sim.url, interval=0.3)
        with caplog.at_level(logging.WARNING, logger="outpost.agent.device.fw-old"):
            got = await run_for(1.2, fw)
    finally:
        sim.stop()
    measurements = {r.measurement for _, r in got.readings}
    assert measurements == {"pfsense_system", "pfsense_gateway", "pfsense_states"}
    polls = sum(1 for _, r in got.readings if r.measurement == "pfsense_system")
    assert got.drops == {"request_failed": polls}, "each poll counts the endpoint it missed"
    assert fw.failures == 0, "the firewall answered: it is not down"
    assert not [e for e in got.events if e.body.get("state") == "offline"]
    assert fw.partial_errors == [
        f"status/interfaces: bad_response: {sim.url}/api/v2/status/interfaces answered HTTP 404"
    ]
    warned = [r.getMessage() for r in caplog.records if "request(s) failed" in r.getMessage()]
    assert len(warned) == 1, "once per five minutes, not every poll"
    assert "status/interfaces" in warned[0]


async def test_a_device_whose_endpoints_all_fail_is_down() -> None:
    routes = pfsense_routes()
    for path in list(routes):
        del routes[path]
    sim = DeviceSimulator(routes, api_key=KEY).start()
    try:
        fw = device("fw-empty", sim.url, interval=0.3)
        got = await run_for(0.8, fw)
    finally:
        sim.stop()
    assert not got.readings
    assert fw.failures >= 1
    assert fw.last_error is not None
    assert fw.last_error.startswith("bad_response:")
    assert [e.body["state"] for e in got.events] == ["offline"]


async def test_wrong_api_key_is_reported_in_device_terms(
    pfsense: DeviceSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        got = await run_for(
            1.0, device("fw-1", pfsense.url, interval=0.5, api_key="wrong-key-value")
        )
    assert not got.readings
    assert [e.body["state"] for e in got.events] == ["offline"]
    assert "refused the credentials (HTTP 401)" in caplog.text
    assert "wrong-key-value" not in caplog.text


async def test_a_dead_device_does_not_stall_the_others(pfsense: DeviceSimulator) -> None:
    dead = DeviceSimulator(pfsense_routes(), api_key=KEY).start()
    dead.hanging.set()  # accepts connections, never answers
    try:
        healthy, stuck = (
            device("fw-1", pfsense.url, interval=0.5),
            device("fw-dead", dead.url, interval=0.5),
        )
        polling = asyncio.gather(run_for(4.0, healthy, stuck))
        await asyncio.sleep(2.5)
        dead.hanging.clear()  # it comes back
        got = (await polling)[0]
    finally:
        dead.stop()
    times = sorted({t for t, r in got.readings if r.tags["device"] == "fw-1"})
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 6
    # The healthy firewall kept its interval (0.5 s + up to 10 % jitter) while the other hung.
    assert max(gaps) < 0.8, gaps
    dead_events = [e.body["state"] for e in got.events if e.source == "fw-dead"]
    assert dead_events == ["offline", "online"]
    assert any(r.tags["device"] == "fw-dead" for _, r in got.readings), "it is read again once back"


def _probe(url: str, *extra: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from outpost_iot.agent.cli import main as agent_cli

    args = ["probe", "--profile", "pfsense-rest", "--target", url, "--api-key", KEY, *extra]
    r = CliRunner().invoke(agent_cli, args)
    return r.exit_code, r.stdout, r.stderr


def test_probe_lists_what_a_new_firmware_added_and_why_nothing_mapped() -> None:
    """The technician's question after a firmware update: what does it send that we do not read?"""
    routes = pfsense_routes()
    system = routes["/api/v2/status/system"]

    def newer() -> object:
        body = system()
        body["data"]["kernel_pps"] = 41250  # a value no rule reads
        return body

    routes["/api/v2/status/system"] = newer
    sim = DeviceSimulator(routes, api_key=KEY).start()
    try:
        code, out, err = _probe(sim.url, "--unmapped")
        assert code == 0, err
        assert '"cpu_pct"' in out
        assert "values no rule read" in err
        assert "status/system  .data.kernel_pps = 41250" in err
        assert ".data.cpu_usage" not in err, "a value the profile reads is not listed"
        assert ".data[*].srcip = '198.51.100.7'" in err, "list items shown once, as [*]"
        code, out, err = _probe(sim.url)
        assert "kernel_pps" not in err, "only with --unmapped"
    finally:
        sim.stop()
    # Right address, wrong firmware: every endpoint answers, nothing maps. The probe says which
    # endpoint answered what, not "the device does not answer".
    routes = pfsense_routes()
    for path in routes:
        routes[path] = lambda: {"code": 200, "status": "ok", "data": {"version": "9.9"}}
    sim = DeviceSimulator(routes, api_key=KEY).start()
    try:
        code, out, err = _probe(sim.url)
    finally:
        sim.stop()
    assert code == 0, err
    assert out == ""
    assert "nothing mapped: is this the right profile" in err
    assert "status/system: pfsense_system: none of its fields (cpu_pct," in err
    assert "event gateway_status: .substatus and .status missing" in err
    assert "rates" not in err, "no note about rates when nothing mapped at all"


async def test_polls_a_slow_buffer_made_impossible_are_skipped_and_counted(
    pfsense: DeviceSimulator,
) -> None:
    """A buffer that takes 0.35 s to commit a poll of a device polled every 0.1 s: the device
    is not polled faster than the buffer takes it, and the polls that did not happen are
    counted (poll_skipped), not made up in a burst."""
    got = Collected()

    def slow_buffer(readings: object, events: object, drops: object = None) -> None:
        if readings:
            time.sleep(0.35)  # blocks the event loop, as a commit on a slow card does
        got(readings, events, drops)

    d = device("fw-slow", pfsense.url, interval=0.1)
    task = asyncio.create_task(d.run(slow_buffer))
    await asyncio.sleep(2.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await d._client.aclose()
    assert d.polls <= 10  # at most one poll per commit, never ten a second
    assert got.drops.get("poll_skipped", 0) >= 2 * d.polls  # three of every four intervals
    assert d.skipped == got.drops["poll_skipped"]
