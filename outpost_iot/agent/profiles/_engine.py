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

import fnmatch
import logging
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from outpost_iot.agent._collection import Collection
from outpost_iot.agent.profiles._model import (
    Condition,
    EventRule,
    FieldSpec,
    Profile,
    ReadingRule,
    TagSpec,
)
from outpost_iot.wire import BoundedDict, Event, FieldValue, LogThrottle, Reading, limits, printable

# Series, counters and devices one mapper remembers (previous counter values, availability).
MAX_TRACKED = 10_000
DROP_INVALID_READING = "invalid_reading"
DROP_INVALID_EVENT = "invalid_event"
DROP_MAPPING_ERROR = "mapping_error"

# A "{device*}" placeholder spans this many topic levels at most (MQTT filters are generated
# for each depth when it is not the last level).
MAX_LEVELS = 8

_MISSING = object()
_SPLIT_PATH = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_TEMPLATE_PART = re.compile(r"(\{[A-Za-z_][A-Za-z0-9_]*\*?\})")
# A number, optionally followed by a unit: "0.4ms", "12 %", "-3.5e2 dBm".
_NUMBER_WITH_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*[^\d\s.,:]*\s*$")
_DURATION_UNITS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)")
_CLOCK = re.compile(r"^(?:(\d+)(?:T|d |\s*days?,?\s+))?(\d+):(\d{1,2})(?::(\d{1,2}(?:\.\d+)?))?$")


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).replace("-", "_").replace(" ", "_").lower()


# What the rules read, while the probe traces a message: (id of a container, member or index).
# None outside tracing (the agent never traces); see agent.profiles.unmapped.
_trace: set[tuple[int, object]] | None = None


_LEFT_OUT = "*left out*"  # a whole item a rule's where left out: known, not new


def _used(container: Any, key: object) -> None:
    if _trace is not None:
        _trace.add((id(container), key))


def get_path(item: Any, path: str | list[str]) -> Any:
    """``$`` → the item; ``.a.b[0]`` → nested member; missing → ``_MISSING``.

    A list of paths gives the first that has a value (not missing, not ``null``).
    """
    if isinstance(path, list):
        for i, one in enumerate(path):
            value = get_path(item, one)
            if value is not _MISSING and value is not None:
                if _trace is not None:  # the fallbacks are known too, not new
                    for other in path[i + 1 :]:
                        get_path(item, other)
                return value
        return _MISSING
    if path == "$":
        _used(item, "$")
        return item
    current = item
    for member, index in _SPLIT_PATH.findall(path):
        if member:
            if not isinstance(current, dict) or member not in current:
                return _MISSING
            _used(current, member)
            current = current[member]
        else:
            i = int(index)
            if not isinstance(current, list) or i >= len(current):
                return _MISSING
            _used(current, i)
            current = current[i]
    return current


@dataclass(frozen=True)
class _Template:
    """A match template compiled to a regex.

    ``{name}`` captures one topic level (or part of one); ``{name*}`` one or more whole levels
    (Zigbee2MQTT friendly names such as ``kitchen/floor_light``, multi-level prefixes).
    """

    text: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, template: str, variables: dict[str, str]) -> _Template:
        text = _substitute(template, variables)
        pattern = ""
        for part in _TEMPLATE_PART.split(text):
            if part.startswith("{") and part.endswith("*}"):
                levels = MAX_LEVELS - 1
                pattern += f"(?P<{part[1:-2]}>[^/]+(?:/[^/]+){{0,{levels}}})"
            elif part.startswith("{") and part.endswith("}"):
                pattern += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                pattern += re.escape(part)
        return cls(text, re.compile(f"^{pattern}$"))

    def match(self, key: str) -> dict[str, str] | None:
        m = self.regex.match(key)
        return m.groupdict() if m else None

    def mqtt_filters(self) -> list[str]:
        """MQTT subscriptions covering every topic the template can match."""
        levels = self.text.split("/")
        out: list[str] = []
        for i, level in enumerate(levels):
            if "*}" in level:
                head = ["+" if "{" in x else x for x in levels[:i]]
                tail = ["+" if "{" in x else x for x in levels[i + 1 :]]
                if not tail or any(x != "+" for x in head):
                    # Under a fixed prefix (tele/, zigbee2mqtt/) one subscription covers every
                    # depth; the template picks what it maps.
                    return ["/".join([*head, "#"])]
                # No fixed prefix ({device*}/status): one subscription per depth, not the whole
                # broker.
                return ["/".join([*head, *["+"] * n, *tail]) for n in range(1, MAX_LEVELS + 1)]
            out.append("+" if "{" in level else level)
        return ["/".join(out)]


def _covered(topic_filter: str, by: str) -> bool:
    """Whether every topic ``topic_filter`` matches is matched by ``by`` (a filter ending in #)."""
    if not by.endswith("#") or topic_filter == by:
        return False
    head = by.split("/")[:-1]
    levels = topic_filter.split("/")
    if len(levels) <= len(head):
        return False
    return all(b in ("+", t) for b, t in zip(head, levels, strict=False))


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
        self._values: BoundedDict[str, object] = BoundedDict(MAX_TRACKED)  # for `changes`

    def mqtt_filters(self) -> list[str]:
        templates = [t for t, _ in self._readings] + [t for t, _ in self._events]
        templates += [t for t, _ in self._availability]
        filters = {f for t in templates for f in t.mqtt_filters()}
        return sorted(f for f in filters if not any(_covered(f, by) for by in filters))

    def apply(self, key: str, payload: Any, ts: int) -> Collection:
        """Readings and events from one message or response; never raises (see module doc)."""
        out = Collection()
        for template, rule in self._readings:
            captures = template.match(key)
            if captures is None or self._excluded(captures):
                continue
            try:
                for sel in _select(payload, rule.select, rule.objects_only, rule.members):
                    if rule.where and not _all_hold(rule.where, sel.item):
                        _used(sel.item, _LEFT_OUT)
                        continue
                    for tags, fields in self._reading(rule, captures, sel, ts):
                        try:
                            reading = Reading(
                                measurement=rule.measurement, tags=tags, fields=fields, ts=ts
                            )
                        except ValidationError as exc:
                            self._dropped(out, DROP_INVALID_READING, rule.measurement, exc)
                            continue
                        out.readings.append(reading)
            except Exception as exc:  # a payload the rule did not foresee: this rule only
                self._dropped(out, DROP_MAPPING_ERROR, rule.measurement, exc)
        for template, event_rule in self._events:
            captures = template.match(key)
            if captures is None or self._excluded(captures):
                continue
            try:
                items = list(_select(payload, event_rule.select, False, None))
            except Exception as exc:
                self._dropped(out, DROP_MAPPING_ERROR, event_rule.type, exc)
                continue
            for sel in items:
                try:
                    event = self._event(event_rule, captures, sel.item, ts)
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
        for sel in _select(payload, avail.select, False, None):
            item = sel.item
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
        device = captures.get("device")
        return device is not None and any(
            fnmatch.fnmatchcase(device, pattern) for pattern in self.profile.mqtt.exclude_devices
        )

    def _context(self, captures: dict[str, str], item_key: str | None) -> dict[str, str]:
        ctx = {**self.variables, **captures}
        if self.device and "device" not in ctx:
            ctx["device"] = self.device
        if item_key is not None:
            ctx["key"] = item_key
        return ctx

    def _reading(
        self, rule: ReadingRule, captures: dict[str, str], sel: _Selected, ts: int
    ) -> list[tuple[dict[str, str], dict[str, FieldValue]]]:
        """The tags and fields of one item: one reading, or one per index with split_arrays."""
        ctx = self._context({**captures, **sel.groups}, sel.key)
        item = sel.item
        tags: dict[str, str] = {}
        for name, template in rule.tags.items():
            value = _tag(template, ctx, item, sel.parents)
            if value is not None:
                tags[name] = value
        series = (rule.measurement, tuple(sorted(tags.items())))
        fields: dict[str, FieldValue] = {}
        per_index: dict[int, dict[str, FieldValue]] = {}
        split = rule.split_arrays is not None
        if rule.numeric_fields and isinstance(item, dict):
            for member, raw in item.items():
                if member in rule.exclude:
                    continue
                name = snake(member)
                name += rule.units.get(name, "")
                if _is_number(raw):
                    _used(item, member)
                    fields[name] = _fit(raw)
                elif split and isinstance(raw, list):
                    for i, element in enumerate(raw[: limits.MAX_TAGS]):
                        if _is_number(element):
                            _used(raw, i)
                            per_index.setdefault(i, {})[name] = _fit(element)
        for name, spec in rule.fields.items():
            spec_ = FieldSpec(path=spec) if isinstance(spec, str) else spec
            raw = get_path(item, spec_.path)
            if split and isinstance(raw, list):
                for i, element in enumerate(raw[: limits.MAX_TAGS]):
                    _used(raw, i)
                    element_value = self._field(spec_, element, (*series, name, i), ts)
                    if element_value is not None:
                        per_index.setdefault(i, {})[name] = element_value
                continue
            if spec_.multiply is not None and raw is not _MISSING and raw is not None:
                raw = _product(raw, get_path(item, spec_.multiply))
            field_value = self._field(spec_, raw, (*series, name), ts)
            if field_value is not None:
                fields[name] = field_value
        out = [(tags, fields)] if fields else []
        for i in sorted(per_index):
            out.append(({**tags, str(rule.split_arrays): str(i + 1)}, per_index[i]))
        return out

    def _field(
        self, spec: FieldSpec, raw: Any, key: tuple[object, ...], ts: int
    ) -> FieldValue | None:
        if raw is _MISSING or raw is None or isinstance(raw, dict | list):
            return None
        if spec.map:
            raw = spec.map.get(str(raw).lower() if isinstance(raw, bool) else str(raw))
            if raw is None:
                return None
        # An int with a scale is scaled first and rounded after (67.1 MiB is not 67 MiB).
        kind = "float" if spec.type == "int" and (spec.scale != 1.0 or spec.rate) else spec.type
        value = _convert(raw, kind)
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
        for path, condition in rule.when.items():
            if not _holds(condition, get_path(payload, path)):
                return None
        ctx = self._context(captures, None)
        if rule.body:
            body = {}
            named = (
                rule.body.items()
                if isinstance(rule.body, dict)
                else ((path.rsplit(".", 1)[-1], path) for path in rule.body)  # ".after.camera"
            )
            for name, path in named:
                value = get_path(payload, path)
                if value is not _MISSING:
                    body[name] = value
        else:
            body = payload if isinstance(payload, dict) else {"value": payload}
        source = _render(rule.source, ctx, payload) or ""
        remember: tuple[str, object] | None = None
        if rule.changes is not None:
            value = get_path(payload, rule.changes)
            if value is _MISSING or value is None or isinstance(value, dict | list):
                return None
            state_key = f"{rule.type}\x00{source}\x00{rule.changes}"
            previous = self._values.get(state_key, _MISSING)
            if previous is _MISSING:
                if any(_same(value, normal) for normal in rule.normal):
                    self._values[state_key] = value  # a normal start is no news
                    return None
            elif _same(previous, value):
                return None
            body = {**body, "value": value, "previous": None if previous is _MISSING else previous}
            remember = (state_key, value)
        event_id = _render(rule.id, ctx, payload) if rule.id else None
        event = Event(
            id=(event_id or uuid.uuid4().hex)[:128],
            type=rule.type,
            ts=ts,
            source=source,
            body=body,
        )
        if remember is not None:  # only once the event is valid: else it comes on the next one
            self._values[remember[0]] = remember[1]
        return event


def _tag(
    spec: str | TagSpec, ctx: dict[str, str], item: Any, parents: tuple[Any, ...] = ()
) -> str | None:
    if isinstance(spec, str):
        return _render(spec, ctx, item, parents)
    value = _render(spec.template, ctx, item, parents)
    if value is None:
        return None
    if spec.pattern is not None:
        m = re.search(spec.pattern, value)
        if m:
            value = m.group(1) if m.groups() else m.group(0)
    return spec.map.get(value, value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, or equal as text (a device sends 1 where the profile says "1"); bools stay bools."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b  # 0.0 is 0
    return a == b or str(a) == str(b)


def _holds(condition: Condition, value: Any) -> bool:
    """Whether ``value`` (maybe ``_MISSING``) passes every test of ``condition``."""
    missing = value is _MISSING or value is None
    if condition.present is not None:
        if condition.present == missing:
            return False
        if missing:
            return True  # present = false, and it is not there
    if missing:
        return False
    if condition.eq is not None and not _same(value, condition.eq):
        return False
    if condition.ne is not None and _same(value, condition.ne):
        return False
    if condition.in_ is not None and not any(_same(value, x) for x in condition.in_):
        return False
    if condition.not_in is not None and any(_same(value, x) for x in condition.not_in):
        return False
    if condition.matches is not None and not re.search(condition.matches, str(value)):
        return False
    if condition.not_matches is not None and re.search(condition.not_matches, str(value)):
        return False
    bounds = (condition.gt, condition.ge, condition.lt, condition.le)
    if any(b is not None for b in bounds):
        number = _convert(value, "float")
        if not isinstance(number, float):
            return False
        gt, ge, lt, le = bounds
        if (
            (gt is not None and not number > gt)
            or (ge is not None and not number >= ge)
            or (lt is not None and not number < lt)
            or (le is not None and not number <= le)
        ):
            return False
    return True


def _all_hold(conditions: dict[str, Condition], item: Any) -> bool:
    return all(_holds(c, get_path(item, path)) for path, c in conditions.items())


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


_SELECT_STEP = re.compile(r"\.\*|\[\*\]|\.([^.\[\]*]+)|\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class _Selected:
    """One item a rule maps, with its key and what encloses it."""

    item: Any
    key: str | None
    groups: dict[str, str]  # placeholders from a members pattern
    parents: tuple[Any, ...] = ()  # the items of the outer "*" levels, outermost first


def _select(
    payload: Any, select: str, objects_only: bool, members: str | None
) -> Iterator[_Selected]:
    """The items a rule maps. ``*`` may appear at several levels: "$.data[*].port_table[*]"."""
    if members is not None:
        base = get_path(payload, select[1:] or "$") if select != "$" else payload
        if isinstance(base, dict):
            pattern = re.compile(members)
            for k, v in base.items():
                m = pattern.search(str(k))
                if m and (not objects_only or isinstance(v, dict)):
                    _used(base, k)
                    yield _Selected(v, str(k), {n: g or "" for n, g in m.groupdict().items()})
        return
    steps = [
        ("*", "") if not (member or index) else ("m", member) if member else ("i", index)
        for member, index in _SELECT_STEP.findall(select[1:])
    ]
    wildcard = any(kind == "*" for kind, _ in steps)
    for item, key, chain in _walk(payload, steps, None, ()):
        if wildcard and objects_only and not isinstance(item, dict):
            continue
        yield _Selected(item, key, {}, chain[:-1] if wildcard else ())


def _walk(
    node: Any, steps: list[tuple[str, str]], key: str | None, chain: tuple[Any, ...]
) -> Iterator[tuple[Any, str | None, tuple[Any, ...]]]:
    if not steps:
        yield node, key, chain
        return
    (kind, arg), rest = steps[0], steps[1:]
    if kind == "*":
        if isinstance(node, dict):
            children: Iterator[tuple[str, Any]] = ((str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            children = ((str(i), v) for i, v in enumerate(node))
        else:
            return
        for k, v in children:
            if not rest and not isinstance(v, dict | list):
                _used(node, int(k) if isinstance(node, list) else k)  # a value read as "$"
            yield from _walk(v, rest, k, (*chain, v))
    elif kind == "m":
        if isinstance(node, dict) and arg in node:
            yield from _walk(node[arg], rest, key, chain)
    else:
        i = int(arg)
        if isinstance(node, list) and i < len(node):
            yield from _walk(node[i], rest, key, chain)


def _render(
    template: str, ctx: dict[str, str], item: Any, parents: tuple[Any, ...] = ()
) -> str | None:
    """Fill ``{name}`` from the context and ``{.path}`` from the item; None if one is missing.

    ``{a|.b|'text'}`` takes the first alternative that has a non-empty value; a quoted
    alternative is literal text. ``{^.name}`` reads the enclosing item of a nested selection
    (``$.data[*].port_table[*]``: the device a port belongs to), ``{^^.name}`` the one above.
    """
    missing = False

    def one(alternative: str) -> str | None:
        if len(alternative) >= 2 and alternative[0] == alternative[-1] == "'":
            return alternative[1:-1]
        up = len(alternative) - len(alternative.lstrip("^"))
        if up:
            if up > len(parents):
                return None
            value = get_path(parents[-up], alternative[up:] or "$")
            return None if value is _MISSING or value is None else str(value)
        if alternative.startswith((".", "[", "$")):
            value = get_path(item, alternative)
            return None if value is _MISSING or value is None else str(value)
        return ctx.get(alternative)

    def fill(m: re.Match[str]) -> str:
        nonlocal missing
        alternatives = [a.strip() for a in m.group(1).split("|")]
        for i, alternative in enumerate(alternatives):
            value = one(alternative)
            if value is not None and (value != "" or i == len(alternatives) - 1):
                if _trace is not None:  # the fallbacks are known too, not new
                    for other in alternatives[i + 1 :]:
                        one(other)
                return value
        missing = True
        return ""

    text = re.sub(r"\{([^{}]+)\}", fill, template)
    return None if missing else text


def parse_duration(text: str) -> float | None:
    """Seconds from a duration as devices write it; None when it is not one.

    "90", "1.5s", "250ms", "1d 2h 3m 4s", "3 Days 04 Hours 05 Minutes 06 Seconds" (pfSense),
    "0T01:00:00" (Tasmota: days T hh:mm:ss), "01:02:03", "3 days, 4:05:06".
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    clock = _CLOCK.match(text)
    if clock:
        days, hours, minutes, seconds = clock.groups()
        return (
            int(days or 0) * 86400.0
            + int(hours) * 3600.0
            + int(minutes) * 60.0
            + float(seconds or 0)
        )
    if not re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[a-zA-Z]+[\s,]*)+", text):
        return None
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        factor = _DURATION_UNITS.get(unit.lower())
        if factor is None:
            return None
        total += float(number) * factor
    return total


def _convert(raw: Any, kind: str) -> FieldValue | None:
    if kind == "str":
        text = str(raw)
        return text if text.strip() else None  # an empty text (an unset ifAlias) is no value
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "on", "yes", "online"):
            return True
        if text in ("0", "false", "off", "no", "offline"):
            return False
        return None
    if kind == "duration":
        if isinstance(raw, bool):
            return None
        if isinstance(raw, int | float):
            return float(raw) if math.isfinite(raw) else None
        return parse_duration(str(raw))
    if kind in ("float", "int"):
        if isinstance(raw, bool):
            return None
        try:
            number = float(raw)
        except (TypeError, ValueError):
            m = _NUMBER_WITH_UNIT.match(raw) if isinstance(raw, str) else None
            if m is None:
                return None
            number = float(m.group(1))  # "0.4ms", "12 %": the unit is in the field's name
        if not math.isfinite(number):
            return None  # "inf" from a device: no reading (and int() of it would raise)
        return int(number) if kind == "int" else number
    # auto: keep JSON types; numbers sent as strings (UniFi does) become floats
    if isinstance(raw, bool | int | float):
        return raw
    try:
        return float(raw)
    except (TypeError, ValueError):
        text = str(raw)
        return text if text.strip() else None


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
