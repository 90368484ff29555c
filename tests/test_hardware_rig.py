"""hardware-tests/ run against the simulators and snmpd, so they keep working without a rig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from outpost_iot.dev.simulators import DeviceSimulator, UnifiSimulator, pfsense_routes
from outpost_iot.dev.snmp_peers import Snmpd, find_snmpd
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[1]


def test_hardware_tests_pass_against_simulated_devices(tmp_path: Path) -> None:
    require_service("snmpd", find_snmpd() is not None, "apt-get install snmpd")
    snmpd = Snmpd(tmp_path / "snmpd")
    snmpd.start()
    unifi = UnifiSimulator(mode="os", api_key="rig-api-key-1", tls_dir=tmp_path / "tls").start()
    pfsense = DeviceSimulator(pfsense_routes(), api_key="rig-pf-key").start()
    env = {
        **os.environ,
        "OUTPOST_HW_RATE_GAP": "1",
        "OUTPOST_HW_PFSENSE_SNMP": snmpd.target,
        "OUTPOST_HW_PFSENSE_SNMP_USER": snmpd.user,
        "OUTPOST_HW_PFSENSE_AUTH_KEY": snmpd.auth_key,
        "OUTPOST_HW_PFSENSE_PRIV_KEY": snmpd.priv_key,
        "OUTPOST_HW_PFSENSE_REST_URL": pfsense.url,
        "OUTPOST_HW_PFSENSE_API_KEY": "rig-pf-key",
        "OUTPOST_HW_UNIFI_URL": unifi.url,
        "OUTPOST_HW_UNIFI_USERNAME": unifi.username,
        "OUTPOST_HW_UNIFI_PASSWORD": unifi.password,
        "OUTPOST_HW_UNIFI_API_KEY": "rig-api-key-1",
        "OUTPOST_HW_UNIFI_INSECURE": "1",
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "hardware-tests", "-p", "no:cacheprovider", "-rA"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        snmpd.stop()
        unifi.stop()
        pfsense.stop()
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    for name in (
        "test_pfsense_snmp",
        "test_pfsense_rest",
        "test_unifi_login_readings_and_session_renewal",
        "test_unifi_integration_api",
    ):
        assert f"PASSED hardware-tests/test_{name.split('_')[1]}.py::{name}" in out, out[-3000:]
    # Devices the rig does not describe skip, naming the variable they need.
    assert "set OUTPOST_HW_FRIGATE_URL to run this" in out
