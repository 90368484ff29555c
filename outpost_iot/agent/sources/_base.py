from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from outpost_iot.agent._collection import Collection
from outpost_iot.wire import Event, Reading

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
