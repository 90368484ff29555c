"""Strings from outside (gateways, devices, API callers) made safe to log and show."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

from outpost_iot.wire._bounded import BoundedDict

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, limit: int = 300) -> str:
    """``text`` with control and other non-printing characters escaped, cut to ``limit``
    characters: a newline from a gateway cannot start a forged log line, and a megabyte of
    text costs one short line."""
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters)"
    if text.isprintable():
        return text
    return "".join(
        c
        if c.isprintable()
        else _ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_LOG_MESSAGE_CHARS = 4000


class SafeFormatter(logging.Formatter):
    """Every log line one line: control characters in a message (a newline in a gateway's
    config report, an escape sequence in a device name) are escaped, and a message is cut at
    4,000 characters. Tracebacks, which are ours, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message, MAX_LOG_MESSAGE_CHARS)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    """The agent's and the collector's logging: to stderr (the journal), one safe line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


class LogThrottle:
    """At most one log line per key per period: a sender repeating the same bad thing a
    thousand times gets one line, not a thousand. Keys (often from outside) are bounded."""

    def __init__(
        self,
        every_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._every = every_s
        self._clock = clock
        self._last: BoundedDict[Hashable, float] = BoundedDict(max_keys)

    def ready(self, key: Hashable, every_s: float | None = None) -> bool:
        """True (and the period starts again) when ``key`` may be logged now."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < (self._every if every_s is None else every_s):
            return False
        self._last[key] = now
        return True
