"""Errors of the collector.

::

    CollectorError
    ├── ConfigError        the config file is missing, not TOML, or fails validation
    ├── StoreError         a store failed (sqlite3 / driver errors, translated)
    │   └── StoreUnavailable   the store cannot be reached now; retry later (nack, not crash)
    ├── EnrollmentRefused  an enrollment or renewal request that cannot be granted
    │   └── TokenRefused       the enrollment token is unknown, expired, used up or revoked
    └── QueryRefused       a query past a limit (``code`` says which); the caller narrows it
        ├── TooManyPoints      it would return more points than its limit
        ├── QueryTooCostly     it would scan more series × buckets than allowed
        └── QueryTimeout       it ran past its time limit and was stopped
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

    def __init__(self, code: str, message: str, *, tenant: str = "", token_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The token's tenant and id when the token was found (for the audit log), else "".
        self.tenant = tenant
        self.token_id = token_id


class TokenRefused(EnrollmentRefused):
    """The enrollment token cannot be used (code: unknown, expired, used_up, revoked)."""


class QueryRefused(CollectorError):
    """A query past one of its limits; ``code`` is stable, the message says what to change."""

    code = "query_refused"


class TooManyPoints(QueryRefused):
    """A query would return more points than allowed."""

    code = "too_many_points"

    def __init__(self, points: int, limit: int) -> None:
        super().__init__(
            f"the query would return {points} points, more than the limit of {limit}; "
            "use a larger bucket, a shorter time range or fewer groups"
        )
        self.points = points
        self.limit = limit


class QueryTooCostly(QueryRefused):
    """A query would scan more (series × buckets) than allowed."""

    code = "too_costly"

    def __init__(self, series: int, buckets: int, limit: int) -> None:
        super().__init__(
            f"the query would aggregate {series} series × {buckets} buckets, more than the limit"
            f" of {limit}; filter with tag=, use a larger bucket or a shorter time range"
        )


class QueryTimeout(QueryRefused):
    """A query ran past its time limit and was stopped."""

    code = "query_too_slow"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the query ran for more than {seconds:g} s and was stopped; filter with tag=, use a"
            " larger bucket or a shorter time range"
        )
