"""Alarm rules that run on the gateway (``edge = true``): the part of a threshold rule the
agent needs, sent in the signed desired config (section ``alarms``), and how an alarm's
originator is named, the same on the gateway and in the collector (docs/alarms.md).

The agent evaluates these rules on readings as they are collected, so a site whose uplink is
down still raises its alarm on time: an ``alarm`` event goes into the buffer (shipped with its
own time when the uplink returns) and, when configured, is published on the site's broker.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_MODEL = ConfigDict(frozen=True, extra="forbid")
_NAME = r"^[A-Za-z0-9_.\-]{1,128}$"
EVENT_TYPE = "alarm"  # the event an edge rule's raise or clear is sent as
MAX_EDGE_RULES = 1000
Level = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]


MAX_ORIGINATOR_CHARS = 1024


def series_originator(gateway: str, tags: dict[str, str]) -> str:
    """``gw-1/device=freezer-1,room=cold`` (the gateway, then the series' other tags). Tags
    can make it long (64 of 1 KiB each): past :data:`MAX_ORIGINATOR_CHARS` it is cut and ends
    with a digest of the whole, so it stays one name per series, the same on both sides."""
    rest = ",".join(f"{k}={v}" for k, v in sorted(tags.items()) if k != "gateway")
    name = f"{gateway}/{rest}" if rest else gateway
    if len(name) <= MAX_ORIGINATOR_CHARS:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: MAX_ORIGINATOR_CHARS - 18]}#{digest}"


class EdgeRule(BaseModel):
    """A threshold rule as the gateway evaluates it (the collector makes these from its rules)."""

    model_config = _MODEL

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    severity: Literal["critical", "major", "minor", "warning"]
    measurement: Annotated[str, Field(pattern=_NAME)]
    field: Annotated[str, Field(pattern=_NAME)]
    above: Level | None = None
    below: Level | None = None
    clear: Level | None = None
    for_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0
    device: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    tags: Annotated[dict[str, str], Field(max_length=16)] = {}

    @model_validator(mode="after")
    def _one_level(self) -> EdgeRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give one of above or below")
        return self

    def matches(self, measurement: str, tags: dict[str, str]) -> bool:
        return (
            measurement == self.measurement
            and (self.device is None or tags.get("device") == self.device)
            and all(tags.get(k) == v for k, v in self.tags.items())
        )


class EdgeAlarms(BaseModel):
    """The ``alarms`` section of the agent's config: rules sent by the collector, and where to
    publish alarms on the site (``local_broker``, e.g. ``mqtt://127.0.0.1:1883``; set in
    ``agent.toml`` or over the air)."""

    model_config = _MODEL

    rules: Annotated[list[EdgeRule], Field(max_length=MAX_EDGE_RULES)] = []
    local_broker: Annotated[str, Field(pattern=r"^mqtt://[^/\s]+$")] | None = None
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./\-]{1,128}$")] = "outpost/alarms"
