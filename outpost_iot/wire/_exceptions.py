"""Errors of the wire contract.

::

    WireError
    ├── BatchRejected        a batch that cannot be accepted; ``reason`` is a stable code
    └── MessageRejected      an ack, nack or state message that does not parse
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

RejectReason = Literal[
    "malformed", "unsupported_version", "oversized", "invalid_schema", "gateway_mismatch"
]


class WireError(Exception):
    """Base class for every error raised by the wire package."""


class BatchRejected(WireError):
    """A batch that the collector must quarantine.

    ``reason`` is one of the stable codes in :data:`RejectReason`; ``detail`` says what exactly
    is wrong, in words an operator can act on.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


class MessageRejected(WireError):
    """A control message (ack, nack, state) that does not parse."""


def summarize(exc: ValidationError, limit: int = 3) -> str:
    """The first ``limit`` problems of a validation error, each with the field it is about
    (``series.0.p: …``), and how many more there are: what the sender has to change."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
