"""UniFi Network against a simulator that answers like a classic controller and a UniFi OS console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from outpost_iot.agent import SystemClock
from outpost_iot.agent.cli import main as agent_cli
from outpost_iot.agent.profiles import Mapper, find_profile
from outpost_iot.agent.sources._polling import DeviceError, PolledDevice
from outpost_iot.agent.sources._unifi import UnifiClient
from outpost_iot.dev.simulators import UnifiSimulator
from outpost_iot.wire import Event, Reading

PROFILE = find_profile("unifi-network")
API_KEY = "unifi-integration-key-0123"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[UnifiSimulator]:
    sim = UnifiSimulator(mode="os", api_key=API_KEY, tls_dir=tmp_path / "tls").start()
    yield sim
    sim.stop()


@pytest.fixture
def controller() -> Iterator[UnifiSimulator]:
    sim = UnifiSimulator(mode="classic").start()
    yield sim
    sim.stop()


def client(sim: UnifiSimulator, **changes: object) -> UnifiClient:
    options: dict[str, object] = {
        "profile": PROFILE,
        "base_url": sim.url,
        "username": sim.username,
        "password": sim.password,
        "insecure": True,
        "timeout": 2.0,
        **changes,
    }
    return UnifiClient(**options)  # type: ignore[arg-type]


def device(c: UnifiClient, interval: float = 0.3) -> PolledDevice:
    return PolledDevice(
        name="unifi",
        client=c,
        mapper=Mapper(PROFILE, device="unifi"),
        interval=interval,
        clock=SystemClock(),
        timeout=3.0,
        max_backoff=1.0,
    )


class Collected:
    def __init__(self) -> None:
        self.polls: list[list[Reading]] = []
        self.events: list[Event] = []

    def __call__(self, readings: object, events: object, drops: object = None) -> None:
        batch = list(readings)  # type: ignore[call-overload]
        if batch:
            self.polls.append(batch)
        self.events += list(events)  # type: ignore[call-overload]


async def run_while(d: PolledDevice, got: Collected, action: object = None) -> None:
    task = asyncio.create_task(d.run(got))
    try:
        if callable(action):
            await action()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_classic_controller_login_and_readings(controller: UnifiSimulator) -> None:
    c = client(controller, insecure=False)
    d = device(c)
    try:
        first = await d.collect_once()
        await asyncio.sleep(0.5)
        second = await d.collect_once()
    finally:
        await c.aclose()
    assert c.mode == "classic"
    assert controller.logins == 1  # one session for both polls
    names = {r.tags["name"] for r in first.readings if r.measurement == "unifi_device"}
    assert names == {"gw-main", "sw-core", "ap-lobby"}
    gw = next(r for r in second.readings if r.tags.get("name") == "gw-main")
    assert gw.tags["type"] == "udm"
    assert gw.fields["connected"] is True
    assert gw.fields["uplink_speed_mbps"] == 1000
    assert 0 < gw.fields["tx_bps"] < 1e9  # a rate from two polls of the byte counter
    health = {r.tags["subsystem"]: r for r in first.readings if r.measurement == "unifi_health"}
    assert health["www"].fields["latency_ms"] == 12
    assert health["wlan"].fields["ok"] is True


async def test_unifi_os_login_keeps_the_csrf_token(console: UnifiSimulator) -> None:
    c = client(console)
    try:
        out = await device(c).collect_once()
    finally:
        await c.aclose()
    assert c.mode == "os"
    assert {r.measurement for r in out.readings} == {"unifi_device", "unifi_health"}


@pytest.mark.parametrize("mode", ["os", "classic"])
async def test_session_expiry_is_survived_without_losing_a_poll(mode: str, tmp_path: Path) -> None:
    console = UnifiSimulator(mode=mode, tls_dir=tmp_path / "tls").start()
    try:
        await _survives_expiry(console)
    finally:
        console.stop()


async def _survives_expiry(console: UnifiSimulator) -> None:
    c = client(console)
    d = device(c, interval=0.3)
    got = Collected()

    async def polls(n: int) -> None:
        deadline = time.monotonic() + 60  # generous: a busy machine polls late, never less
        while len(got.polls) < n:
            assert time.monotonic() < deadline, (
                f"waited for {n} polls with readings; saw {len(got.polls)}, {d.failures} failed"
                f" polls, {console.logins} logins, events {[e.body for e in got.events]}"
            )
            await asyncio.sleep(0.05)

    async def expire_twice() -> None:
        await polls(3)
        console.expire_sessions()  # e.g. the console restarted or the session lifetime ended
        await polls(6)
        console.expire_sessions()
        await polls(9)

    try:
        await run_while(d, got, expire_twice)
    finally:
        await c.aclose()  # an unclosed client's connections warn later, in another test
    assert console.expired_requests >= 2  # the client did hit an expired session
    assert console.logins == 3 == c.logins  # the first login and one renewal per expiry
    assert d.failures == 0  # no poll failed
    assert not [e for e in got.events if e.body.get("state") == "offline"]
    assert len(got.polls) >= 9  # polls went on through both expiries
    for poll in got.polls:
        assert {r.tags["name"] for r in poll if r.measurement == "unifi_device"} == {
            "gw-main",
            "sw-core",
            "ap-lobby",
        }


async def test_access_point_disconnecting_and_returning_are_events(
    console: UnifiSimulator,
) -> None:
    c = client(console)
    d = device(c)
    try:
        events = list((await d.collect_once()).events)
        console.set_state("ap-lobby", 0)
        events += (await d.collect_once()).events
        console.set_state("ap-lobby", 1)
        events += (await d.collect_once()).events
    finally:
        await c.aclose()
    lobby = [e.body["state"] for e in events if e.source == "unifi/ap-lobby"]
    assert lobby == ["online", "offline", "online"]
    assert [e.body["state"] for e in events if e.source == "unifi/gw-main"] == ["online"]


async def test_an_api_key_on_a_classic_controller_says_what_to_use(
    controller: UnifiSimulator,
) -> None:
    c = client(controller, username=None, password=None, api_key=API_KEY)
    try:
        with pytest.raises(DeviceError, match=r"has no integration API .* use a username"):
            await device(c).collect_once()
    finally:
        await c.aclose()


async def test_integration_api_with_an_api_key(console: UnifiSimulator) -> None:
    c = client(console, username=None, password=None, api_key=API_KEY)
    try:
        out = await device(c).collect_once()
    finally:
        await c.aclose()
    assert c.mode == "integration"
    assert console.logins == 0
    devices = {r.tags["name"]: r for r in out.readings}
    assert set(devices) == {"gw-main", "sw-core", "ap-lobby"}
    assert devices["gw-main"].fields["cpu_pct"] == 8.5
    assert devices["gw-main"].fields["uplink_tx_bps"] == 10_000_000
    assert not out.drops


async def test_one_device_whose_statistics_fail_does_not_stop_the_poll(
    console: UnifiSimulator,
) -> None:
    lobby = next(d for d in console.devices if d["name"] == "ap-lobby")
    console.failing_statistics.add(lobby["id"])
    c = client(console, username=None, password=None, api_key=API_KEY)
    try:
        polled = device(c)
        out = await polled.collect_once()
    finally:
        await c.aclose()
    devices = {r.tags["name"]: r for r in out.readings}
    assert set(devices) == {"gw-main", "sw-core", "ap-lobby"}, "every device is still listed"
    assert "cpu_pct" in devices["sw-core"].fields
    assert "cpu_pct" not in devices["ap-lobby"].fields, "its state, without statistics"
    assert devices["ap-lobby"].fields["connected"] is True
    assert out.drops == {"request_failed": 1}
    assert len(polled.partial_errors) == 1
    assert polled.partial_errors[0].startswith("integration/devices/ap-lobby: bad_response:")


@pytest.mark.parametrize(
    ("changes", "kind", "words"),
    [
        ({"password": "wrong-password"}, "auth_failed", "refused the username or password"),
        ({"site": "branch-7"}, "bad_response", "no site 'branch-7'"),
        ({"insecure": False}, "tls_untrusted", "pass --insecure"),
        (
            {"username": None, "password": None, "api_key": "wrong-api-key"},
            "auth_failed",
            "refused the API key",
        ),
    ],
    ids=["wrong-password", "unknown-site", "self-signed", "wrong-api-key"],
)
async def test_errors_are_in_device_terms(
    console: UnifiSimulator, changes: dict[str, object], kind: str, words: str
) -> None:
    c = client(console, **changes)
    try:
        with pytest.raises(DeviceError) as caught:
            await device(c).collect_once()
    finally:
        await c.aclose()
    assert caught.value.kind == kind
    assert words in caught.value.message
    assert "wrong-password" not in caught.value.message
    assert "wrong-api-key" not in caught.value.message


def test_probe_unifi_json_lines_and_errors(console: UnifiSimulator) -> None:
    base = ["probe", "--profile", "unifi-network", "--target", console.url]
    login = ["--username", console.username, "--password", console.password]
    r = CliRunner().invoke(agent_cli, [*base, *login, "--insecure", "--site", "default"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    readings = [x for x in lines if "measurement" in x]
    assert {tuple(sorted(x)) for x in readings} == {("fields", "measurement", "tags", "ts")}
    assert any(x.get("type") == "availability" for x in lines)
    assert "readings and 3 events from https://127.0.0.1" in r.stderr

    r = CliRunner().invoke(agent_cli, [*base, *login])
    assert r.exit_code == 1
    assert "TLS certificate" in r.stderr
    assert "--insecure" in r.stderr

    r = CliRunner().invoke(
        agent_cli,
        [*base, "--username", console.username, "--insecure"],
        env={"OUTPOST_PROBE_PASSWORD": "not-the-password"},
    )
    assert r.exit_code == 1
    assert "auth failed" in r.stderr
    assert "not-the-password" not in r.output

    r = CliRunner().invoke(agent_cli, [*base, "--insecure"])
    assert r.exit_code == 2
    assert "--username and --password" in r.stderr
