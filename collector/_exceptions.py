"""Errors of the collector.

::

    CollectorError
    ├── ConfigError        the config file is missing, not TOML, or fails validation
    ├── StoreError         a store failed (sqlite3 / driver errors, translated)
    │   └── StoreUnavailable   the store cannot be reached now; retry later (nack, not crash)
    ├── EnrollmentRefused  an enrollment or renewal request that cannot be granted
    │   └── TokenRefused       the enrollment token is unknown, expired, used up or revoked
    └── TooManyPoints      a query would return more points than its limit
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class for errors raised by the collector."""


class ConfigError(CollectorError):
    """The configuration is unusable; the message names the file, the key and the fix."""


class StoreError(CollectorError):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The store cannot take writes now (locked, full disk, connection down)."""


class EnrollmentRefused(CollectorError):
    """A request the collector refuses; ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenRefused(EnrollmentRefused):
    """The enrollment token cannot be used (code: unknown, expired, used_up, revoked)."""


class TooManyPoints(CollectorError):
    """A query would return more points than allowed."""

    def __init__(self, points: int, limit: int) -> None:
        super().__init__(
            f"the query would return {points} points, more than the limit of {limit}; "
            "use a larger bucket, a shorter time range or fewer groups"
        )
        self.points = points
        self.limit = limit
