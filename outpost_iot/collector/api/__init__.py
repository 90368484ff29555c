"""The collector's HTTP API."""

from outpost_iot.collector.api._app import create_app
from outpost_iot.collector.api._deps import ApiServices

__all__ = ["ApiServices", "create_app"]
