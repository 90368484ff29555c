"""The README's first command: the demo runs the whole product with a simulated site."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from outpost_iot.dev._processes import find_mosquitto
from tests.conftest import require_service


def test_demo_stores_readings_from_every_simulated_device_family(tmp_path: Path) -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost_iot.dev.cli",
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["hup", "term", "int"]
)
def test_the_demo_stops_everything_it_started(tmp_path: Path, sig: signal.Signals) -> None:
    """Closing the terminal (SIGHUP), SIGTERM and Ctrl-C all stop the agent, the collector,
    the simulators and the brokers; nothing is left running."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        demo = subprocess.Popen(
            [sys.executable, "-m", "outpost_iot.dev.cli", "demo", "--dir", str(tmp_path / "demo")],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Outpost demo is running" not in out.read_text(errors="replace"):
            assert demo.poll() is None, out.read_text()[-2000:]
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.2)
        # The console it names opens, and the token it prints signs in.
        text = out.read_text()
        console = re.search(r"The console: (https://localhost:\d+)/console/", text)
        assert console, text[-2000:]
        token = re.search(r"API token:\s+(opa_\S+)", text)
        assert token, text[-2000:]
        ca = re.search(r"the demo's own CA: (\S+);", text)
        assert ca, text[-2000:]
        trust = ssl.create_default_context(cafile=ca[1])
        page = httpx.get(f"{console[1]}/console/", verify=trust, timeout=10)
        assert page.status_code == 200
        assert "Outpost console" in page.text
        signed = httpx.post(
            f"{console[1]}/api/v1/session", json={"token": token[1]}, verify=trust, timeout=10
        )
        assert signed.status_code == 200, signed.text
        assert signed.json()["role"] == "operator"
        children = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "outpost_iot.agent.cli" in names
        assert "outpost_iot.collector.cli" in names
        assert "mosquitto" in names
        demo.send_signal(sig)
        demo.wait(60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"still running: {[p.cmdline() for p in alive]}"
        assert "stopped;" in out.read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
