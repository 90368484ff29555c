"""The profile format: a declarative description of one device type and firmware family.

A profile says how to reach the device (``transport``), what to read, and how raw values map to
readings (measurement, tags, fields, units, counters that need rates) and events. See
``firmware-profiles/README.md`` for the format with examples.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outpost_iot.wire import SCHEMES

_MODEL = ConfigDict(frozen=True, extra="forbid")
# "{device}" captures one topic level (or part of one); "{device*}" one or more whole levels.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\*?\}")
# A path into a decoded payload: "$" the whole item, ".a.b" members, "[0]" list elements.
_PATH = re.compile(r"^(\$|(\.[^.\[\]]+|\[\d+\])+)$")

Transport = str  # a transport of wire.SCHEMES (mqtt, http, snmp, host), checked on load


def _check_path(value: str) -> str:
    if not _PATH.match(value):
        raise ValueError(f"{value!r} is not a path: use '$', '.member', '.a.b' or '.list[0]'")
    return value


def _check_paths(value: str | list[str]) -> str | list[str]:
    """One path, or a list of paths tried in order (the first that has a value wins)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("a list of paths must name at least one path")
        for item in value:
            _check_path(item)
        return value
    return _check_path(value)


def _check_select(value: str) -> str:
    if not re.match(r"^\$(\.[^.\[\]*]+|\[\d+\]|\.\*|\[\*\])*$", value):
        raise ValueError(
            f"{value!r} is not a selection: use '$', '$.a.b', '$.list[*]', '$.map.*' or "
            "'$.list[*].inner[*]'"
        )
    return value


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


Scalar = str | float | int | bool


class Condition(BaseModel):
    """A test on one value. In TOML a bare value means ``eq``, a list means ``in``.

    A missing (or ``null``) value fails every test except ``present = false``.
    """

    model_config = _MODEL

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: Annotated[list[Scalar] | None, Field(alias="in")] = None
    not_in: list[Scalar] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    matches: str | None = None  # a regular expression searched in the value as text
    not_matches: str | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, list):
            return {"in": value}
        if isinstance(value, str | int | float | bool):
            return {"eq": value}
        return value

    _regex = field_validator("matches", "not_matches")(_check_regex)

    @model_validator(mode="after")
    def _one_test_at_least(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "a condition needs a test: eq, ne, in, not_in, gt, ge, lt, le, "
                "matches, not_matches or present"
            )
        return self


def _check_conditions(value: dict[str, Condition]) -> dict[str, Condition]:
    for path in value:
        _check_path(path)
    return value


class FieldSpec(BaseModel):
    """Where a field's value comes from and how it is converted."""

    model_config = _MODEL

    path: str | list[str]  # a list: the first path that has a value (fallbacks across firmware)
    # float/int also read numbers followed by a unit ("0.4ms", "12 %"); duration reads
    # "1d 2h 3m 4s", "3 Days 04 Hours 05 Minutes", Tasmota's "0T01:00:00", "01:02:03" as seconds.
    type: Literal["float", "int", "bool", "str", "auto", "duration"] = "auto"
    scale: float = 1.0  # multiply (unit conversion: KiB → bytes is 1024, ms → s is 0.001)
    rate: bool = False  # a counter: report the per-second rate of change instead
    counter_bits: Literal[32, 64] = 64  # where the counter wraps
    multiply: str | None = None  # path to another member to multiply by (SNMP allocation units)
    map: dict[str, str | float | int | bool] = Field(default_factory=dict)  # enum → value

    _path = field_validator("path")(_check_paths)

    @field_validator("multiply")
    @classmethod
    def _multiply(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)


class TagSpec(BaseModel):
    """A tag whose value is part of a template's text, or a mapped one.

    ``{ template = "{.descr}", pattern = "^([^,]+)" }``: "/, type: ufs, dev: ..." → "/".
    """

    model_config = _MODEL

    template: Annotated[str, Field(min_length=1)]
    pattern: str | None = None  # a regular expression; its first group (or whole match) is kept
    map: dict[str, str] = Field(default_factory=dict)  # value → value; others stay as they are

    _pattern = field_validator("pattern")(_check_regex)


class ReadingRule(BaseModel):
    """One kind of raw input → readings."""

    model_config = _MODEL

    match: Annotated[str, Field(min_length=1)]  # MQTT topic template, HTTP endpoint, SNMP table
    select: str = "$"  # "$" the payload; "$.items[*]" each element; "$.*" each member ({key})
    objects_only: bool = False  # with "*": skip members that are not objects
    # A regular expression on member names: each member of the selected object whose name
    # matches is an item ({key} its name, named groups placeholders): "^POWER(?P<relay>\d*)$".
    members: str | None = None
    where: dict[str, Condition] = Field(default_factory=dict)  # items failing a test are skipped
    # Values that are lists (multi-channel meters: "Power": [1688, 0]) become one reading per
    # index, tagged with this name (1-based); the item's single values stay in one reading.
    split_arrays: str | None = None
    measurement: Annotated[str, Field(min_length=1)]
    # templates: "{device}", "{key}", "{.name}", "{.a|.b|'default'}"; or a TagSpec table
    tags: dict[str, str | TagSpec] = Field(default_factory=dict)
    fields: dict[str, FieldSpec | str] = Field(default_factory=dict)  # a str is a path
    numeric_fields: bool = False  # also every number / bool member of the item, snake_cased
    exclude: list[str] = Field(default_factory=list)  # members numeric_fields leaves out
    # Unit suffixes for numeric_fields, by snake_cased member name: {temperature = "_c"}.
    units: dict[str, str] = Field(default_factory=dict)

    _select = field_validator("select")(_check_select)
    _where = field_validator("where")(_check_conditions)

    _members = field_validator("members")(_check_regex)

    @model_validator(mode="after")
    def _has_fields(self) -> ReadingRule:
        if not self.fields and not self.numeric_fields:
            raise ValueError("a reading rule needs 'fields' or 'numeric_fields = true'")
        for name, spec in self.fields.items():
            if not name:
                raise ValueError("field names must not be empty")
            if isinstance(spec, str):
                try:
                    _check_path(spec)
                except ValueError as exc:
                    raise ValueError(f"fields.{name}: {exc}") from None
        if self.members is not None and "*" in self.select:
            raise ValueError("members selects from one object: use it with a select without '*'")
        return self


class EventRule(BaseModel):
    """Raw input → events (detections, alerts)."""

    model_config = _MODEL

    match: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(min_length=1)]
    select: str = "$"  # "$.data[*]": one event per item (paths below are then in the item)
    id: str = ""  # template for a stable id, e.g. "{.after.id}-{.type}"; empty: a random id
    when: dict[str, Condition] = Field(default_factory=dict)  # path → test; all must hold
    # An event each time the value at this path (or the first of these paths) changes, per
    # source: a bridge going offline, a WAN gateway going down. The body gets "value" and
    # "previous". The first value seen is an event unless it is one of `normal`.
    changes: str | list[str] | None = None
    normal: list[Scalar] = Field(default_factory=list)
    source: str = "{device}"
    # Paths copied into the body (the key is the path's last member), or a table naming the keys:
    # { action = ".click" }. Empty: the whole item.
    body: list[str] | dict[str, str] = Field(default_factory=list)

    _when = field_validator("when")(_check_conditions)

    @field_validator("body")
    @classmethod
    def _body(cls, value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        for path in value.values() if isinstance(value, dict) else value:
            _check_path(path)
        return value

    _select = field_validator("select")(_check_select)

    @field_validator("changes")
    @classmethod
    def _changes(cls, value: str | list[str] | None) -> str | list[str] | None:
        return None if value is None else _check_paths(value)


class Availability(BaseModel):
    """How a device says it is online or offline (an MQTT last will, a status topic)."""

    model_config = _MODEL

    match: Annotated[str, Field(min_length=1)]
    select: str = "$"  # "$.data[*]": one state per item (the devices behind a controller)
    device: str = ""  # template naming the device, e.g. "{device}/{.name}"; empty: the device
    path: str = "$"
    online: list[str] = Field(default_factory=lambda: ["online"])
    offline: list[str] = Field(default_factory=lambda: ["offline"])

    _path = field_validator("path")(_check_path)
    _select = field_validator("select")(_check_select)


class MqttSettings(BaseModel):
    model_config = _MODEL

    payload: Literal["json", "text"] = "json"  # "text": a plain value ("23.4", "ON")
    # Captured device names to ignore, as glob patterns ("*" spans levels): zigbee2mqtt's
    # "bridge", "bridge/*" and "*/availability" are the bridge and topics that are not devices.
    exclude_devices: list[str] = Field(default_factory=list)


class HttpEndpoint(BaseModel):
    model_config = _MODEL

    key: Annotated[str, Field(min_length=1)]  # what the rules' `match` names
    path: Annotated[str, Field(pattern=r"^/")]


class HttpSettings(BaseModel):
    model_config = _MODEL

    # "unifi": a UniFi Network controller or console (classic login, UniFi OS login with CSRF
    # token, or the integration API with an API key); the client handles the session.
    auth: Literal["none", "api_key", "basic", "unifi"] = "none"
    api_key_header: str = "X-API-Key"
    endpoints: list[HttpEndpoint] = Field(default_factory=list)


_OID = re.compile(r"^\.?[0-2](\.\d+)+$")


def _check_oid(value: str) -> str:
    if not _OID.match(value):
        raise ValueError(f"{value!r} is not a numeric OID such as '1.3.6.1.2.1.1.3.0'")
    return value.lstrip(".")


class SnmpGet(BaseModel):
    """Scalars fetched with one GET; the payload is ``{name: value}`` (absent OIDs left out)."""

    model_config = _MODEL

    key: Annotated[str, Field(min_length=1)]  # what the rules' `match` names
    oids: Annotated[dict[str, str], Field(min_length=1)]  # name → numeric OID of the instance

    @field_validator("oids")
    @classmethod
    def _oids(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _check_oid(oid) for name, oid in value.items()}


class SnmpWalk(BaseModel):
    """Table columns walked with GETBULK; the payload is ``{index: {column: value}}``."""

    model_config = _MODEL

    key: Annotated[str, Field(min_length=1)]
    columns: Annotated[dict[str, str], Field(min_length=1)]  # name → numeric OID of the column
    # Rows worth reading: the columns named here are walked first, and the others are read
    # (GET) only for the rows whose values pass. A pfSense's hrStorageTable has ~590 kernel
    # zones among ~600 rows: walking one column instead of four is a quarter of the traffic.
    rows: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _check_oid(oid) for name, oid in value.items()}

    @model_validator(mode="after")
    def _row_columns(self) -> SnmpWalk:
        unknown = sorted(set(self.rows) - set(self.columns))
        if unknown:
            raise ValueError(f"rows tests {unknown}, which are not among the columns")
        return self


class SnmpSettings(BaseModel):
    model_config = _MODEL

    get: list[SnmpGet] = Field(default_factory=list)
    walk: list[SnmpWalk] = Field(default_factory=list)
    max_repetitions: Annotated[int, Field(ge=1, le=100)] = 25


class ProfileInfo(BaseModel):
    model_config = _MODEL

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    title: Annotated[str, Field(min_length=1)]
    transport: Transport | list[Transport]  # a list when the device speaks several

    @property
    def transports(self) -> list[Transport]:
        return self.transport if isinstance(self.transport, list) else [self.transport]

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, value: Transport | list[Transport]) -> Transport | list[Transport]:
        for name in value if isinstance(value, list) else [value]:
            if name not in SCHEMES:
                raise ValueError(f"{name!r} is not a transport; use {', '.join(SCHEMES)}")
        return value

    interval: Annotated[float, Field(gt=0)] = 30.0  # default poll interval, seconds
    firmware: list[str] = Field(default_factory=list)  # versions verified
    variables: dict[str, str] = Field(default_factory=dict)  # defaults, e.g. {prefix = "tele"}


class Profile(BaseModel):
    """A loaded, validated profile."""

    model_config = _MODEL

    profile: ProfileInfo
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    snmp: SnmpSettings = SnmpSettings()
    availability: list[Availability] = Field(default_factory=list)
    readings: list[ReadingRule] = Field(default_factory=list)
    events: list[EventRule] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.profile.name

    @model_validator(mode="after")
    def _something_to_do(self) -> Profile:
        if not self.readings and not self.events and not self.availability:
            raise ValueError(
                "the profile maps nothing: add [[readings]], [[events]] or [[availability]]"
            )
        if "http" in self.profile.transports and not self.http.endpoints:
            raise ValueError("http.endpoints: an HTTP profile must name the endpoints to GET")
        if "snmp" in self.profile.transports and not (self.snmp.get or self.snmp.walk):
            raise ValueError("snmp: an SNMP profile needs [[snmp.get]] or [[snmp.walk]] entries")
        keys = [g.key for g in self.snmp.get] + [w.key for w in self.snmp.walk]
        if len(keys) != len(set(keys)):
            raise ValueError("snmp: every [[snmp.get]] and [[snmp.walk]] needs its own key")
        return self


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)
