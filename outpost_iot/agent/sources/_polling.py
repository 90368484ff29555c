"""Polling discipline for devices that are asked (HTTP, SNMP): one task per device, an interval
with jitter, a timeout, backoff while the device is down, and availability events when it stops
answering and when it comes back. One slow or dead device never delays another.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from outpost_iot import mqtt
from outpost_iot.agent._clock import Clock
from outpost_iot.agent._collection import Collection
from outpost_iot.agent.profiles import Mapper
from outpost_iot.agent.sources._base import Submit
from outpost_iot.wire import LogThrottle, printable


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every HTTPS device: the CA store is loaded once, not per
    device (each load costs about a megabyte on a small board)."""
    return ssl.create_default_context()


# The most a device may answer to one request: a UniFi controller's stat/device for a few
# hundred devices is a few megabytes; a device that sends more is refused, not read on.
MAX_RESPONSE_BYTES = 16 << 20


def device_http_client(
    *,
    verify: ssl.SSLContext | bool,
    timeout: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An httpx client for a device on the site network: answers larger than ``max_bytes``
    end the request with :class:`DeviceError` (``bad_response``) instead of filling memory."""
    transport = _CappedTransport(httpx.AsyncHTTPTransport(verify=verify), max_bytes)
    return httpx.AsyncClient(transport=transport, timeout=timeout, **kwargs)


class _CappedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, max_bytes: int) -> None:
        self._inner = inner
        self._max = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max:
            await response.aclose()
            raise _too_large(request, self._max)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, request, self._max),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request, max_bytes: int):
        self._inner = inner
        self._request = request
        self._max = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        try:
            async for chunk in self._inner:
                seen += len(chunk)
                if seen > self._max:
                    raise _too_large(self._request, self._max)
                yield chunk
        finally:
            # Cut off mid-body: close the connection now, not when the garbage collector
            # finds it (an unclosed socket then warns in whatever code runs at that moment).
            await self._inner.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _too_large(request: httpx.Request, limit: int) -> DeviceError:
    return DeviceError(
        "bad_response",
        f"{request.url.copy_with(query=None)} answered more than {limit} bytes; not read on",
    )


class DeviceError(Exception):
    """A device did not give what was asked; ``kind`` in device terms, ``message`` what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # unreachable, timeout, auth_failed, tls_untrusted, bad_response
        self.message = message


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """In place of a payload: one request of a poll failed while the others answered.

    One endpoint a firmware lacks, or one device behind a controller whose statistics request
    fails, does not stop the poll: the rest is mapped, and this is counted (drops
    ``request_failed``) and logged.
    """

    kind: str
    message: str


DROP_REQUEST_FAILED = "request_failed"
# Counts polls, not readings: polls that did not happen because the previous one (the device's
# answer and the buffer's commit) took longer than the interval.
DROP_POLL_SKIPPED = "poll_skipped"


class DeviceClient(Protocol):
    """Fetches raw data from one device: ``[(key, payload)]`` for the profile's rules.

    A payload may be a :class:`FetchFailed` when one request failed and others answered; when
    the device does not answer at all, ``fetch`` raises :class:`DeviceError`.
    """

    async def fetch(self) -> list[tuple[str, object]]: ...

    async def aclose(self) -> None: ...


class PolledDevice:
    """Runs one device: poll, map, submit; back off and report availability when it is down."""

    def __init__(
        self,
        *,
        name: str,
        client: DeviceClient,
        mapper: Mapper,
        interval: float,
        clock: Clock,
        timeout: float | None = None,
        max_backoff: float = 300.0,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
        observe: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.name = name
        self._observe = observe  # sees every answer as the rules do (the probe's diagnosis)
        self.interval = interval
        self._client = client
        self.mapper = mapper
        self._clock = clock
        self._timeout = timeout or max(1.0, min(interval * 0.8, 30.0))
        self._max_backoff = max(max_backoff, interval)
        self._rng = rng or random.Random()
        self._log = logger or logging.getLogger(f"outpost.agent.device.{name}")
        self.polls = 0
        self.failures = 0
        self.skipped = 0  # polls not made because the one before took longer than the interval
        self.last_error: str | None = None  # the device's own words, while it is failing
        self.partial_errors: list[str] = []  # requests of the last poll that failed alone
        self._partial_logged = LogThrottle(300.0)

    async def collect_once(self) -> Collection:
        """One poll, mapped; raises :class:`DeviceError`."""
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._client.fetch()
        except TimeoutError:
            raise DeviceError(
                "timeout", f"{self.name} did not answer within {self._timeout:.0f} s"
            ) from None
        ts = self._clock.wall_ns()
        if getattr(self._client, "restarted", False):
            # Counters began again from zero: new baselines, no rate across the restart.
            self._log.info("%s restarted; counter rates start again", self.name)
            self.mapper.rates.clear()
        out = Collection()
        partial: list[str] = []
        for key, payload in raw:
            if isinstance(payload, FetchFailed):
                out.drops[DROP_REQUEST_FAILED] += 1
                partial.append(f"{key}: {payload.kind}: {payload.message}")
                continue
            if self._observe is not None:
                self._observe(key, payload)
            out.add(self.mapper.apply(key, payload, ts))
        self.partial_errors = partial
        if partial and self._partial_logged.ready(self.name):
            self._log.warning(
                "%s answered, but %d request(s) failed: %s",
                self.name,
                len(partial),
                printable("; ".join(partial[:5])),
            )
        return out

    async def run(self, submit: Submit) -> None:
        loop = asyncio.get_running_loop()
        # Spread devices over the interval instead of polling them all at once.
        await asyncio.sleep(self._rng.uniform(0, min(self.interval, 5.0)))
        failures = 0
        try:
            while True:
                started = loop.time()
                try:
                    out = await self.collect_once()
                except DeviceError as exc:
                    failures += 1
                    self.failures += 1
                    self.last_error = f"{exc.kind}: {exc.message}"
                    event = self.mapper.availability_event(
                        self.name, "offline", self._clock.wall_ns()
                    )
                    if event is not None:
                        self._log.warning(
                            "%s is not answering (%s): %s", self.name, exc.kind, exc.message
                        )
                        submit([], [event], {})
                    wait = mqtt.doubling(self.interval, self._max_backoff, min(failures, 10))
                else:
                    self.polls += 1
                    self.last_error = None
                    if failures:
                        self._log.info("%s answers again", self.name)
                    failures = 0
                    back = self.mapper.availability_event(
                        self.name, "online", self._clock.wall_ns()
                    )
                    events = [*out.events, *([back] if back and self.failures else [])]
                    if out.readings or events or out.drops:
                        submit(out.readings, events, out.drops)
                    wait = self.interval
                # A poll (device and buffer together) that took longer than the interval: the
                # polls that did not happen meanwhile are skipped, not caught up, and counted.
                missed = int((loop.time() - started) // self.interval) if not failures else 0
                if missed:
                    self.skipped += missed
                    submit([], [], {DROP_POLL_SKIPPED: missed})
                jitter = self._rng.uniform(0, min(0.1 * wait, 2.0))
                await asyncio.sleep(max(0.0, started + wait - loop.time()) + jitter)
        finally:
            await self._client.aclose()
