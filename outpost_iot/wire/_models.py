"""The canonical reading and event: the unit of telemetry everywhere.

Every size, count and range is bounded (``wire._limits``): a value the models accept can be
stored by every backend without overflow and encoded without hitting a serializer's limit.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from outpost_iot.wire._limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_BODY_BYTES,
    MAX_EVENT_BODY_ITEMS,
    MAX_EVENT_DEPTH,
    MAX_FIELDS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_SOURCE_CHARS,
    MAX_STRING_FIELD_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    TIME_MAX_NS,
    check_json_tree,
)


def _int64(value: object) -> object:
    # A float branch in strict mode still takes an int: without this, an integer beyond int64
    # would silently become a float instead of being refused.
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("integer field value outside the signed 64-bit range")
    return value


# Strict types: a bool must stay a bool and "1" must not become 1 on the way.
# Finite floats only: JSON has no NaN or infinity (orjson would write null).
FieldValue = Annotated[
    StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | Annotated[StrictStr, Field(max_length=MAX_STRING_FIELD_CHARS)],
    BeforeValidator(_int64),
]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
TagValue = Annotated[str, Field(max_length=MAX_TAG_VALUE_CHARS)]
Tags = Annotated[dict[Name, TagValue], Field(max_length=MAX_TAGS)]
Fields = Annotated[dict[Name, FieldValue], Field(min_length=1, max_length=MAX_FIELDS)]

# Nanoseconds since the Unix epoch: 0 .. 2^62 - 1 (the year 2116), so that a timestamp plus a
# clock correction of at most 2^62 still fits the int64 of every store.
TimestampNs = Annotated[int, Field(ge=0, le=TIME_MAX_NS, strict=True)]


class Reading(BaseModel):
    """One point: a measurement with tags (identify the series), fields and a ns timestamp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measurement: Name
    tags: Tags = Field(default_factory=dict)
    fields: Fields
    ts: TimestampNs


class Event(BaseModel):
    """A document: a detection, a device going offline, an alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    type: Name
    ts: TimestampNs
    source: Annotated[str, Field(max_length=MAX_SOURCE_CHARS)] = ""
    body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("body")
    @classmethod
    def _bounded_body(cls, body: dict[str, Any]) -> dict[str, Any]:
        check_json_tree(body, max_depth=MAX_EVENT_DEPTH, max_items=MAX_EVENT_BODY_ITEMS)
        try:
            size = len(orjson.dumps(body))
        except orjson.JSONEncodeError as exc:  # a Python object that JSON cannot carry
            raise ValueError(f"event body is not JSON: {exc}") from None
        if size > MAX_EVENT_BODY_BYTES:
            raise ValueError(
                f"event body is {size} bytes as JSON, the limit is {MAX_EVENT_BODY_BYTES}"
            )
        return body
