"""Sources: what the agent collects. Each one yields readings and events on an interval."""

from outpost_iot.agent._collection import Collection
from outpost_iot.agent.sources._base import Source
from outpost_iot.agent.sources._host import HostSource
from outpost_iot.agent.sources._simulated import SimulatedSource

__all__ = ["Collection", "HostSource", "SimulatedSource", "Source"]
