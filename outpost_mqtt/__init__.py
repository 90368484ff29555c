"""MQTT plumbing shared by the agent and the collector: sessions that stop when asked.

Both run long-lived reconnect loops around aiomqtt. On Python 3.11 two things can turn a stop
request (cancelling the loop's task: SIGTERM, or the agent restarting into a new config) into
something a loop survives:

- ``asyncio.wait_for``, which aiomqtt uses for every publish, subscribe and connect, returns
  the result and drops the cancellation when both arrive together (fixed in 3.12). A sender
  that publishes in a loop then never stops, and its task group waits for it forever.
  :class:`Client` waits with ``asyncio.timeout`` instead, which keeps count of cancellations.
- A task group re-raises its children's errors in place of the cancellation, and the client's
  ``__aexit__`` can raise ``MqttError`` while disconnecting; a loop that catches ``MqttError``
  would reconnect. :func:`run_session` runs each session in its own task, so a stop always
  reaches the loop as ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import aiomqtt

T = TypeVar("T")

__all__ = ["Client", "run_session"]


class Client(aiomqtt.Client):
    """``aiomqtt.Client`` whose timeouts never swallow a cancellation (same arguments)."""

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 - overrides aiomqtt's signature
        # Same contract as aiomqtt's: None means the client's timeout, math.inf means none.
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None


async def run_session(session: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
    """Await one connection session so that a stop request always stops the caller.

    The session runs in its own task behind a shield. A stop request cancels the session,
    waits for it to end whatever it raises, and goes on as ``CancelledError``. Errors of a
    session that ends on its own propagate unchanged. (``Task.cancelling()`` cannot tell the
    two apart: on 3.11 a task group can leave it raised after a child's error.)
    """
    task = asyncio.ensure_future(session)
    if name is not None:
        task.set_name(name)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: what it raised while stopping is not news
        raise
