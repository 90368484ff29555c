from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wire import Event, Reading


@dataclass(slots=True)
class Collection:
    """What one poll of a source produced."""

    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Source(Protocol):
    """One thing the agent polls. ``collect`` may block briefly; it runs in a worker thread."""

    name: str
    interval: float

    def collect(self) -> Collection: ...


class PushSource(Protocol):
    """A source that receives data as it arrives (MQTT devices) and submits it itself."""

    name: str

    async def run(self, submit: Callable[[Sequence[Reading], Sequence[Event]], None]) -> None: ...
