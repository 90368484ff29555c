"""MQTT plumbing shared by the agent and the collector: sessions that stop when asked, publish
answers read, and one reconnect policy (:class:`Backoff`)."""

from outpost_iot.mqtt._backoff import Backoff, doubling
from outpost_iot.mqtt._client import (
    BUSY_CONNACK_CODES,
    NO_MATCHING_SUBSCRIBERS,
    Client,
    run_session,
    session_properties,
)

__all__ = [
    "BUSY_CONNACK_CODES",
    "NO_MATCHING_SUBSCRIBERS",
    "Backoff",
    "Client",
    "doubling",
    "run_session",
    "session_properties",
]
