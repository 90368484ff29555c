"""Alarms end to end: a real collector (with its API and [smtp]), broker and enrolled agent that
reads a freezer's sensor over the site's own MQTT broker (zigbee2mqtt, as on a real site), a
real HTTP receiver for the webhook and a real SMTP server (aiosmtpd) for the email."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from outpost_iot.dev._processes import LocalBroker, free_port, spawn, stop
from tests._wait import wait_until
from tests.agent.test_mqtt_source import publish
from tests.collector.test_notify import Receiver
from tests.e2e._harness import Harness
from tests.provisioning.test_enrollment import (
    _api_up,
    collector,
    enroll,
    gateway_id_of,
    new_token,
    trust,
    tune,
    url,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def site(harness: Harness, site_broker: LocalBroker) -> Iterator[dict[str, Any]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    mail: list[Any] = []

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            mail.append(message)

    smtp_port = free_port()
    smtp = Controller(Keep(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    receiver = Receiver()
    harness.api_port = free_port()
    harness.collector_extra = f"""
[alarms]
interval_s = 1
allow_http = true
allow_private_targets = true

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from_address = "outpost@example.net"
"""
    harness.start_collector()
    wait_until(lambda: _api_up(harness), timeout=20, what="the collector's API")
    assert enroll(harness, new_token(harness, site="Cold store"), "cold").exit_code == 0
    config = harness.root / "cold" / "agent.toml"
    tune(config)
    with config.open("a") as f:
        f.write(
            f'\n[[devices]]\nname = "zigbee"\nprofile = "zigbee2mqtt"\n'
            f'target = "mqtt://127.0.0.1:{site_broker.port}"\n'
            # Edge alarms are published on the site's broker too (for local automation).
            f'\n[alarms]\nlocal_broker = "mqtt://127.0.0.1:{site_broker.port}"\n'
        )
    token = collector(harness, "api-token", "create", "--tenant", "acme", "--role", "operator", "--name", "ops").split()[0]  # fmt: skip
    agent = spawn(
        ["outpost_iot.agent.cli", "run", "--config", str(config)], log=harness.root / "cold.log"
    )
    s = {"h": harness, "gw": gateway_id_of(harness, "cold"), "token": token, "agent": agent,
         "receiver": receiver, "mail": mail, "site_port": site_broker.port}  # fmt: skip
    try:
        # Sensors publish at QoS 0 without retain: what the site broker gets before the agent
        # has subscribed is gone, as on a real site.
        log = harness.root / "cold.log"
        wait_until(lambda: "zigbee: listening on" in log.read_text(), timeout=30, what="the agent to subscribe on the site broker", seen=lambda: log.read_text()[-2000:])  # fmt: skip
        yield s
    finally:
        stop(s["agent"])
        receiver.server.shutdown()
        receiver.server.server_close()
        smtp.stop()


def call(s: dict[str, Any], method: str, path: str, body: Any = None, **params: Any) -> Any:
    r = httpx.request(
        method,
        f"{url(s['h'])}{path}",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {s['token']}"},
        verify=trust(s["h"]),
        timeout=10,
    )
    assert r.status_code < 300, r.text
    return r.json()


def deliveries(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(event, alarm name) of every webhook request the receiver got."""
    out = []
    for _, body in s["receiver"].requests:
        payload = json.loads(body)
        out.append((payload["event"], payload.get("alarm", {}).get("name", "")))
    return out


def freezer(s: dict[str, Any], celsius: float) -> None:
    publish(s["site_port"], [("zigbee2mqtt/freezer", json.dumps({"temperature": celsius, "battery": 90}))])  # fmt: skip


def test_a_freezer_too_warm_raises_one_alarm_notified_once_by_webhook_and_email_then_clears(
    site: dict[str, Any],
) -> None:
    s = site
    call(s, "POST", "/api/v1/notification-endpoints", {"name": "ops hook", "kind": "webhook", "url": s["receiver"].url})  # fmt: skip
    call(s, "POST", "/api/v1/notification-endpoints", {"name": "on call", "kind": "email", "to": ["oncall@example.com"], "min_severity": "critical"})  # fmt: skip
    rule = call(s, "POST", "/api/v1/alarm-rules", {
        "name": "Freezer too warm", "severity": "critical",
        "condition": {"kind": "threshold", "measurement": "sensor", "field": "temperature_c", "above": -15, "clear": -17},
        "scope": {"device": "freezer"},
    })  # fmt: skip
    for celsius in (-20.0, -19.5):
        freezer(s, celsius)
    wait_until(
        lambda: call(s, "GET", "/api/v1/series/latest", measurement="sensor", tag="device:freezer"),
        timeout=30,
        what="the freezer's readings stored",
    )
    assert call(s, "GET", "/api/v1/alarms") == []
    # The door is left open: above -15 °C, three readings in a row.
    for celsius in (-12.0, -11.0, -9.5):
        freezer(s, celsius)
    wait_until(lambda: ("raised", "Freezer too warm") in deliveries(s), timeout=30, what="the webhook", seen=lambda: deliveries(s))  # fmt: skip
    wait_until(lambda: s["mail"], timeout=30, what="the email")
    [alarm] = call(s, "GET", "/api/v1/alarms")
    assert (alarm["rule_id"], alarm["status"], alarm["gateway_id"]) == (
        rule["id"],
        "active",
        s["gw"],
    )
    assert alarm["originator"].endswith("device=freezer")
    assert alarm["details"]["value"] == -12.0
    assert s["mail"][0]["Subject"].startswith("[Outpost] CRITICAL raised: Freezer too warm")
    # Back below the clear level: cleared, and told once more.
    freezer(s, -16.0)  # in the band: still raised
    freezer(s, -18.0)
    wait_until(lambda: ("cleared", "Freezer too warm") in deliveries(s), timeout=30, what="the cleared webhook", seen=lambda: deliveries(s))  # fmt: skip
    [alarm] = call(s, "GET", "/api/v1/alarms")
    assert alarm["status"] == "cleared"
    assert alarm["details"]["value"] == -18.0
    wait_until(lambda: len(s["mail"]) == 2, timeout=30, what="the cleared email")
    assert deliveries(s) == [("raised", "Freezer too warm"), ("cleared", "Freezer too warm")]
    keys = [h["x-outpost-delivery"] for h, _ in s["receiver"].requests]
    assert len(set(keys)) == 2


def test_a_gateway_killed_raises_the_offline_alarm_after_its_duration(
    site: dict[str, Any],
) -> None:
    s = site
    call(s, "POST", "/api/v1/notification-endpoints", {"name": "ops hook", "kind": "webhook", "url": s["receiver"].url})  # fmt: skip
    call(s, "POST", "/api/v1/alarm-rules", {"name": "Gateway offline", "condition": {"kind": "gateway_offline", "for_s": 5}})  # fmt: skip
    wait_until(
        lambda: call(s, "GET", f"/api/v1/gateways/{s['gw']}")["state"] == "online",
        timeout=30,
        what="the gateway online",
    )
    s["agent"].kill()  # kill -9: the broker sends its will
    s["agent"].wait()
    killed = time.time()
    wait_until(
        lambda: call(s, "GET", f"/api/v1/gateways/{s['gw']}")["state"] == "offline",
        timeout=30,
        what="the gateway offline",
    )
    wait_until(lambda: call(s, "GET", "/api/v1/alarms", status="open"), timeout=60, what="the offline alarm")  # fmt: skip
    [alarm] = call(s, "GET", "/api/v1/alarms", status="open")
    assert (alarm["kind"], alarm["originator"]) == ("gateway_offline", s["gw"])
    assert alarm["raised"] - alarm["details"]["last_seen"] >= 5
    assert alarm["raised"] >= killed + 4  # not before its duration (to a second)
    wait_until(lambda: deliveries(s) == [("raised", "Gateway offline")], timeout=30, what="the webhook", seen=lambda: deliveries(s))  # fmt: skip


def test_an_edge_rule_raises_on_site_while_the_uplink_is_down_and_reaches_the_collector_later(
    site: dict[str, Any],
) -> None:
    s = site
    rule = call(s, "POST", "/api/v1/alarm-rules", {
        "name": "Freezer too warm", "severity": "critical", "edge": True,
        "condition": {"kind": "threshold", "measurement": "sensor", "field": "temperature_c", "above": -15, "clear": -17},
        "scope": {"device": "freezer"},
    })  # fmt: skip
    # The rule travels in the gateway's signed config, and the gateway applies it.
    wait_until(
        lambda: (
            (c := call(s, "GET", f"/api/v1/gateways/{s['gw']}/config"))["in_sync"]
            and c["desired"]["config"]["alarms"]["rules"][0]["id"] == rule["id"]
        ),
        timeout=60,
        what="the edge rule applied on the gateway",
    )
    freezer(s, -20.0)
    wait_until(
        lambda: call(s, "GET", "/api/v1/series/latest", measurement="sensor", tag="device:freezer"),
        timeout=30,
        what="the freezer's readings stored",
    )
    on_site: dict[str, Any] = {}

    def watch(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        on_site[m.topic] = json.loads(m.payload)

    local = mqtt.Client(CallbackAPIVersion.VERSION2)
    local.on_message = watch
    local.connect("127.0.0.1", s["site_port"])
    local.subscribe("outpost/alarms/#", qos=1)
    local.loop_start()
    try:
        s["h"].broker.stop()  # the uplink is down
        freezer(s, -10.0)
        topic = f"outpost/alarms/{s['gw']}/{rule['id']}"
        wait_until(lambda: topic in on_site, timeout=30, what="the alarm on the site's broker")
        assert on_site[topic]["state"] == "raised"
        raised_on_site = on_site[topic]["ts"]
        assert call(s, "GET", "/api/v1/alarms") == []  # the collector has not heard of it
        back = time.time()
        s["h"].broker.start()
        wait_until(lambda: call(s, "GET", "/api/v1/alarms"), timeout=60, what="the alarm at the collector")  # fmt: skip
    finally:
        local.loop_stop()
        local.disconnect()
    [alarm] = call(s, "GET", "/api/v1/alarms")
    # Raised at its own time, on site, before the uplink came back.
    assert alarm["raised"] == pytest.approx(raised_on_site, abs=0.01)
    assert alarm["raised"] < back
    assert alarm["details"]["value"] == -10.0
    events = call(s, "GET", "/api/v1/events", gateway=s["gw"], type="alarm")["events"]
    assert [(e["body"]["state"], e["body"]["rule"]) for e in events] == [("raised", rule["id"])]
