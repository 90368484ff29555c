"""Applying a profile: raw device data → readings and events.

The engine is transport-agnostic. A source hands it a *key* (an MQTT topic, an HTTP endpoint,
an SNMP table, a host section), the decoded payload and the capture time; the profile's rules
whose ``match`` fits the key turn the payload into readings and events. The only state kept is
what rates and availability need: the previous value of each counter, the last known state of
each device; both are bounded, however many devices or series a site invents.

Whatever a device sends, applying a profile never raises: a reading or event past a limit of the
wire contract (a name or tag too long, too many fields, an event nested too deep) is dropped and
counted by reason in the collection's ``drops``, and logged once a minute per reason. An integer
beyond the signed 64-bit range (an SNMP Counter64 or an energy meter near 2^64) becomes a float:
the stores keep int64, and a float keeps the magnitude (exact to 53 bits).
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from agent.profiles._model import EventRule, FieldSpec, Profile, ReadingRule
from agent.sources._base import Collection
from wire import BoundedDict, Event, FieldValue, LogThrottle, Reading, limits, printable

# Series, counters and devices one mapper remembers (previous counter values, availability).
MAX_TRACKED = 10_000
DROP_INVALID_READING = "invalid_reading"
DROP_INVALID_EVENT = "invalid_event"
DROP_MAPPING_ERROR = "mapping_error"

_MISSING = object()
_SPLIT_PATH = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).replace("-", "_").replace(" ", "_").lower()


def get_path(item: Any, path: str) -> Any:
    """``$`` → the item; ``.a.b[0]`` → nested member; missing → ``_MISSING``."""
    if path == "$":
        return item
    current = item
    for member, index in _SPLIT_PATH.findall(path):
        if member:
            if not isinstance(current, dict) or member not in current:
                return _MISSING
            current = current[member]
        else:
            i = int(index)
            if not isinstance(current, list) or i >= len(current):
                return _MISSING
            current = current[i]
    return current


@dataclass(frozen=True)
class _Template:
    """A match template compiled to a regex; placeholders capture one path level (or part)."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, template: str, variables: dict[str, str]) -> _Template:
        text = _substitute(template, variables)
        parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", text)
        pattern = "".join(
            f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") and p.endswith("}") else re.escape(p)
            for p in parts
        )
        return cls(text, re.compile(f"^{pattern}$"))

    def match(self, key: str) -> dict[str, str] | None:
        m = self.regex.match(key)
        return m.groupdict() if m else None

    def mqtt_filter(self) -> str:
        return "/".join("+" if "{" in level else level for level in self.text.split("/"))


def _substitute(template: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        template = template.replace("{" + name + "}", value)
    return template


class RateTracker:
    """Per-second rates of counters, across polls. Wraps are unwrapped; resets are skipped."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self._last: BoundedDict[tuple[object, ...], tuple[float, int]] = BoundedDict(max_tracked)

    def clear(self) -> None:
        """Forget every baseline: the device restarted and its counters began again."""
        self._last.clear()

    def rate(self, key: tuple[object, ...], value: float, ts: int, bits: int) -> float | None:
        previous = self._last.get(key)
        self._last[key] = (value, ts)
        if previous is None:
            return None  # the first sample only sets the baseline
        old, old_ts = previous
        elapsed = (ts - old_ts) / 1e9
        if elapsed <= 0:
            return None
        delta = value - old
        if delta < 0:
            modulus = 2.0**bits
            # A wrap: the old value was in the top half of the range and the new one is small.
            if old >= modulus / 2 and value < modulus / 2:
                delta = value + modulus - old
            else:
                return None  # the device restarted and its counters began again: no rate
        return delta / elapsed


class Mapper:
    """Applies one profile, with the device's variables (e.g. the MQTT topic prefix)."""

    def __init__(
        self,
        profile: Profile,
        *,
        variables: dict[str, str] | None = None,
        device: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        self.profile = profile
        self._log = logger or logging.getLogger(f"outpost.agent.profile.{profile.name}")
        self._logged = LogThrottle(60.0)  # each drop reason once a minute
        self.variables = {**profile.profile.variables, **(variables or {})}
        self.device = device
        self._readings = [(_Template.compile(r.match, self.variables), r) for r in profile.readings]
        self._events = [(_Template.compile(r.match, self.variables), r) for r in profile.events]
        self._availability = [
            (_Template.compile(a.match, self.variables), a) for a in profile.availability
        ]
        self.rates = RateTracker()
        self._state: BoundedDict[str, str] = BoundedDict(MAX_TRACKED)

    def mqtt_filters(self) -> list[str]:
        templates = [t for t, _ in self._readings] + [t for t, _ in self._events]
        templates += [t for t, _ in self._availability]
        return sorted({t.mqtt_filter() for t in templates})

    def apply(self, key: str, payload: Any, ts: int) -> Collection:
        """Readings and events from one message or response; never raises (see module doc)."""
        out = Collection()
        for template, rule in self._readings:
            captures = template.match(key)
            if captures is None or self._excluded(captures):
                continue
            try:
                for item, item_key in _select(payload, rule.select, rule.objects_only):
                    try:
                        reading = self._reading(rule, captures, item, item_key, ts)
                    except ValidationError as exc:
                        self._dropped(out, DROP_INVALID_READING, rule.measurement, exc)
                        continue
                    if reading is not None:
                        out.readings.append(reading)
            except Exception as exc:  # a payload the rule did not foresee: this rule only
                self._dropped(out, DROP_MAPPING_ERROR, rule.measurement, exc)
        for template, event_rule in self._events:
            captures = template.match(key)
            if captures is None or self._excluded(captures):
                continue
            try:
                event = self._event(event_rule, captures, payload, ts)
            except ValidationError as exc:
                self._dropped(out, DROP_INVALID_EVENT, event_rule.type, exc)
                continue
            except Exception as exc:
                self._dropped(out, DROP_MAPPING_ERROR, event_rule.type, exc)
                continue
            if event is not None:
                out.events.append(event)
        for template, avail in self._availability:
            captures = template.match(key)
            if captures is None or self._excluded(captures):
                continue
            try:
                self._availability_events(avail, captures, payload, ts, out)
            except ValidationError as exc:
                self._dropped(out, DROP_INVALID_EVENT, "availability", exc)
            except Exception as exc:
                self._dropped(out, DROP_MAPPING_ERROR, "availability", exc)
        return out

    def _availability_events(
        self, avail: Any, captures: dict[str, str], payload: Any, ts: int, out: Collection
    ) -> None:
        ctx = self._context(captures, None)
        for item, _ in _select(payload, avail.select, False):
            raw = get_path(item, avail.path)
            text = str(raw).strip().lower() if raw is not _MISSING else ""
            if text in (s.lower() for s in avail.online):
                state = "online"
            elif text in (s.lower() for s in avail.offline):
                state = "offline"
            else:
                continue
            device = (
                _render(avail.device, ctx, item)
                if avail.device
                else captures.get("device", self.device)
            )
            if not device:
                continue
            changed = self.availability_event(device, state, ts)
            if changed is not None:
                out.events.append(changed)

    def _dropped(self, out: Collection, reason: str, what: str, exc: Exception) -> None:
        """Count a reading or event that could not be made, and say why once a minute."""
        out.drops[reason] += 1
        if not self._logged.ready(reason):
            return
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            why = f"{loc}: {err['msg']}" if loc else err["msg"]
        else:
            why = f"{type(exc).__name__}: {exc}"
        self._log.warning(
            "%s: dropped a %s from %s (%s): %s",
            self.profile.name,
            "reading" if reason == DROP_INVALID_READING else "message",
            self.device or "a device",
            printable(what, 64),
            printable(why),
        )

    def availability_event(self, device: str, state: str, ts: int) -> Event | None:
        """An event when ``device`` changes between online and offline (not on repeats)."""
        if self._state.get(device) == state:
            return None
        event = Event(
            id=uuid.uuid4().hex,
            type="availability",
            ts=ts,
            source=device,
            body={"device": device, "state": state, "profile": self.profile.name},
        )
        self._state[device] = state  # only once the event is valid: it is sent on the next change
        return event

    def _excluded(self, captures: dict[str, str]) -> bool:
        return captures.get("device", "") in self.profile.mqtt.exclude_devices

    def _context(self, captures: dict[str, str], item_key: str | None) -> dict[str, str]:
        ctx = {**self.variables, **captures}
        if self.device and "device" not in ctx:
            ctx["device"] = self.device
        if item_key is not None:
            ctx["key"] = item_key
        return ctx

    def _reading(
        self,
        rule: ReadingRule,
        captures: dict[str, str],
        item: Any,
        item_key: str | None,
        ts: int,
    ) -> Reading | None:
        ctx = self._context(captures, item_key)
        tags: dict[str, str] = {}
        for name, template in rule.tags.items():
            value = _render(template, ctx, item)
            if value is not None:
                tags[name] = value
        fields: dict[str, FieldValue] = {}
        if rule.numeric_fields and isinstance(item, dict):
            for member, raw in item.items():
                if member not in rule.exclude and isinstance(raw, bool | int | float):
                    fields[snake(member)] = _fit(raw)
        for name, spec in rule.fields.items():
            spec_ = FieldSpec(path=spec) if isinstance(spec, str) else spec
            raw = get_path(item, spec_.path)
            if spec_.multiply is not None and raw is not _MISSING and raw is not None:
                raw = _product(raw, get_path(item, spec_.multiply))
            field_value = self._field(
                spec_,
                raw,
                (rule.measurement, tuple(sorted(tags.items())), name),
                ts,
            )
            if field_value is not None:
                fields[name] = field_value
        if not fields:
            return None
        return Reading(measurement=rule.measurement, tags=tags, fields=fields, ts=ts)

    def _field(
        self, spec: FieldSpec, raw: Any, key: tuple[object, ...], ts: int
    ) -> FieldValue | None:
        if raw is _MISSING or raw is None or isinstance(raw, dict | list):
            return None
        if spec.map:
            raw = spec.map.get(str(raw).lower() if isinstance(raw, bool) else str(raw))
            if raw is None:
                return None
        value = _convert(raw, spec.type)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None  # "nan" from a sensor warming up: no reading, not a broken batch
        if isinstance(value, int | float) and not isinstance(value, bool):
            if spec.rate:
                rate = self.rates.rate(key, float(value), ts, spec.counter_bits)
                return None if rate is None else rate * spec.scale
            if spec.scale != 1.0:
                value = value * spec.scale
            if spec.type == "int":
                value = round(value)  # KiB → bytes stays an integer
        return _fit(value)

    def _event(
        self, rule: EventRule, captures: dict[str, str], payload: Any, ts: int
    ) -> Event | None:
        for path, expected in rule.when.items():
            if get_path(payload, path) != expected:
                return None
        ctx = self._context(captures, None)
        if rule.body:
            body = {}
            for path in rule.body:
                value = get_path(payload, path)
                if value is not _MISSING:
                    body[path.rsplit(".", 1)[-1]] = value  # ".after.camera" → "camera"
        else:
            body = payload if isinstance(payload, dict) else {"value": payload}
        event_id = _render(rule.id, ctx, payload) if rule.id else None
        return Event(
            id=(event_id or uuid.uuid4().hex)[:128],
            type=rule.type,
            ts=ts,
            source=_render(rule.source, ctx, payload) or "",
            body=body,
        )


def _fit(value: FieldValue) -> FieldValue:
    """An integer the stores cannot keep (outside int64) becomes a float; see the module doc."""
    if type(value) is int and not limits.INT64_MIN <= value <= limits.INT64_MAX:
        return float(value)
    return value


def _product(raw: Any, factor: Any) -> Any:
    """``raw × factor`` for numbers (or numeric strings); missing when either is not a number."""
    try:
        if isinstance(raw, bool) or isinstance(factor, bool):
            return _MISSING
        return float(raw) * float(factor)
    except (TypeError, ValueError):
        return _MISSING


def _select(payload: Any, select: str, objects_only: bool) -> Iterator[tuple[Any, str | None]]:
    if select.endswith((".*", "[*]")):
        base_path = select[1:-2] if select.endswith(".*") else select[1:-3]
        base = get_path(payload, base_path or "$")
        if isinstance(base, dict):
            for k, v in base.items():
                if not objects_only or isinstance(v, dict):
                    yield v, str(k)
        elif isinstance(base, list):
            for i, v in enumerate(base):
                if not objects_only or isinstance(v, dict):
                    yield v, str(i)
        return
    item = get_path(payload, select[1:] or "$") if select != "$" else payload
    if item is not _MISSING:
        yield item, None


def _render(template: str, ctx: dict[str, str], item: Any) -> str | None:
    """Fill ``{name}`` from the context and ``{.path}`` from the item; None if one is missing."""
    missing = False

    def fill(m: re.Match[str]) -> str:
        nonlocal missing
        name = m.group(1)
        if name.startswith((".", "[")):
            value = get_path(item, name)
            if value is _MISSING or value is None:
                missing = True
                return ""
            return str(value)
        if name not in ctx:
            missing = True
            return ""
        return ctx[name]

    text = re.sub(r"\{([^{}]+)\}", fill, template)
    return None if missing else text


def _convert(raw: Any, kind: str) -> FieldValue | None:
    if kind == "str":
        return str(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "on", "yes", "online"):
            return True
        if text in ("0", "false", "off", "no", "offline"):
            return False
        return None
    if kind in ("float", "int"):
        if isinstance(raw, bool):
            return None
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None  # "inf" from a device: no reading (and int() of it would raise)
        return int(number) if kind == "int" else number
    # auto: keep JSON types; numbers sent as strings (UniFi does) become floats
    if isinstance(raw, bool | int | float):
        return raw
    try:
        return float(raw)
    except (TypeError, ValueError):
        return str(raw)


def decode_mqtt_payload(profile: Profile, data: bytes | str) -> Any:
    """A message as the profile's rules see it: JSON when it parses (for JSON profiles), else text.

    Even JSON devices publish some plain values (a Tasmota LWT is ``Online``).
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if profile.mqtt.payload == "json":
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text
