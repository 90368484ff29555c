"""The collector's HTTP API."""

from collector.api._app import create_app
from collector.api._deps import ApiServices

__all__ = ["ApiServices", "create_app"]
