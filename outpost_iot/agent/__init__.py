"""The Outpost gateway agent: collects readings, buffers them durably, ships them over MQTT."""

from outpost_iot.agent._agent import Agent, agent_version, build_sources
from outpost_iot.agent._buffer import BufferStats, Outbox, PendingBatch, open_stats
from outpost_iot.agent._clock import Clock, SkewedClock, SystemClock
from outpost_iot.agent._config import AgentConfig, parse_config
from outpost_iot.agent._exceptions import AgentError, BufferError, ConfigError, UplinkError
from outpost_iot.agent._managed import load_config
from outpost_iot.agent._uplink import AckTracker, Uplink, tls_context

__all__ = [
    "AckTracker",
    "Agent",
    "AgentConfig",
    "AgentError",
    "BufferError",
    "BufferStats",
    "Clock",
    "ConfigError",
    "Outbox",
    "PendingBatch",
    "SkewedClock",
    "SystemClock",
    "Uplink",
    "UplinkError",
    "agent_version",
    "build_sources",
    "load_config",
    "open_stats",
    "parse_config",
    "tls_context",
]
