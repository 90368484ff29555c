"""Sources: what the agent collects. Each one yields readings and events on an interval."""

from agent._collection import Collection
from agent.sources._base import Source
from agent.sources._host import HostSource
from agent.sources._simulated import SimulatedSource

__all__ = ["Collection", "HostSource", "SimulatedSource", "Source"]
