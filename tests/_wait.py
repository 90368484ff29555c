"""Waiting on a condition, never on the clock alone: the suite runs on busy machines. A wait that
times out says what it waited for and, given ``seen``, what the test saw instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def _timed_out(timeout: float, what: str, seen: Callable[[], object] | None) -> AssertionError:
    saw = f"; saw {seen()}" if seen is not None else ""
    return AssertionError(f"timed out after {timeout} s waiting for {what}{saw}")


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    seen: Callable[[], object] | None = None,
) -> None:
    """Wait (blocking) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if predicate():
        return
    raise _timed_out(timeout, what, seen)


async def until(
    predicate: Callable[[], object],
    *,
    within: float = 10.0,
    what: str = "the condition",
    interval: float = 0.01,
    seen: Callable[[], object] | None = None,
) -> None:
    """Wait (in the event loop, so the code under test runs) until ``predicate()`` is true."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(within, what, seen)
        await asyncio.sleep(interval)
