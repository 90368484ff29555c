"""Alarm rules evaluated on the gateway (docs/alarms.md, "At the edge").

Each reading handed to the buffer is checked against the rules of the ``alarms`` section (sent
by the collector in the signed config). A raise or a clear becomes an ``alarm`` event in the
same commit as the readings — shipped with its own time whenever the uplink allows — and,
with ``alarms.local_broker``, a message on the site's broker for local automation:
``<topic_prefix>/<gateway>/<rule id>``, JSON, retained (the current state of each rule).

The state (open or not, held since) lives in memory: after a restart the first readings set it
again, and the collector, which evaluates the same rules on the same readings, clears what the
gateway no longer knows it raised.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from outpost_iot import wire

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
            self._publisher.publish(out)
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

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


class _LocalPublisher:
    """Publishes alarm events on the site's broker; never blocks the caller, never raises."""

    def __init__(self, url: str, prefix: str, gateway_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        parts = urlsplit(url)
        self._prefix = f"{prefix}/{gateway_id}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"outpost-alarms-{gateway_id}")  # fmt: skip
        self._client.reconnect_delay_set(1, 30)
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0
        try:
            self._client.connect_async(parts.hostname or "127.0.0.1", parts.port or 1883)
            self._client.loop_start()
        except (OSError, ValueError) as exc:
            _log.warning("cannot reach the site broker %s for alarms: %s", url, exc)

    def publish(self, events: Sequence[wire.Event]) -> None:
        with self._lock:
            for e in events:
                topic = f"{self._prefix}/{e.body.get('rule')}"
                payload = orjson.dumps({"ts": e.ts / 1e9, **e.body})
                info = self._client.publish(topic, payload, qos=1, retain=True)
                if info.rc == 0 or info.rc == 4:  # sent, or queued until it reconnects
                    self.published += 1
                else:
                    self.failed += 1

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
