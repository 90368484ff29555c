"""A real pfSense: SNMP (v2c or v3) and the REST API package."""

from __future__ import annotations

from _checks import check_sane, device, two_polls
from conftest import flag, optional, rig


async def test_pfsense_snmp() -> None:
    (target,) = rig("OUTPOST_HW_PFSENSE_SNMP")  # snmp://192.168.1.1
    credentials: dict[str, object]
    if optional("OUTPOST_HW_PFSENSE_SNMP_USER"):
        credentials = {
            "snmp_user": optional("OUTPOST_HW_PFSENSE_SNMP_USER"),
            "auth_protocol": optional("OUTPOST_HW_PFSENSE_AUTH_PROTOCOL", "SHA"),
            "auth_key": rig("OUTPOST_HW_PFSENSE_AUTH_KEY")[0],
            "priv_protocol": optional("OUTPOST_HW_PFSENSE_PRIV_PROTOCOL", "AES"),
            "priv_key": optional("OUTPOST_HW_PFSENSE_PRIV_KEY"),
        }
    else:
        credentials = {"community": rig("OUTPOST_HW_PFSENSE_COMMUNITY")[0]}
    polled, _ = device(profile="pfsense-snmp", target=target, **credentials)
    first, second = await two_polls(polled, gap=10)
    measurements = {r.measurement for r in first.readings}
    assert {"pfsense_system", "pfsense_interface", "pfsense_memory"} <= measurements
    assert any(r.fields.get("up") is True for r in first.readings)
    assert any("in_bps" in r.fields for r in second.readings)
    check_sane(second.readings)


async def test_pfsense_rest() -> None:
    target, api_key = rig("OUTPOST_HW_PFSENSE_REST_URL", "OUTPOST_HW_PFSENSE_API_KEY")
    polled, _ = device(
        profile="pfsense-rest",
        target=target,
        api_key=api_key,
        insecure=flag("OUTPOST_HW_PFSENSE_INSECURE"),
    )
    first, _ = await two_polls(polled, gap=1)
    measurements = {r.measurement for r in first.readings}
    assert {"pfsense_system", "pfsense_gateway", "pfsense_states"} <= measurements
