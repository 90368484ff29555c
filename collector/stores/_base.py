"""The store interfaces. The embedded SQLite stores implement them; later backends will too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from wire import Event, FieldValue, GatewayState


@dataclass(frozen=True, slots=True)
class SeriesWrite:
    """Points of one series to write: ``(ts, fields)`` pairs."""

    measurement: str
    tags: dict[str, str]
    points: list[tuple[int, dict[str, FieldValue]]]


@dataclass(frozen=True, slots=True)
class StoredPoint:
    measurement: str
    tags: dict[str, str]
    ts: int
    fields: dict[str, FieldValue]


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A stored batch, for deduplication: retransmits of it are acked but not stored again."""

    gateway_id: str
    stream_id: str
    seq: int
    readings: int
    received_ns: int


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    received_ns: int
    topic: str
    reason: str
    detail: str
    raw: bytes
    gateway_id: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    id: str
    state: str
    last_seen_ns: int | None
    status: dict[str, Any]
    clock_skew_s: float | None
    clock_flagged: bool


class TimeSeriesStore(Protocol):
    """Readings. Writes are idempotent: the same series, field and timestamp overwrite."""

    def write(self, series: Sequence[SeriesWrite]) -> None: ...

    def query(
        self,
        measurement: str,
        *,
        tags: dict[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredPoint]: ...

    def count_points(self, measurement: str | None = None) -> int: ...

    def close(self) -> None: ...


class DocumentStore(Protocol):
    """Gateways, events, dedup records, quarantine, clock facts."""

    def seen(self, gateway_id: str, stream_id: str, seq: int) -> bool: ...

    def record(self, batches: Sequence[BatchRecord], events: Sequence[tuple[str, Event]]) -> None:
        """Store events and mark batches as stored, in one transaction."""
        ...

    def quarantine(self, entry: QuarantineEntry) -> int: ...

    def quarantined(self, *, limit: int = 100) -> list[QuarantineEntry]: ...

    def events(self, gateway_id: str) -> list[Event]: ...

    def save_state(self, gateway_id: str, state: GatewayState, seen_ns: int) -> None: ...

    def set_clock(self, gateway_id: str, skew_s: float, flagged: bool) -> None: ...

    def boot_offset(self, gateway_id: str, boot_id: str) -> int | None: ...

    def set_boot_offset(self, gateway_id: str, boot_id: str, offset_ns: int) -> None: ...

    def gateway(self, gateway_id: str) -> GatewayRecord | None: ...

    def prune_seen(self, older_than_ns: int) -> int: ...

    def close(self) -> None: ...
