from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wire import Event, Reading


@dataclass(slots=True)
class Collection:
    """What one poll of a source produced."""

    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # What the device sent that could not become a reading or event, by reason (counted in
    # the buffer's drops, never silent): invalid_reading, invalid_event, mapping_error, …
    drops: Counter[str] = field(default_factory=Counter)

    def add(self, other: Collection) -> None:
        self.readings += other.readings
        self.events += other.events
        self.drops.update(other.drops)


# How sources hand over what they collected: readings, events, and what they had to drop.
Submit = Callable[[Sequence[Reading], Sequence[Event], Mapping[str, int]], None]


class Source(Protocol):
    """One thing the agent polls. ``collect`` may block briefly; it runs in a worker thread."""

    name: str
    interval: float

    def collect(self) -> Collection: ...


class PushSource(Protocol):
    """A source that receives data as it arrives (MQTT devices) and submits it itself."""

    name: str

    async def run(self, submit: Submit) -> None: ...
