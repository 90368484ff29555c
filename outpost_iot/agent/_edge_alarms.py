"""Alarm rules evaluated on the gateway (docs/alarms.md, "At the edge").

Each reading handed to the buffer is checked against the rules of the ``alarms`` section (sent
by the collector in the signed config). A raise or a clear becomes an ``alarm`` event in the
same commit as the readings — shipped with its own time whenever the uplink allows — and,
with ``alarms.local_broker``, a message on the site's broker for local automation (sent by
:meth:`EdgeAlarms.run`, a task of the agent):
``<topic_prefix>/<gateway>/<rule id>``, JSON, retained (the current state of each rule).

The state (open or not, held since) lives in memory: after a restart the first readings set it
again, and the collector, which evaluates the same rules on the same readings, clears what the
gateway no longer knows it raised.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson

from outpost_iot import mqtt, wire

_log = logging.getLogger("outpost.agent.alarms")


class EdgeAlarms:
    """The gateway's evaluator of its edge rules."""

    def __init__(self, gateway_id: str, config: wire.EdgeAlarms) -> None:
        self._gateway = gateway_id
        self._rules = list(config.rules)
        self._open: set[tuple[str, str]] = set()
        self._since: dict[tuple[str, str], int] = {}
        self._publisher = _LocalPublisher(config.local_broker, config.topic_prefix, gateway_id) if config.local_broker and self._rules else None  # fmt: skip
        self.raised = 0
        self.cleared = 0
        self._invalid = 0

    def check(self, readings: Sequence[wire.Reading]) -> tuple[list[wire.Event], int]:
        """The alarm events these readings cause (in their time order), and how many could not
        be made into an event (counted by the caller as ``invalid_event`` drops)."""
        if not self._rules:
            return [], 0
        out: list[wire.Event] = []
        self._invalid = 0
        for r in sorted(readings, key=lambda x: x.ts):
            for rule in self._rules:
                if not rule.matches(r.measurement, r.tags):
                    continue
                v = r.fields.get(rule.field)
                if v is None or isinstance(v, bool | str):
                    continue
                event = self._step(rule, wire.series_originator(self._gateway, r.tags), r.ts, float(v))  # fmt: skip
                if event is not None:
                    out.append(event)
        if out and self._publisher is not None:
            self._publisher.put(out)
        return out, self._invalid

    def _step(self, rule: wire.EdgeRule, originator: str, ts: int, v: float) -> wire.Event | None:
        key = (rule.id, originator)
        up = rule.above is not None
        level = rule.above if up else rule.below
        assert level is not None
        clear_at = rule.clear if rule.clear is not None else level
        if key in self._open:
            if (v < clear_at) if up else (v > clear_at):
                self._open.discard(key)
                self.cleared += 1
                return self._event(rule, originator, ts, "cleared", value=v)
            return None
        if (v > level) if up else (v < level):
            since = self._since.setdefault(key, ts)
            if ts - since >= int(rule.for_s * 1e9):
                self._since.pop(key, None)
                self._open.add(key)
                self.raised += 1
                return self._event(rule, originator, ts, "raised", value=v, level=level, since=since / 1e9)  # fmt: skip
        else:
            self._since.pop(key, None)
        return None

    def _event(self, rule: wire.EdgeRule, originator: str, ts: int, state: str, **details: Any) -> wire.Event | None:  # fmt: skip
        try:
            return self._made(rule, originator, ts, state, details)
        except ValueError as exc:  # a value the wire refuses (a reading's own bounds): counted
            self._invalid += 1
            _log.warning("alarm %s on %s cannot be sent: %s", rule.id, wire.printable(originator[:200]), exc)  # fmt: skip
            return None

    def _made(self, rule: wire.EdgeRule, originator: str, ts: int, state: str, details: dict[str, Any]) -> wire.Event:  # fmt: skip
        return wire.Event(
            id=uuid.uuid4().hex,
            type=wire.ALARM_EVENT,
            ts=ts,
            source=originator[: wire.limits.MAX_SOURCE_CHARS],
            body={
                "rule": rule.id,
                "name": rule.name,
                "severity": rule.severity,
                "state": state,
                "originator": originator,
                **details,
            },
        )

    async def run(self) -> None:
        """Publish on the site's broker, when configured (until cancelled)."""
        if self._publisher is not None:
            await self._publisher.run()


class _LocalPublisher:
    """Publishes alarm events on the site's broker, on the project's MQTT client and backoff
    like the MQTT sources: a bounded queue the caller never waits on (past ``QUEUE`` messages
    the oldest are dropped and counted), sent in order by one task that reconnects."""

    QUEUE = 1000

    def __init__(self, url: str, prefix: str, gateway_id: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self._prefix = f"{prefix}/{gateway_id}"
        self._identifier = f"outpost-alarms-{gateway_id}"
        self._pending: deque[tuple[str, bytes]] = deque()
        self._wake: asyncio.Event | None = None
        self._backoff = mqtt.Backoff(base=1.0, cap=30.0)
        self.connected = asyncio.Event()
        self.published = 0
        self.dropped = 0

    def put(self, events: Sequence[wire.Event]) -> None:
        for e in events:
            if len(self._pending) >= self.QUEUE:
                self._pending.popleft()
                self.dropped += 1
            topic = f"{self._prefix}/{e.body.get('rule')}"
            self._pending.append((topic, orjson.dumps({"ts": e.ts / 1e9, **e.body})))
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled."""
        self._wake = asyncio.Event()
        while True:
            try:
                await mqtt.run_session(self._session(), name="alarms:site-broker")
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                _log.warning("site broker %s:%d for alarms: %s", self.host, self.port, exc)
            await asyncio.sleep(self._backoff.next_delay())

    async def _session(self) -> None:
        assert self._wake is not None
        async with mqtt.Client(self.host, self.port, identifier=self._identifier, keepalive=30) as client:  # fmt: skip
            self._backoff.connected()
            self.connected.set()
            while True:
                while self._pending:
                    topic, payload = self._pending[0]
                    await client.publish(topic, payload, qos=1, retain=True)
                    self._pending.popleft()
                    self.published += 1
                self._wake.clear()
                await self._wake.wait()
