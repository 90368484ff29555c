"""Notifications delivered to real receivers: a webhook (an HTTP server in the test) signed
with HMAC-SHA256 and retried with the same key until it answers 2xx, given up after the
configured time with the error shown; an email through a real SMTP server (aiosmtpd); webhook
URLs that would reach the collector's own network refused."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from outpost_iot.collector._config import AlarmsConfig, SmtpConfig
from outpost_iot.collector._notify import Deliveries
from outpost_iot.collector.stores import (
    AlarmChanges,
    AlarmRecord,
    AlarmRuleRecord,
    NotifyEndpointRecord,
)
from outpost_iot.dev._processes import free_port
from tests.collector._api_fixture import T0, Api

S = 10**9
pytestmark = pytest.mark.parametrize("api", ["sqlite"], indirect=True)
OPEN = AlarmsConfig(allow_http=True, allow_private_targets=True)


class Receiver:
    """An HTTP server that records what it is sent and answers with the next status."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def raise_alarm(api: Api, endpoint: NotifyEndpointRecord, originator: str = "gw/device=f1") -> AlarmRecord:  # fmt: skip
    api.docs.save_rule(
        AlarmRuleRecord(
            "r1",
            "acme",
            "Freezer warm",
            "critical",
            True,
            False,
            True,
            {"condition": {"kind": "clock_flagged"}, "scope": {}},
            T0,
            T0,
            "t",
        )
    )
    api.docs.save_endpoint(endpoint)
    alarm = AlarmRecord(0, "acme", "r1", originator, "gw", "critical", "threshold", "Freezer warm", T0, {"value": 9.5})  # fmt: skip
    [(_, stored)] = api.docs.apply_alarms(AlarmChanges([alarm]), T0)
    return stored


def webhook(url: str) -> NotifyEndpointRecord:
    return NotifyEndpointRecord("ep", "acme", "ops", "webhook", {"url": url}, "whsec_test", "warning", True, T0)  # fmt: skip


async def test_a_webhook_is_signed_retried_with_the_same_key_and_its_failures_shown(
    api: Api, receiver: Receiver
) -> None:
    alarm = raise_alarm(api, webhook(receiver.url))
    clock = [T0 + S]
    deliveries = Deliveries(docs=api.docs, config=OPEN, clock=lambda: clock[0])
    receiver.answers = [500]
    async with httpx.AsyncClient(timeout=10) as client:
        assert await deliveries.deliver_due(client) == 1
        [ep] = api.docs.endpoints("acme")
        assert (ep.failures, ep.last_error, ep.pending, ep.delivered) == (1, "HTTP 500 from the receiver", 1, 0)  # fmt: skip
        assert await deliveries.deliver_due(client) == 0  # not due for another ~10 s
        clock[0] += 13 * S
        assert await deliveries.deliver_due(client) == 1
    [ep] = api.docs.endpoints("acme")
    assert (ep.failures, ep.delivered, ep.pending) == (0, 1, 0)
    (h1, _b1), (h2, b2) = receiver.requests
    # The same notification twice, under one key a receiver can drop repeats by.
    assert h1["x-outpost-delivery"] == h2["x-outpost-delivery"] == f"alarm-{alarm.id}-raised-ep"
    assert h2["idempotency-key"] == h2["x-outpost-delivery"]
    payload = json.loads(b2)
    assert (payload["event"], payload["alarm"]["originator"], payload["alarm"]["details"]) == ("raised", "gw/device=f1", {"value": 9.5})  # fmt: skip
    # The signature: HMAC-SHA256 with the endpoint's secret over "<t>.<body>".
    parts = dict(p.split("=", 1) for p in h2["x-outpost-signature"].split(","))
    mac = hmac.new(b"whsec_test", f"{parts['t']}.".encode() + b2, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, parts["v1"])
    assert int(parts["t"]) == clock[0] // S


async def test_a_notification_nobody_takes_is_given_up_with_its_error_kept(
    api: Api, receiver: Receiver
) -> None:
    raise_alarm(api, webhook(receiver.url))
    clock = [T0]
    cfg = AlarmsConfig(allow_http=True, allow_private_targets=True, give_up_after_s=120)
    deliveries = Deliveries(docs=api.docs, config=cfg, clock=lambda: clock[0])
    receiver.answers = [503] * 20
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(20):
            await deliveries.deliver_due(client)
            clock[0] += 3600 * S
    [note] = api.docs.notifications("acme")
    assert note.given_up
    assert note.last_error == "HTTP 503 from the receiver"
    assert 2 <= len(receiver.requests) <= 6  # tried with backoff, then no more
    assert deliveries.given_up == 1


async def test_webhooks_into_the_collectors_own_network_are_refused(api: Api, receiver: Receiver) -> None:  # fmt: skip
    op = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    for url, problem in (
        ("http://hooks.example.com/x", "plain http is refused"),
        ("https://127.0.0.1/x", "not a public address"),
        ("https://[::1]/x", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://user:pw@hooks.example.com/x", "credentials in the URL"),
        ("ftp://hooks.example.com/x", "give an https:// URL"),
    ):
        r = await api.client.post("/api/v1/notification-endpoints", json={"name": "x", "kind": "webhook", "url": url}, headers=op)  # fmt: skip
        assert r.status_code == 422, url
        assert [p["field"] for p in r.json()["problems"]] == ["url"]
        assert problem in r.json()["problems"][0]["problem"], (url, r.json())
    # A name that resolves to a private address is refused when it is sent, nothing reaches it.
    port = receiver.server.server_port
    raise_alarm(api, webhook(f"https://localhost:{port}/hook"))
    deliveries = Deliveries(docs=api.docs, config=AlarmsConfig(), clock=lambda: T0)
    async with httpx.AsyncClient(timeout=10) as client:
        await deliveries.deliver_due(client)
    [ep] = api.docs.endpoints("acme")
    assert "not a public address" in ep.last_error
    assert receiver.requests == []


async def test_an_endpoint_is_made_with_its_secret_shown_once_and_tested(
    api: Api, receiver: Receiver
) -> None:
    op = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    # The fixture's API refuses http; this test's endpoint is saved as the API would save it.
    url = "https://hooks.example.com/services/T0/B0/s3cr3tT0ken?x=1"  # the URL holds a token
    r = await api.client.post("/api/v1/notification-endpoints", json={"name": "ops", "kind": "webhook", "url": url, "min_severity": "major"}, headers=op)  # fmt: skip
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["secret"].startswith("whsec_")
    listed = (await api.client.get("/api/v1/notification-endpoints", headers=op)).json()
    assert "secret" not in listed[0]
    assert made["secret"] not in json.dumps(listed)
    assert made["url"] == listed[0]["url"] == "https://hooks.example.com/…"
    assert "s3cr3tT0ken" not in json.dumps(listed) + r.text
    assert "s3cr3tT0ken" not in json.dumps([e.detail for e in api.docs.audit_log("acme")])
    assert (await api.get("/api/v1/notification-endpoints", token="operator-b")).json() == []
    assert (await api.get("/api/v1/notification-endpoints", token="viewer-a")).status_code == 403
    # Pointed at the test's receiver, a test notification arrives, signed with that secret.
    [record] = api.docs.endpoints("acme")
    api.docs.save_endpoint(dataclasses.replace(record, target={"url": receiver.url}))
    r = await api.client.post(f"/api/v1/notification-endpoints/{made['id']}/test", headers=op)
    assert r.status_code == 202
    async with httpx.AsyncClient(timeout=10) as client:
        await Deliveries(docs=api.docs, config=OPEN).deliver_due(client)
    [(headers, body)] = receiver.requests
    assert json.loads(body)["event"] == "test"
    parts = dict(p.split("=", 1) for p in headers["x-outpost-signature"].split(","))
    mac = hmac.new(made["secret"].encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    assert mac.hexdigest() == parts["v1"]
    [delivery] = (await api.client.get(f"/api/v1/notification-endpoints/{made['id']}/deliveries", headers=op)).json()  # fmt: skip
    assert (delivery["event"], delivery["attempts"], delivery["given_up"]) == ("test", 1, False)
    assert delivery["delivered"] is not None


async def test_an_email_arrives_at_a_real_smtp_server_once_per_notification(api: Api) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    got: list[Any] = []

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            got.append(message)

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        alarm = raise_alarm(api, NotifyEndpointRecord("mail", "acme", "on call", "email", {"to": ["oncall@example.com"]}, "", "warning", True, T0))  # fmt: skip
        smtp = SmtpConfig(host="127.0.0.1", port=port, security="none", from_address="outpost@example.net")  # fmt: skip
        deliveries = Deliveries(docs=api.docs, config=AlarmsConfig(), smtp=smtp)
        async with httpx.AsyncClient() as client:
            assert await deliveries.deliver_due(client) == 1
            assert await deliveries.deliver_due(client) == 0
    finally:
        controller.stop()
    [message] = got
    assert message["To"] == "oncall@example.com"
    assert message["Subject"] == "[Outpost] CRITICAL raised: Freezer warm on gw/device=f1"
    assert f"alarm-{alarm.id}-raised-mail" in message["Message-ID"]
    assert "value: 9.5" in message.get_payload()
    [ep] = api.docs.endpoints("acme")
    assert (ep.delivered, ep.failures) == (1, 0)
