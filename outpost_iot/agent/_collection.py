"""What one poll of a source produced: the firmware profiles' engine makes it, the sources hand
it over, the buffer keeps it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from outpost_iot.wire import Event, Reading


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
