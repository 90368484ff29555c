"""The README's first command: the demo runs the whole product with a simulated site."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from outpost_dev._processes import find_mosquitto
from tests.conftest import require_service


def test_demo_stores_readings_from_every_simulated_device_family(tmp_path: Path) -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost_dev.cli",
            "demo",
            "--dir",
            str(workdir),
            "--duration",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Outpost demo is running" in result.stdout
    db = workdir / "collector-data" / "timeseries.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        measurements = {m for (m,) in conn.execute("SELECT DISTINCT measurement FROM series")}
    expected = {
        "environment",  # the simulated sensors
        "cpu",  # the host profile
        "pfsense_system",  # pfSense REST (and SNMP)
        "pfsense_interface",  # pfSense over SNMP (snmpsim)
        "unifi_device",  # UniFi OS console over HTTPS
        "frigate_camera",  # Frigate over HTTP and MQTT
        "sensor",  # Zigbee2MQTT / Tasmota on the site broker
        "power",  # Shelly
    }
    assert expected <= measurements, sorted(measurements)
    log = (workdir / "logs" / "agent.log").read_text()
    assert "is not answering" not in log
    assert "Traceback" not in log
