"""Delivering notifications: webhooks (JSON signed with HMAC-SHA256) and email (SMTP).

The outbox (``stores._alarm_store``) holds one row per notification and endpoint, written with
the alarm change. This loop claims the rows that are due (leased, so another replica does not
send them meanwhile), sends them, and marks each delivered or schedules another attempt with
backoff (10 s doubling to an hour) until ``[alarms] give_up_after_s``; failures are counted on
the endpoint, which the API shows. Every delivery of one notification carries the same key
(``X-Outpost-Delivery`` and ``Idempotency-Key``; the email's ``Message-ID``), so a receiver
that gets one twice can drop the repeat.

A webhook request is signed like Stripe's: ``X-Outpost-Signature: t=<unix s>,v1=<hex>``, the
HMAC-SHA256 with the endpoint's secret of ``"<t>.<body>"``. Receivers check it and the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from outpost_iot import wire
from outpost_iot.collector._config import AlarmsConfig, SmtpConfig
from outpost_iot.collector.stores import DocumentStore, NotificationRecord, NotifyEndpointRecord

_log = logging.getLogger("outpost.collector.notify")
LEASE_S = 120.0
BATCH = 50
MAX_PARALLEL = 8


class Undeliverable(Exception):
    """This attempt failed; the message says why (it is shown on the endpoint)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def check_webhook_url(url: str, cfg: AlarmsConfig) -> str | None:
    """What is wrong with a webhook URL under this config (None: nothing)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "give an https:// URL"
    if parts.scheme == "http" and not cfg.allow_http:
        return "plain http is refused: use https (or set [alarms] allow_http)"
    if parts.username or parts.password:
        return "credentials in the URL are refused: the request is signed instead"
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return None  # a name: checked when it is resolved, at each delivery
    if not cfg.allow_private_targets and not address.is_global:
        return f"{address} is not a public address (set [alarms] allow_private_targets)"
    return None


async def _public(host: str, port: int) -> None:
    """Refuse a name that resolves to a loopback, private, link-local or reserved address."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Undeliverable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            raise Undeliverable(
                f"{host} resolves to {address}, not a public address"
                " (set [alarms] allow_private_targets)"
            )


class Deliveries:
    """The delivery loop of one collector (every replica runs one)."""

    def __init__(
        self,
        *,
        docs: DocumentStore,
        config: AlarmsConfig,
        smtp: SmtpConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._docs = docs
        self._cfg = config
        self._smtp = smtp
        self._clock = clock
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failed = 0
        self.given_up = 0

    def wake(self) -> None:
        """Something is queued: look now rather than at the next tick (thread-safe)."""
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self, tick_s: float = 1.0) -> None:
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            timeout=self._cfg.timeout_s, follow_redirects=False, verify=True
        ) as client:
            while True:
                try:
                    await self.deliver_due(client)
                except Exception as exc:  # the loop must outlive any failure
                    _log.error("notification delivery failed: %s", exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick_s)

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """Send what is due now; returns how many were attempted."""
        now = self._clock()
        due = await asyncio.to_thread(
            self._docs.claim_notifications, now, int(LEASE_S * 1e9), BATCH
        )
        gate = asyncio.Semaphore(MAX_PARALLEL)

        async def one(note: NotificationRecord, endpoint: NotifyEndpointRecord) -> None:
            async with gate:
                await self._attempt(client, note, endpoint)

        async with asyncio.TaskGroup() as tg:
            for note, endpoint in due:
                tg.create_task(one(note, endpoint))
        return len(due)

    async def _attempt(
        self, client: httpx.AsyncClient, note: NotificationRecord, endpoint: NotifyEndpointRecord
    ) -> None:
        try:
            if not endpoint.enabled:
                raise Undeliverable("the endpoint is disabled")
            if endpoint.kind == "webhook":
                await self._webhook(client, note, endpoint)
            elif endpoint.kind == "email":
                await asyncio.to_thread(self._email, note, endpoint)
            else:
                raise Undeliverable(f"unknown endpoint kind {endpoint.kind!r}")
        except Undeliverable as exc:
            await self._failed(note, endpoint, str(exc))
        except Exception as exc:  # a bug here must not lose the notification
            _log.exception("notification %s: %s", note.key, exc)
            await self._failed(note, endpoint, f"internal error: {type(exc).__name__}")
        else:
            self.delivered += 1
            await asyncio.to_thread(
                self._docs.notification_sent, note.id, endpoint.id, self._clock()
            )

    async def _failed(self, note: NotificationRecord, endpoint: NotifyEndpointRecord, why: str) -> None:  # fmt: skip
        now = self._clock()
        attempts = note.attempts + 1
        backoff = min(3600.0, 10.0 * 2 ** min(attempts - 1, 12)) * random.uniform(0.8, 1.2)
        give_up = (now - note.created_ns) / 1e9 + backoff > self._cfg.give_up_after_s
        next_ns = None if give_up else now + int(backoff * 1e9)
        if give_up:
            self.given_up += 1
            _log.error(
                "notification %s to %s given up after %d attempts: %s",
                note.key, wire.printable(endpoint.name), attempts, why,
            )  # fmt: skip
        else:
            self.failed += 1
            _log.warning(
                "notification %s to %s failed (attempt %d, next in %.0f s): %s",
                note.key, wire.printable(endpoint.name), attempts, backoff, why,
            )  # fmt: skip
        await asyncio.to_thread(
            self._docs.notification_failed, note.id, endpoint.id, now, next_ns, why
        )

    async def _webhook(
        self, client: httpx.AsyncClient, note: NotificationRecord, endpoint: NotifyEndpointRecord
    ) -> None:
        url = str(endpoint.target.get("url", ""))
        problem = check_webhook_url(url, self._cfg)
        if problem:
            raise Undeliverable(problem)
        parts = urlsplit(url)
        if not self._cfg.allow_private_targets:
            await _public(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))  # fmt: skip
        body = orjson.dumps({**note.payload, "key": note.key, "tenant": note.tenant})
        stamp = self._clock() // 10**9
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "outpost-collector",
            "X-Outpost-Event": note.event,
            "X-Outpost-Delivery": note.key,
            "Idempotency-Key": note.key,
            "X-Outpost-Signature": sign(endpoint.secret, stamp, body),
        }
        try:
            r = await client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise Undeliverable(f"no answer within {self._cfg.timeout_s:g} s") from None
        except httpx.HTTPError as exc:  # the class only: a message may quote the URL's token
            raise Undeliverable(f"cannot reach the receiver ({type(exc).__name__})") from None
        if not 200 <= r.status_code < 300:
            raise Undeliverable(f"HTTP {r.status_code} from the receiver")

    def _email(self, note: NotificationRecord, endpoint: NotifyEndpointRecord) -> None:
        smtp = self._smtp
        if smtp is None:
            raise Undeliverable("this collector has no [smtp] server configured")
        to = [str(a) for a in endpoint.target.get("to", [])]
        msg = EmailMessage()
        msg["From"] = smtp.from_address
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject(note.payload)
        domain = smtp.from_address.rsplit("@", 1)[-1]
        msg["Message-ID"] = make_msgid(idstring=note.key, domain=domain)
        msg["X-Outpost-Delivery"] = note.key
        msg.set_content(text(note.payload))
        context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
        try:
            if smtp.security == "tls":
                server: smtplib.SMTP = smtplib.SMTP_SSL(
                    smtp.host, smtp.port, timeout=smtp.timeout_s, context=context
                )
            else:
                server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
            with server:
                if smtp.security == "starttls":
                    server.starttls(context=context)
                if smtp.username:
                    server.login(smtp.username, smtp.password.get_secret_value())
                server.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise Undeliverable(f"SMTP: {type(exc).__name__}: {exc}"[:300]) from None


def subject(payload: dict[str, Any]) -> str:
    if payload.get("event") == "test":
        return "[Outpost] Test notification"
    a = payload.get("alarm", {})
    name = wire.printable(str(a.get("name", "")))[:120]
    return f"[Outpost] {str(a.get('severity', '')).upper()} {payload.get('event')}: {name} on {wire.printable(str(a.get('originator', '')))[:120]}"  # fmt: skip


def text(payload: dict[str, Any]) -> str:
    if payload.get("event") == "test":
        return "A test notification from Outpost: this endpoint receives alarm notifications.\n"
    a = payload.get("alarm", {})
    lines = [
        f"Alarm {a.get('id')}: {a.get('name')}",
        f"Severity: {a.get('severity')}",
        f"Status: {a.get('status')} ({payload.get('event')})",
        f"Originator: {a.get('originator')}",
        f"Gateway: {a.get('gateway_id')}",
        f"Raised: {_when(a.get('raised'))}",
    ]
    if a.get("cleared"):
        lines.append(f"Cleared: {_when(a.get('cleared'))}")
    for k, v in (a.get("details") or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(wire.printable(line) for line in lines) + "\n"


def _when(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
