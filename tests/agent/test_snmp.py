"""SNMP devices against real agents: net-snmp's snmpd (v2c, v3 authPriv) and snmpsim (pfSense)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from outpost_iot.agent import SystemClock
from outpost_iot.agent.cli import main as agent_cli
from outpost_iot.agent.profiles import Mapper, find_profile, load_profile
from outpost_iot.agent.sources._polling import DeviceError, PolledDevice
from outpost_iot.agent.sources._snmp import SnmpCredentials, SnmpDeviceClient, parse_snmp_target
from outpost_iot.dev.snmp_peers import TEST_COUNTER, Snmpd, Snmpsim, find_snmpd, pfsense_snmprec
from outpost_iot.wire import Reading
from tests.conftest import require_service


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    require_service("snmpd", find_snmpd() is not None, "apt-get install snmpd")
    agent = Snmpd(tmp_path / "snmpd")
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def pfsense_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpsim]:
    sim = Snmpsim(tmp_path_factory.mktemp("snmpsim"))
    sim.add("pfsense-lab", pfsense_snmprec())
    sim.start()
    yield sim
    sim.stop()


def v3(agent: Snmpd, **changes: str) -> SnmpCredentials:
    values = {
        "user": agent.user,
        "auth_protocol": agent.auth_protocol,
        "auth_key": agent.auth_key,
        "priv_protocol": agent.priv_protocol,
        "priv_key": agent.priv_key,
        **changes,
    }
    return SnmpCredentials(**values)  # type: ignore[arg-type]


def polled(
    port: int,
    credentials: SnmpCredentials,
    profile: str = "pfsense-snmp",
    *,
    timeout: float = 1.0,
    retries: int = 1,
) -> PolledDevice:
    prof = find_profile(profile) if "/" not in profile else load_profile(Path(profile))
    client = SnmpDeviceClient(
        profile=prof,
        host="127.0.0.1",
        port=port,
        credentials=credentials,
        timeout=timeout,
        retries=retries,
    )
    return PolledDevice(
        name="fw-1",
        client=client,
        mapper=Mapper(prof, device="fw-1"),
        interval=10,
        clock=SystemClock(),
        timeout=10,
    )


def by_measurement(readings: list[Reading]) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.measurement, []).append(r)
    return out


async def test_snmpv3_authpriv_against_snmpd(snmpd: Snmpd) -> None:
    device = polled(snmpd.port, v3(snmpd))
    try:
        first = by_measurement((await device.collect_once()).readings)
        await asyncio.sleep(1.1)
        second = by_measurement((await device.collect_once()).readings)
    finally:
        await device._client.aclose()
    assert first["pfsense_system"][0].fields["sys_name"] == "snmpd-under-test"
    assert first["pfsense_memory"][0].fields["total_bytes"] > 0
    assert {"load1", "load5", "load15"} <= set(first["pfsense_load"][0].fields)
    loopback = next(r for r in first["pfsense_interface"] if r.tags["interface"] == "lo")
    assert loopback.fields["up"] is True
    assert "in_bps" not in loopback.fields  # a rate needs two polls
    assert first["pfsense_storage"], "hrStorageTable walked"
    # net-snmp has no PF MIB: NoSuchObject leaves the reading out instead of failing the poll
    assert "pfsense_pf" not in first
    loopback2 = next(r for r in second["pfsense_interface"] if r.tags["interface"] == "lo")
    assert 0 <= loopback2.fields["in_bps"] < 1e10
    assert 0 <= second["pfsense_cpu"][0].fields["idle_ticks_per_s"] < 1e6


async def test_v2c_community(snmpd: Snmpd) -> None:
    device = polled(snmpd.port, SnmpCredentials(community=snmpd.community))
    try:
        got = by_measurement((await device.collect_once()).readings)
    finally:
        await device._client.aclose()
    assert got["pfsense_system"][0].fields["sys_name"] == "snmpd-under-test"


@pytest.mark.parametrize(
    ("change", "kind", "words"),
    [
        ({"community": "wrong-community"}, "timeout", "check the community"),
        ({"auth_key": "wrong-auth-key"}, "auth_failed", "refused the auth key"),
        (
            {"priv_key": "wrong-priv-key"},
            "timeout",
            "its keys",
        ),  # snmpd drops what it can't decrypt
        ({"user": "nobody"}, "auth_failed", "does not know SNMPv3 user 'nobody'"),
        ({"priv_key": ""}, "auth_failed", "does not allow authNoPriv"),
    ],
    ids=["wrong-community", "wrong-auth-key", "wrong-priv-key", "unknown-user", "no-privacy"],
)
async def test_wrong_credentials_say_what_to_check(
    snmpd: Snmpd, change: dict[str, str], kind: str, words: str
) -> None:
    if "community" in change:
        credentials = SnmpCredentials(community=change["community"])
    else:
        values = dict(change)
        if values.get("priv_key") == "":
            values["priv_key"] = None  # type: ignore[assignment]
        credentials = v3(snmpd, **values)
    device = polled(snmpd.port, credentials, timeout=0.5, retries=0)
    try:
        with pytest.raises(DeviceError) as caught:
            await device.collect_once()
    finally:
        await device._client.aclose()
    assert caught.value.kind == kind
    assert words in caught.value.message
    for secret in (snmpd.auth_key, snmpd.priv_key, snmpd.community, "wrong-auth-key"):
        assert secret not in caught.value.message


async def test_counter_wrap_and_device_reboot_give_no_negative_or_huge_rates(
    snmpd: Snmpd, tmp_path: Path
) -> None:
    folder = tmp_path / "counter-test"
    (folder / "testcases").mkdir(parents=True)
    (folder / "profile.toml").write_text(
        '[profile]\nname = "counter-test"\ntitle = "t"\ntransport = "snmp"\n\n'
        f'[[snmp.get]]\nkey = "c"\noids = {{ octets = "{TEST_COUNTER}" }}\n\n'
        '[[readings]]\nmatch = "c"\nmeasurement = "c"\n'
        'fields.per_s = { path = ".octets", rate = true, counter_bits = 32 }\n'
        'fields.raw = ".octets"\n'
    )
    device = polled(snmpd.port, SnmpCredentials(community=snmpd.community), str(folder))

    async def poll() -> dict[str, float]:
        readings = (await device.collect_once()).readings
        return dict(readings[0].fields)  # type: ignore[arg-type]

    try:
        snmpd.set_counter(2**32 - 1000)
        assert "per_s" not in await poll()  # baseline
        await asyncio.sleep(1.0)
        snmpd.set_counter(500)  # wrapped past 2^32: 1,500 octets later
        wrapped = await poll()
        assert wrapped["raw"] == 500
        assert 1500 / 3 < wrapped["per_s"] < 1500 / 0.9  # ~1,500 per second, not -4e9 or +4e9

        snmpd.set_counter(2**32 - 300)  # near the top again, then the device reboots
        await asyncio.sleep(0.5)
        await poll()
        snmpd.restart()  # sysUpTime starts again from zero
        snmpd.set_counter(5)
        await asyncio.sleep(0.5)
        rebooted = await poll()
        # A wrap would explain 4294966996 → 5 as +305, but sysUpTime went back: no rate at all.
        assert "per_s" not in rebooted
        assert rebooted["raw"] == 5
        await asyncio.sleep(1.0)
        snmpd.set_counter(1005)
        after = await poll()
        assert 1000 / 3 < after["per_s"] < 1000 / 0.9  # rates resume from the new baseline
    finally:
        await device._client.aclose()


async def test_pfsense_profile_against_a_recorded_pfsense_walk(pfsense_sim: Snmpsim) -> None:
    # snmpsim is Python and answers its first request slowly on a busy machine: wait longer.
    device = polled(
        pfsense_sim.port, SnmpCredentials(community="pfsense-lab"), timeout=3, retries=1
    )
    try:
        got = by_measurement((await device.collect_once()).readings)
    finally:
        await device._client.aclose()
    pf = got["pfsense_pf"][0].fields
    assert pf["running"] is True
    assert pf["states"] == 1234
    assert pf["state_limit"] == 398000
    wan = next(r for r in got["pfsense_interface"] if r.tags["interface"] == "igc0")
    assert wan.fields["description"] == "WAN"
    assert wan.fields["speed_mbps"] == 1000
    opt1 = next(r for r in got["pfsense_interface"] if r.tags["interface"] == "igc2")
    assert opt1.fields["up"] is False
    assert opt1.fields["admin_up"] is False
    # The walk has ~590 kernel memory zones, as a real pfSense's: only memory and disks remain.
    assert sorted(r.tags["storage"] for r in got["pfsense_storage"]) == [
        "/",
        "/var/run",
        "Real Memory Metrics",
        "Shared Real Memory Metrics",
    ]
    root = next(r for r in got["pfsense_storage"] if r.tags["storage"] == "/")
    assert root.fields["total_bytes"] == 7_500_000 * 4096
    assert got["pfsense_load"][0].fields["load1"] == pytest.approx(0.21)
    assert got["pfsense_memory"][0].fields["total_bytes"] == 4 * 1024**3
    assert got["pfsense_system"][0].fields["uptime_s"] == pytest.approx(273_600)


def test_probe_snmpv3_prints_readings_and_never_the_keys(snmpd: Snmpd) -> None:
    args = ["probe", "--profile", "pfsense-snmp", "--target", snmpd.target]
    creds = ["--snmp-user", snmpd.user, "--auth-protocol", "sha", "--auth-key", snmpd.auth_key]
    r = CliRunner().invoke(
        agent_cli,
        [*args, *creds, "--priv-protocol", "AES"],
        env={"OUTPOST_PROBE_PRIV_KEY": snmpd.priv_key},
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"measurement", "tags", "fields", "ts"} == set(lines[0])
    assert "pfsense_system" in {line["measurement"] for line in lines}
    assert "readings and 0 events from snmp://127.0.0.1" in r.stderr
    for secret in (snmpd.auth_key, snmpd.priv_key):
        assert secret not in r.output

    r = CliRunner().invoke(agent_cli, [*args, "--community", "not-the-community", "--timeout", "1"])
    assert r.exit_code == 1
    assert "SNMP timeout" in r.stderr
    assert "--community" in r.stderr
    assert "not-the-community" not in r.output

    r = CliRunner().invoke(agent_cli, args)
    assert r.exit_code == 2
    assert "--community (v2c) or --snmp-user" in r.stderr


def test_snmp_targets_are_checked() -> None:
    assert parse_snmp_target("snmp://fw.example") == ("fw.example", 161)
    assert parse_snmp_target("snmp://10.0.0.1:1161") == ("10.0.0.1", 1161)
    for bad in ("udp://fw:161", "snmp://", "snmp://fw:99999", "snmp://fw/x"):
        with pytest.raises(ValueError, match="snmp://host"):
            parse_snmp_target(bad)


def test_snmp_credentials_are_checked_and_never_shown() -> None:
    assert SnmpCredentials(community="c").problems() == []
    assert SnmpCredentials().problems() == [
        "SNMP needs a community (v2c) or snmp_user with keys (v3)"
    ]
    short = SnmpCredentials(user="u", auth_key="short", priv_key="long-enough-key")
    assert "auth key must be at least 8 characters" in " ".join(short.problems())
    assert "privacy needs an auth key" in " ".join(
        SnmpCredentials(user="u", priv_key="long-enough-key").problems()
    )
    shown = repr(SnmpCredentials(user="u", auth_key="secret-auth-1", priv_key="secret-priv-1"))
    assert "secret" not in shown


async def test_a_table_with_row_tests_reads_other_columns_only_for_rows_that_pass(
    pfsense_sim: Snmpsim,
) -> None:
    """The pfSense walk's ~590 kernel zones: only their descriptions cross the network."""
    device = polled(
        pfsense_sim.port, SnmpCredentials(community="pfsense-lab"), timeout=3, retries=1
    )
    client = device._client
    assert isinstance(client, SnmpDeviceClient)
    asked: list[str] = []
    get = client._get

    async def counting_get(oids: list[str]) -> dict[str, object]:
        asked.extend(oids)
        return await get(oids)

    client._get = counting_get  # type: ignore[method-assign]
    try:
        storage = dict(await client.fetch())["storage"]
    finally:
        await client.aclose()
    assert isinstance(storage, dict)
    assert sorted(row["descr"] for row in storage.values()) == [
        "/, type: ufs, dev: /dev/gpt/rootfs",
        "/var/run, type: ufs, dev: /dev/md0",
        "Real Memory Metrics",
        "Shared Real Memory Metrics",
    ]
    assert storage["31"] == {
        "descr": "/, type: ufs, dev: /dev/gpt/rootfs",
        "units": 4096,
        "size": 7_500_000,
        "used": 600_000,
    }
    size = "1.3.6.1.2.1.25.2.3.1.5."
    assert sorted(oid for oid in asked if oid.startswith(size)) == sorted(
        size + index for index in ("1", "2", "31", "33")
    ), "sizes asked for the four rows kept, not for the 559 kernel zones"


def test_row_tests_name_a_column_of_the_table(tmp_path: Path) -> None:
    from outpost_iot.agent.profiles import ProfileError

    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "profile.toml").write_text(
        '[profile]\nname = "rows"\ntitle = "t"\ntransport = "snmp"\n'
        '[[snmp.walk]]\nkey = "t"\ncolumns = { descr = "1.3.6.1.2.1.25.2.3.1.3" }\n'
        'rows = { name = { ne = "" } }\n'
    )
    with pytest.raises(ProfileError, match=r"rows tests \['name'\], which are not among the"):
        load_profile(folder)
