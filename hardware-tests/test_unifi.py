"""A real UniFi Network console or controller: login, readings, session renewal."""

from __future__ import annotations

from _checks import check_sane, device, two_polls
from conftest import flag, optional, rig

from outpost_iot.agent.sources._unifi import UnifiClient


def _console() -> dict[str, object]:
    (url,) = rig("OUTPOST_HW_UNIFI_URL")  # https://192.168.1.1 or https://host:8443
    return {
        "profile": "unifi-network",
        "target": url,
        "site": optional("OUTPOST_HW_UNIFI_SITE", "default"),
        "insecure": flag("OUTPOST_HW_UNIFI_INSECURE"),
    }


async def test_unifi_login_readings_and_session_renewal() -> None:
    console = _console()
    username, password = rig("OUTPOST_HW_UNIFI_USERNAME", "OUTPOST_HW_UNIFI_PASSWORD")
    polled, _ = device(**console, username=username, password=password)
    client = polled._client
    assert isinstance(client, UnifiClient)
    first = await polled.collect_once()
    assert {"unifi_device", "unifi_health"} <= {r.measurement for r in first.readings}
    # Throw the session away: the next poll meets an expired session and must log in again.
    client._client.cookies.clear()
    _, second = await two_polls(polled, gap=5)
    assert client.logins == 2
    assert any("tx_bps" in r.fields for r in second.readings)
    check_sane(second.readings)


async def test_unifi_integration_api() -> None:
    console = _console()
    (api_key,) = rig("OUTPOST_HW_UNIFI_API_KEY")
    polled, _ = device(**console, api_key=api_key)
    first, _ = await two_polls(polled, gap=1)
    devices = [r for r in first.readings if r.measurement == "unifi_device"]
    assert devices
    assert all("connected" in r.fields for r in devices)
