"""A simulated customer site for the demo and the benchmarks: every device family at once.

- a local Mosquitto (plain MQTT, as sites run it) with Tasmota, Zigbee2MQTT, Shelly Gen2 and
  ESPHome sensors and a Frigate NVR publishing the payloads of the profiles' golden testcases
  (numbers varied a little each round);
- HTTP simulators for the pfSense REST API, Frigate's ``/api/stats`` and a UniFi OS console
  (HTTPS with an untrusted certificate, so the agent config says ``insecure = true``);
- snmpsim replaying a pfSense walk for the ``pfsense-snmp`` profile (when snmpsim is installed).

:meth:`SimulatedSite.devices_toml` writes the ``[[devices]]`` entries for an agent config.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from outpost_iot.agent.profiles import profiles_dir
from outpost_iot.dev._processes import LocalBroker
from outpost_iot.dev.simulators import DeviceSimulator, UnifiSimulator, pfsense_routes

PFSENSE_KEY = "demo-pfsense-api-key"
UNIFI_KEY = "demo-unifi-api-key"
MQTT_FAMILIES = ("tasmota", "zigbee2mqtt", "shelly-gen2", "esphome", "frigate")


def _golden_inputs(profile: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for case in sorted((profiles_dir() / profile / "testcases").glob("*.json")):
        spec = json.loads(case.read_text())
        out += [(item["key"], item["payload"]) for item in spec["inputs"]]
    return out


def _vary(value: Any, rng: random.Random) -> Any:
    """Floats moved by up to ±2 %, so the dashboards show something alive."""
    if isinstance(value, float):
        return round(value * (1 + rng.uniform(-0.02, 0.02)), 3)
    if isinstance(value, dict):
        return {k: _vary(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [_vary(v, rng) for v in value]
    return value


def frigate_routes() -> dict[str, Any]:
    stats = next(p for k, p in _golden_inputs("frigate") if k == "frigate/stats")
    rng = random.Random()
    body = json.loads(stats) if isinstance(stats, str) else stats
    return {"/api/stats": lambda: _vary(body, rng)}


class SimulatedSite:
    """Start with :meth:`start`, stop with :meth:`stop`; ``interval`` paces the MQTT devices."""

    def __init__(self, directory: Path, *, interval: float = 5.0, snmp: bool = True) -> None:
        self.directory = directory
        self.interval = interval
        self.broker = LocalBroker(directory / "site-broker")
        self.pfsense = DeviceSimulator(pfsense_routes(), api_key=PFSENSE_KEY)
        self.frigate = DeviceSimulator(frigate_routes())
        self.unifi = UnifiSimulator(mode="os", api_key=UNIFI_KEY, tls_dir=directory / "unifi-tls")
        self.snmp: Any = None
        if snmp and importlib.util.find_spec("snmpsim") is not None:  # a dev dependency
            from outpost_iot.dev.snmp_peers import Snmpsim, pfsense_snmprec

            self.snmp = Snmpsim(directory / "snmpsim")
            self.snmp.add("demo-site", pfsense_snmprec())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, daemon=True)
        self.published = 0

    def start(self) -> SimulatedSite:
        self.broker.start()
        self.pfsense.start()
        self.frigate.start()
        self.unifi.start()
        if self.snmp is not None:
            self.snmp.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for part in (self.unifi, self.frigate, self.pfsense):
            part.stop()
        if self.snmp is not None:
            self.snmp.stop()
        self.broker.stop()

    def _publish_loop(self) -> None:
        rng = random.Random()
        messages = [m for family in MQTT_FAMILIES for m in _golden_inputs(family)]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="simulated-site")
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            while not self._stop.is_set():
                for topic, payload in messages:
                    body = payload if isinstance(payload, str) else json.dumps(_vary(payload, rng))
                    if isinstance(payload, str):
                        with contextlib.suppress(ValueError):
                            body = json.dumps(_vary(json.loads(payload), rng))
                    client.publish(topic, body, qos=0)
                    self.published += 1
                self._stop.wait(self.interval)
        finally:
            client.loop_stop()
            client.disconnect()

    def devices_toml(self, *, count: int | None = None, interval: float = 10.0) -> str:
        """``[[devices]]`` for an agent config: one of each kind, or ``count`` cycling kinds."""
        broker = f"mqtt://127.0.0.1:{self.broker.port}"
        kinds: list[dict[str, Any]] = [
            {"profile": "pfsense-rest", "target": self.pfsense.url, "api_key": PFSENSE_KEY},
            {
                "profile": "unifi-network",
                "target": self.unifi.url,
                "username": self.unifi.username,
                "password": self.unifi.password,
                "insecure": True,
            },
            {"profile": "frigate", "target": self.frigate.url},
            {"profile": "tasmota", "target": broker},
            {"profile": "zigbee2mqtt", "target": broker},
            {"profile": "shelly-gen2", "target": broker},
            {"profile": "esphome", "target": broker, "variables": {"prefix": "greenhouse"}},
            {"profile": "frigate", "target": broker},
        ]
        if self.snmp is not None:
            kinds.insert(
                1,
                {
                    "profile": "pfsense-snmp",
                    "target": self.snmp.target,
                    "community": "demo-site",
                },
            )
        chosen = kinds if count is None else [kinds[i % len(kinds)] for i in range(count)]
        out = []
        for i, device in enumerate(chosen):
            name = f"{device['profile']}-{i + 1}"
            lines = [
                "[[devices]]",
                f'name = "{name}"',
                *(f"{k} = {_toml(v)}" for k, v in device.items()),
            ]
            if not device["target"].startswith("mqtt://"):
                lines.append(f"interval = {interval:g}")
            out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)
