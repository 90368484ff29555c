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
from pathlib import Path
from typing import Any

import httpx
import pytest

from outpost_iot.collector import _notify
from outpost_iot.collector._config import AlarmsConfig, SmtpConfig
from outpost_iot.collector._notify import Deliveries
from outpost_iot.collector.stores import (
    AlarmChanges,
    AlarmRecord,
    AlarmRuleRecord,
    NotificationRecord,
    NotifyEndpointRecord,
)
from outpost_iot.dev._processes import free_port
from outpost_iot.provisioning._ca import CertificateAuthority
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


# -- the retry schedule, the answers that count, and what fails without sending ------------------


def two_endpoints(api: Api, url: str) -> None:
    """An alarm raised with two webhook endpoints: two notifications."""
    api.docs.save_endpoint(dataclasses.replace(webhook(url), id="ep2", name="ops 2"))
    raise_alarm(api, webhook(url))


async def test_retries_wait_10_s_doubling_to_an_hour_with_jitter_and_stop_past_the_age_limit(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the jitter at its top (×1.2): 12 s, 24 s, 48 s … 4,320 s; a failure whose next try
    would come after ``give_up_after_s`` from the notification's making gives it up."""
    monkeypatch.setattr(_notify.random, "uniform", lambda low, high: high)
    raise_alarm(api, webhook(receiver.url))
    clock = [T0]
    cfg = AlarmsConfig(allow_http=True, allow_private_targets=True, give_up_after_s=30 * 86400)
    deliveries = Deliveries(docs=api.docs, config=cfg, clock=lambda: clock[0])
    receiver.answers = [500] * 14
    waits = []
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(14):
            assert await deliveries.deliver_due(client) == 1
            [note] = api.docs.notifications("acme")
            waits.append((note.next_ns - clock[0]) / S)
            clock[0] = note.next_ns
    assert waits == [12, 24, 48, 96, 192, 384, 768, 1536, 3072, 4320, 4320, 4320, 4320, 4320]
    assert (deliveries.failed, deliveries.given_up, deliveries.delivered) == (14, 0, 0)


async def test_a_notification_is_given_up_only_when_its_next_try_would_pass_the_limit(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_notify.random, "uniform", lambda low, high: high)
    two_endpoints(api, receiver.url)
    clock = [T0]
    cfg = AlarmsConfig(allow_http=True, allow_private_targets=True, give_up_after_s=60)
    deliveries = Deliveries(docs=api.docs, config=cfg, clock=lambda: clock[0])
    receiver.answers = [500] * 20
    async with httpx.AsyncClient(timeout=10) as client:
        await deliveries.deliver_due(client)  # at 0 s: next at 12 s
        clock[0] = T0 + 36 * S
        await deliveries.deliver_due(client)  # at 36 s: next at 36 + 24 = 60 s, the limit itself
        assert not any(n.given_up for n in api.docs.notifications("acme"))
        assert (deliveries.failed, deliveries.given_up) == (4, 0)
        clock[0] = T0 + 60 * S
        await deliveries.deliver_due(client)  # at 60 s: next would be at 108 s
    notes = api.docs.notifications("acme")
    assert [(n.given_up, n.attempts, n.last_error) for n in notes] == [(True, 3, "HTTP 500 from the receiver")] * 2  # fmt: skip
    assert (deliveries.failed, deliveries.given_up, deliveries.delivered) == (4, 2, 0)


async def test_only_a_2xx_answer_delivers(api: Api, receiver: Receiver) -> None:
    two_endpoints(api, receiver.url)
    clock = [T0]
    deliveries = Deliveries(docs=api.docs, config=OPEN, clock=lambda: clock[0])
    async with httpx.AsyncClient(timeout=10) as client:
        receiver.answers = [300, 300]
        await deliveries.deliver_due(client)
        errors = [n.last_error for n in api.docs.notifications("acme")]
        assert errors == ["HTTP 300 from the receiver"] * 2
        clock[0] += 3600 * S
        receiver.answers = [200, 299]
        await deliveries.deliver_due(client)
    assert all(n.delivered_ns is not None for n in api.docs.notifications("acme"))
    assert (deliveries.delivered, deliveries.failed) == (2, 2)


async def test_what_cannot_be_sent_fails_with_the_reason_and_is_kept_for_the_next_try(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disabled endpoint, a URL this collector's config now refuses, an email without
    ``[smtp]``, and a bug in the delivery code: each a failure with its reason, counted, the
    notification kept; nothing reaches the receiver."""
    alarm = raise_alarm(api, webhook(receiver.url))
    api.docs.save_endpoint(dataclasses.replace(webhook(receiver.url), enabled=False))
    mail = NotifyEndpointRecord("mail", "acme", "on call", "email", {"to": ["a@example.com"]}, "", "warning", True, T0)  # fmt: skip
    api.docs.save_endpoint(mail)
    api.docs.enqueue_notification(NotificationRecord(0, "acme", mail.id, None, "test", "test-mail", {"event": "test"}, T0))  # fmt: skip
    strict = Deliveries(docs=api.docs, config=AlarmsConfig(), clock=lambda: T0)
    async with httpx.AsyncClient(timeout=10) as client:
        await strict.deliver_due(client)
        errors = {n.endpoint_id: n.last_error for n in api.docs.notifications("acme")}
        assert errors == {"ep": "the endpoint is disabled", "mail": "this collector has no [smtp] server configured"}  # fmt: skip
        api.docs.save_endpoint(webhook(receiver.url))  # enabled, but http and on this machine
        later = Deliveries(docs=api.docs, config=AlarmsConfig(), clock=lambda: T0 + 3600 * S)
        await later.deliver_due(client)
        [note] = [n for n in api.docs.notifications("acme") if n.endpoint_id == "ep"]
        assert note.last_error.startswith("plain http is refused")

        async def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(Deliveries, "_webhook", broken)
        buggy = Deliveries(docs=api.docs, config=OPEN, clock=lambda: T0 + 7200 * S)
        await buggy.deliver_due(client)
    [note] = [n for n in api.docs.notifications("acme") if n.endpoint_id == "ep"]
    assert (note.last_error, note.attempts, note.given_up, note.alarm_id) == ("internal error: RuntimeError", 3, False, alarm.id)  # fmt: skip
    assert (strict.failed, later.failed, buggy.failed) == (2, 2, 2)  # the email fails each time too
    assert receiver.requests == []


async def test_a_webhook_url_with_any_credentials_is_refused_and_names_are_resolved_before_sending(
    api: Api,
) -> None:
    for url in ("https://user@hooks.example.com/x", "https://:pw@hooks.example.com/x"):
        assert "credentials in the URL" in (_notify.check_webhook_url(url, OPEN) or "")
    assert _notify.check_webhook_url("https://hooks.example.com/x", AlarmsConfig()) is None
    await _notify._public("8.8.8.8", 443)  # a public address: allowed
    for host in ("localhost", "127.0.0.1", "10.1.2.3"):
        with pytest.raises(_notify.Undeliverable, match="not a public address"):
            await _notify._public(host, 443)


async def test_an_email_says_what_the_alarm_is_in_its_subject_and_lines(api: Api) -> None:
    payload = {
        "event": "cleared",
        "alarm": {"id": 7, "name": "Freezer warm", "severity": "critical", "status": "cleared",
                  "originator": "gw-1/device=f1", "gateway_id": "gw-1", "raised": 1796680000.5,
                  "cleared": 1796683600.0, "details": {"value": -18.0}},
    }  # fmt: skip
    assert _notify.subject(payload) == "[Outpost] CRITICAL cleared: Freezer warm on gw-1/device=f1"
    assert _notify.text(payload).splitlines() == [
        "Alarm 7: Freezer warm",
        "Severity: critical",
        "Status: cleared (cleared)",
        "Originator: gw-1/device=f1",
        "Gateway: gw-1",
        "Raised: 2026-12-07 21:46:40 UTC",
        "Cleared: 2026-12-07 22:46:40 UTC",
        "value: -18.0",
    ]
    raised = {**payload, "event": "raised", "alarm": {**payload["alarm"], "cleared": None, "raised": "?"}}  # fmt: skip
    assert "Cleared" not in _notify.text(raised)
    assert "Raised: -" in _notify.text(raised)
    assert _notify.subject({"event": "test"}) == "[Outpost] Test notification"


# -- email over TLS, as mail servers want it -----------------------------------------------------


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two real SMTP servers (aiosmtpd) with a certificate from a CA of the test's own: one
    that requires STARTTLS and a login, one that speaks TLS from the start."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca = CertificateAuthority.create("test mail CA")
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    ca.issue_to_files("mail", tmp_path / "mail.pem", tmp_path / "mail.key", server=True, ip_addresses=("127.0.0.1",))  # fmt: skip
    got: list[Any] = []
    logins: list[tuple[bytes, bytes]] = []

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            got.append(message)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        assert isinstance(auth, LoginPassword)
        logins.append((auth.login, auth.password))
        return AuthResult(success=auth.password == b"s3cret", handled=False)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "mail.pem", tmp_path / "mail.key")
    starttls = Controller(Keep(), hostname="127.0.0.1", port=free_port(), tls_context=context,
                          require_starttls=True, authenticator=authenticator, auth_require_tls=True)  # fmt: skip
    implicit = Controller(Keep(), hostname="127.0.0.1", port=free_port(), ssl_context=context)
    starttls.start()
    implicit.start()
    try:
        yield {"ca": tmp_path / "ca.pem", "starttls": starttls.port, "tls": implicit.port, "got": got, "logins": logins}  # fmt: skip
    finally:
        starttls.stop()
        implicit.stop()


async def test_an_email_goes_over_starttls_with_a_login_or_tls_and_never_to_an_unverified_server(
    api: Api, tls_smtp: dict[str, Any]
) -> None:
    raise_alarm(api, NotifyEndpointRecord("mail", "acme", "on call", "email", {"to": ["oncall@example.com"]}, "", "warning", True, T0))  # fmt: skip
    mail = {"host": "127.0.0.1", "from_address": "outpost@example.net", "username": "ops"}

    async def send(clock: int, **smtp: Any) -> str:
        d = Deliveries(docs=api.docs, config=AlarmsConfig(), smtp=SmtpConfig(**{**mail, **smtp}), clock=lambda: clock)  # fmt: skip
        async with httpx.AsyncClient() as client:
            await d.deliver_due(client)
        [note] = api.docs.notifications("acme")
        return note.last_error if note.delivered_ns is None else "delivered"

    # The system's trust store does not know the test's CA: refused, nothing sent.
    assert "CERTIFICATE_VERIFY_FAILED" in await send(T0, port=tls_smtp["starttls"], password="s3cret")  # fmt: skip
    assert "CERTIFICATE_VERIFY_FAILED" in await send(T0 + 3600 * S, port=tls_smtp["tls"], security="tls")  # fmt: skip
    assert tls_smtp["got"] == []
    assert tls_smtp["logins"] == []
    # A wrong password: the server's refusal, the password nowhere in it.
    error = await send(T0 + 7200 * S, port=tls_smtp["starttls"], password="wrong", ca_file=tls_smtp["ca"])  # fmt: skip
    assert error.startswith("SMTP: SMTPAuthenticationError")
    assert "wrong" not in error
    assert set(tls_smtp["logins"]) == {(b"ops", b"wrong")}  # (smtplib tries PLAIN, then LOGIN)
    assert await send(T0 + 3 * 3600 * S, port=tls_smtp["starttls"], password="s3cret", ca_file=tls_smtp["ca"]) == "delivered"  # fmt: skip
    [message] = tls_smtp["got"]
    assert (message["From"], message["To"]) == ("outpost@example.net", "oncall@example.com")
    assert message["X-Outpost-Delivery"].startswith("alarm-")
    assert message["Message-ID"].endswith("@example.net>")
    # Implicit TLS (port 465 style), verified against the CA given.
    raise_alarm(api, NotifyEndpointRecord("mail", "acme", "on call", "email", {"to": ["oncall@example.com"]}, "", "warning", True, T0), originator="gw/device=f9")  # fmt: skip
    d = Deliveries(docs=api.docs, config=AlarmsConfig(), smtp=SmtpConfig(**{**mail, "username": "", "port": tls_smtp["tls"], "security": "tls", "ca_file": tls_smtp["ca"]}))  # fmt: skip
    async with httpx.AsyncClient() as client:
        assert await d.deliver_due(client) == 1
    assert len(tls_smtp["got"]) == 2
    assert d.delivered == 1
