"""Why a device's data gave nothing, and what in it no rule read: the probe's diagnosis.

Both work on a copy of the mapper (fresh counters, no remembered states), so diagnosing never
changes what the agent sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from outpost_iot.agent.profiles import _engine
from outpost_iot.agent.profiles._engine import Mapper, _all_hold, _holds, _select, get_path
from outpost_iot.agent.profiles._model import FieldSpec
from outpost_iot.wire import printable

MAX_LEAVES = 10_000  # values walked in one payload
MAX_DEPTH = 32


def _fresh(mapper: Mapper) -> Mapper:
    return Mapper(mapper.profile, variables=mapper.variables, device=mapper.device)


def explain(mapper: Mapper, key: str, payload: Any) -> str:
    """Why ``payload`` under ``key`` gives no reading and no event; ``""`` when it gives some."""
    done = _fresh(mapper).apply(key, payload, 1)
    if done.readings or done.events:
        return ""
    probe = _fresh(mapper)
    reasons: list[str] = []
    matched = False
    not_json = probe.profile.mqtt.payload == "json" and isinstance(payload, str)
    for template, rule in probe._readings:
        captures = template.match(key)
        if captures is None:
            continue
        matched = True
        if probe._excluded(captures):
            reasons.append(f"{captures.get('device')!r} is not a device (mqtt.exclude_devices)")
            continue
        where = rule.select + (f" members {rule.members}" if rule.members else "")
        items = list(_select(payload, rule.select, rule.objects_only, rule.members))
        if not items:
            reasons.append(f"{rule.measurement}: {where} finds nothing")
            continue
        kept = [s for s in items if not rule.where or _all_hold(rule.where, s.item)]
        if not kept:
            first = _failed(rule.where, items[0].item)
            reasons.append(
                f"{rule.measurement}: {len(items)} item(s), none passes its where "
                f"(the first: {first})"
            )
            continue
        specs = [FieldSpec(path=s) if isinstance(s, str) else s for s in rule.fields.values()]
        if specs and all(s.rate for s in specs) and not rule.numeric_fields:
            reasons.append(f"{rule.measurement}: rates only, given from the second poll on")
            continue
        names = ", ".join(list(rule.fields)[:6]) or "numbers"
        reasons.append(f"{rule.measurement}: none of its fields ({names}) has a value")
    for template, event_rule in probe._events:
        captures = template.match(key)
        if captures is None or probe._excluded(captures):
            continue
        matched = True
        for sel in _select(payload, event_rule.select, False, None):
            failed = _failed(event_rule.when, sel.item)
            if failed:
                reasons.append(f"event {event_rule.type}: {failed}")
            elif event_rule.changes is not None:
                value = get_path(sel.item, event_rule.changes)
                if value is _engine._MISSING:
                    paths = event_rule.changes
                    shown = paths if isinstance(paths, str) else " and ".join(paths)
                    reasons.append(f"event {event_rule.type}: {shown} missing")
                else:
                    reasons.append(f"event {event_rule.type}: {value!r} is the first state seen")
    for template, avail in probe._availability:
        captures = template.match(key)
        if captures is None or probe._excluded(captures):
            continue
        matched = True
        for sel in _select(payload, avail.select, False, None):
            state = get_path(sel.item, avail.path)
            shown = "nothing" if state is _engine._MISSING else repr(state)
            reasons.append(
                f"availability: {avail.path} is {shown}, not one of {avail.online + avail.offline}"
            )
    if not matched:
        return "no rule of the profile reads this key"
    # Only worth saying when no rule found anything to read: event rules often read plain text.
    unread = all("finds nothing" in r or "none of its fields" in r for r in reasons)
    prefix = "not JSON; " if not_json and unread else ""
    return prefix + ("; ".join(dict.fromkeys(reasons)) or "its rules give nothing")


def _failed(conditions: dict[str, Any], item: Any) -> str:
    """The conditions ``item`` fails, with its values; ``""`` when it passes them all."""
    failed = []
    for path, condition in conditions.items():
        value = get_path(item, path)
        if _holds(condition, value):
            continue
        if value is _engine._MISSING:
            failed.append(f"{path} missing")
        else:
            failed.append(
                f"{path} = {printable(repr(value), 60)}, not {_condition_text(condition)}"
            )
    return ", ".join(failed)


def _condition_text(condition: Any) -> str:
    tests = condition.model_dump(exclude_none=True, by_alias=True)
    return printable(" ".join(f"{k} {v!r}" for k, v in tests.items()), 60)


def unmapped(mapper: Mapper, key: str, payload: Any, limit: int = 200) -> list[tuple[str, Any]]:
    """The values in ``payload`` no rule read, as ``(path, value)``: what a new firmware added.

    List indices are shown as ``[*]``, each path once with its first value.
    Values the agent sends, and values a rule read and found wanting (a ``where`` that left an
    item out), both count as read. ``null`` values are not listed.
    """
    probe = _fresh(mapper)
    trace: set[tuple[int, object]] = set()
    _engine._trace = trace
    try:
        probe.apply(key, payload, 1)
    finally:
        _engine._trace = None
    if not isinstance(payload, dict | list):
        read = (id(payload), "$") in trace or payload is None
        return [] if read else [("$", payload)]
    out: dict[str, Any] = {}
    for path, parent, member, value in _leaves(payload, trace):
        if (id(parent), member) not in trace:
            out.setdefault(_INDEX.sub("[*]", path), value)
            if len(out) >= limit:
                break
    return list(out.items())


_INDEX = re.compile(r"\[\d+\]")


def _leaves(payload: Any, trace: set[tuple[int, object]]) -> Iterator[tuple[str, Any, object, Any]]:
    """``(path, container, member, value)`` for every scalar, in document order, bounded.

    Items a rule's ``where`` left out are skipped whole."""
    stack: list[tuple[str, Any, object, Any, int]] = [("", None, None, payload, 0)]
    seen = 0
    while stack:
        path, parent, member, node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= MAX_DEPTH or (id(node), _engine._LEFT_OUT) in trace:
                continue
            children = (
                [(f"{path}.{k}", k, v) for k, v in node.items()]
                if isinstance(node, dict)
                else [(f"{path}[{i}]", i, v) for i, v in enumerate(node)]
            )
            seen += len(children)
            if seen > MAX_LEAVES:
                return
            stack.extend((p, node, m, v, depth + 1) for p, m, v in reversed(children))
        elif node is not None and parent is not None:
            yield path, parent, member, node
