"""The canonical reading and event: the unit of telemetry everywhere."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# Strict types: a bool must stay a bool and "1" must not become 1 on the way.
# Finite floats only: JSON has no NaN or infinity (orjson would write null).
FieldValue = StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictStr
Name = Annotated[str, Field(min_length=1, max_length=256)]
TagValue = Annotated[str, Field(max_length=1024)]

# Nanoseconds since the Unix epoch: 0 .. year 2262 (the int64 limit of line protocol).
TimestampNs = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]


class Reading(BaseModel):
    """One point: a measurement with tags (identify the series), fields and a ns timestamp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measurement: Name
    tags: dict[Name, TagValue] = Field(default_factory=dict)
    fields: Annotated[dict[Name, FieldValue], Field(min_length=1)]
    ts: TimestampNs


class Event(BaseModel):
    """A document: a detection, a device going offline, an alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=128)]
    type: Name
    ts: TimestampNs
    source: Annotated[str, Field(max_length=256)] = ""
    body: dict[str, Any] = Field(default_factory=dict)
