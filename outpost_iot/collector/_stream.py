"""The live stream behind ``GET /api/v1/stream``: what changed, as it is stored.

The ingest (new latest values, events, gateway state, config reports) and the rollouts publish
:class:`Message` s into a :class:`Hub`; each connected client holds a :class:`Subscription`
that receives the messages its :class:`Filter` lets through (its tenant, the kinds and gateways
it asked for).

- **Resumable.** Every message has an id, increasing; the hub keeps the last ``ring`` of them,
  so a client that reconnects with ``Last-Event-ID`` is given what it missed. A client too far
  behind (its id no longer kept, or from an earlier run of the hub) is sent ``reset``: reload
  the state from the API, then follow the stream.
- **Bounded.** A subscription queues at most ``queue_messages`` messages and
  ``queue_bytes`` bytes; a client that does not read them is disconnected (its queue freed) and
  catches up from the ring when it reconnects. A hub serves at most ``max_clients``.
- **Across replicas.** :class:`LocalHub` keeps the ring in the process (the embedded default:
  one collector). :class:`RedisHub` keeps it in a Redis stream (``XADD`` with a cap): every
  replica publishes there and follows it, so a client sees what any replica stored, and may
  reconnect to another replica with the same ``Last-Event-ID``.

Publishing is safe from any thread (the ingest runs in a worker thread) and never blocks or
fails the ingest: a message that cannot be published is counted and dropped, and the clients
are sent ``reset`` once the hub works again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson

from outpost_iot import wire
from outpost_iot.collector.stores import ALL_TENANTS, SeriesWrite
from outpost_iot.mqtt import Backoff

if TYPE_CHECKING:
    import redis

Kind = Literal["latest", "event", "gateway", "config", "rollout", "alarm"]
KINDS: tuple[Kind, ...] = ("latest", "event", "gateway", "config", "rollout", "alarm")
# What a client gets when it does not say: everything but latest values, which it asks for by
# gateway (a fleet view does not want every reading of every gateway).
DEFAULT_KINDS: frozenset[str] = frozenset(("event", "gateway", "config", "rollout", "alarm"))

MAX_FILTER_VALUES = 100  # gateways or measurements one client may name


@dataclass(frozen=True, slots=True)
class Message:
    """One change. ``data`` is the JSON object sent as the SSE event's data."""

    id: str
    kind: str  # a Kind, or "reset"
    tenant: str
    gateway: str  # "" for what belongs to no gateway (rollouts)
    measurements: frozenset[str]  # of a "latest" message
    data: bytes

    def order(self) -> tuple[int, int]:
        return order(self.id)


def order(message_id: str) -> tuple[int, int]:
    """An id as a comparable pair; ids are ``<a>-<b>`` (Redis stream ids have this form too).
    Raises ValueError for anything else."""
    a, sep, b = message_id.partition("-")
    if not sep or not a.isdigit() or not b.isdigit() or len(a) > 20 or len(b) > 20:
        raise ValueError(f"not a stream id: {message_id[:40]!r}")
    return int(a), int(b)


@dataclass(frozen=True, slots=True)
class Filter:
    """What one client is sent: its tenant's messages (``*``: every tenant) of ``kinds``;
    latest values only of ``gateways`` and ``measurements`` when given."""

    tenant: str
    kinds: frozenset[str] = DEFAULT_KINDS
    gateways: frozenset[str] = frozenset()
    measurements: frozenset[str] = frozenset()

    def wants(self, m: Message) -> bool:
        if m.kind == "reset":
            return True
        if m.kind not in self.kinds:
            return False
        if self.tenant != ALL_TENANTS and m.tenant != self.tenant:
            return False
        if self.gateways and m.gateway and m.gateway not in self.gateways:
            return False
        return not (self.measurements and m.kind == "latest") or bool(
            self.measurements & m.measurements
        )


def _reset_message(why: str, current: str = "") -> Message:
    """Tells a client to reload the state from the API; ``current`` is the newest id, from
    which it follows the stream."""
    return Message(current, "reset", "", "", frozenset(), orjson.dumps({"reason": why}))


class Subscription:
    """One client's queue. Filled on the event loop, read by the client's response."""

    def __init__(self, flt: Filter, *, max_messages: int, max_bytes: int) -> None:
        self.filter = flt
        self._queue: collections.deque[Message] = collections.deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.closed: str | None = None  # why it ended: "overflow", "shutdown"
        self._after: tuple[int, int] | None = None  # drop live messages up to the replay's end
        self._held: list[Message] | None = []  # live messages while the replay is fetched

    def offer(self, m: Message) -> None:
        """Queue ``m`` if the client wants it; on the event loop only."""
        if self.closed is not None or not self.filter.wants(m):
            return
        if self._held is not None:
            self._held.append(m)
            return
        if self._after is not None and m.id and m.order() <= self._after:
            return
        if len(self._queue) >= self._max_messages or self._bytes + len(m.data) > self._max_bytes:
            self.close("overflow")
            return
        self._queue.append(m)
        self._bytes += len(m.data)
        self._ready.set()

    def start(self, replay: Iterable[Message]) -> None:
        """Queue what the client missed, then what arrived meanwhile, in order."""
        held, self._held = self._held or [], None
        for m in replay:
            self.offer(m)
            if m.id:
                self._after = m.order()
        for m in held:
            self.offer(m)

    def close(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
            self._queue.clear()
            self._bytes = 0
            self._ready.set()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    async def next(self, wait_s: float) -> Message | None:
        """The next message; None after ``wait_s`` without one. Raises
        :class:`StreamClosed` once the subscription is closed."""
        while not self._queue:
            if self.closed is not None:
                raise StreamClosed(self.closed)
            self._ready.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self.closed is not None:
            raise StreamClosed(self.closed)
        m = self._queue.popleft()
        self._bytes -= len(m.data)
        return m


class StreamClosed(Exception):
    """The subscription ended: the client is too slow (``overflow``) or the hub stops."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class TooManyClients(Exception):
    pass


@dataclass
class StreamMetrics:
    published: int = 0
    delivered: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    disconnected_slow: int = 0


class Hub:
    """What :class:`LocalHub` and :class:`RedisHub` share: the subscriptions of this process
    and their delivery on its event loop."""

    def __init__(
        self,
        *,
        ring: int = 10_000,
        max_clients: int = 500,
        queue_messages: int = 2_000,
        queue_bytes: int = 4 * 1024 * 1024,
        logger: logging.Logger | None = None,
    ) -> None:
        self.ring = ring
        self.max_clients = max_clients
        self.queue_messages = queue_messages
        self.queue_bytes = queue_bytes
        self.metrics = StreamMetrics()
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = logger or logging.getLogger("outpost.collector.stream")
        self._logged = wire.LogThrottle(60.0)

    @property
    def clients(self) -> int:
        return len(self._subs)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` (the API's); until then messages are only kept."""
        self._loop = loop

    def publish(self, kind: Kind, tenant: str, gateway: str, data: dict[str, Any]) -> None:
        """From any thread; never raises."""
        self.publish_many([(kind, tenant, gateway, data)])

    def publish_many(self, items: Sequence[tuple[Kind, str, str, dict[str, Any]]]) -> None:
        if not items:
            return
        try:
            self._publish(items)
            self.metrics.published += len(items)
        except Exception as exc:  # the stream must never fail what published into it
            self.metrics.dropped["unpublished"] += len(items)
            if self._logged.ready("publish"):
                self._log.warning("live stream: %d message(s) not published: %s", len(items), exc)

    def _publish(self, items: Sequence[tuple[Kind, str, str, dict[str, Any]]]) -> None:
        raise NotImplementedError

    def _deliver(self, messages: Sequence[Message]) -> None:
        """To every subscription; on the event loop."""
        for s in list(self._subs):
            for m in messages:
                s.offer(m)
            if s.closed == "overflow":
                self._subs.discard(s)
                self.metrics.disconnected_slow += 1
        self.metrics.delivered += len(messages)

    def _deliver_threadsafe(self, messages: Sequence[Message]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if _running_loop() is loop:
                self._deliver(messages)
            else:
                loop.call_soon_threadsafe(self._deliver, messages)
        except RuntimeError:  # the loop closed meanwhile: nobody to deliver to
            return

    async def _replay(self, last_id: str | None) -> list[Message]:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def subscribe(self, flt: Filter, last_id: str | None) -> AsyncIterator[Subscription]:
        """A subscription for one client, given what it missed after ``last_id``."""
        if len(self._subs) >= self.max_clients:
            raise TooManyClients(f"this collector serves {self.max_clients} stream clients")
        if self._loop is None:
            self.bind(asyncio.get_running_loop())
        sub = Subscription(flt, max_messages=self.queue_messages, max_bytes=self.queue_bytes)
        self._subs.add(sub)
        try:
            sub.start(await self._replay(last_id))
            yield sub
        finally:
            self._subs.discard(sub)
            sub.close("ended")

    def close(self) -> None:
        for s in list(self._subs):
            s.close("shutdown")
        self._subs.clear()

    async def run(self) -> None:
        """What the hub does in the background (following Redis); until cancelled."""
        await asyncio.Event().wait()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LocalHub(Hub):
    """The ring in this process. Ids are ``<start>-<n>``: ``<start>`` tells this run of the hub
    from an earlier one (whose ids mean nothing to it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._start = time.time_ns() // 1_000_000
        self._n = 0
        self._ring: collections.deque[Message] = collections.deque(maxlen=self.ring)
        self._lock = threading.Lock()

    def _publish(self, items: Sequence[tuple[Kind, str, str, dict[str, Any]]]) -> None:
        out = []
        with self._lock:
            for kind, tenant, gateway, data in items:
                self._n += 1
                m = _message(f"{self._start}-{self._n}", kind, tenant, gateway, data)
                self._ring.append(m)
                out.append(m)
        self._deliver_threadsafe(out)

    async def _replay(self, last_id: str | None) -> list[Message]:
        if last_id is None:
            return []
        with self._lock:
            kept = list(self._ring)
            current = f"{self._start}-{self._n}"
        try:
            start, n = order(last_id)
        except ValueError:
            return [_reset_message("unknown_id", current)]
        if start != self._start or n > self._n:
            return [_reset_message("collector_restarted", current)]
        if kept and n < kept[0].order()[1] - 1:
            return [_reset_message("too_far_behind", current)]
        return [m for m in kept if m.order()[1] > n]


def _measurements(data: dict[str, Any]) -> set[str]:
    return {s["measurement"] for s in data.get("series", ())}


def _message(mid: str, kind: str, tenant: str, gateway: str, data: dict[str, Any]) -> Message:
    return Message(mid, kind, tenant, gateway, frozenset(_measurements(data)), orjson.dumps(data))


class RedisHub(Hub):
    """The ring is a Redis stream (``<prefix>stream``, capped near ``ring`` entries); every
    replica adds to it and follows it."""

    def __init__(
        self, client: redis.Redis, *, prefix: str, url: str, timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._key = f"{prefix}stream"
        self._url = url
        self._timeout_s = timeout_s

    def _publish(self, items: Sequence[tuple[Kind, str, str, dict[str, Any]]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for kind, tenant, gateway, data in items:
            pipe.xadd(
                self._key,
                {
                    "k": kind,
                    "t": tenant,
                    "g": gateway,
                    "m": "\n".join(_measurements(data)),
                    "d": orjson.dumps(data),
                },
                maxlen=self.ring,
                approximate=True,
            )
        pipe.execute()

    @staticmethod
    def _decode(entry: tuple[bytes, dict[bytes, bytes]]) -> Message | None:
        mid, f = entry
        try:
            m = f[b"m"].decode()
            return Message(
                mid.decode(),
                f[b"k"].decode(),
                f[b"t"].decode(),
                f[b"g"].decode(),
                frozenset(m.split("\n")) if m else frozenset(),
                f[b"d"],
            )
        except (KeyError, UnicodeDecodeError):
            return None  # not ours: another program wrote to the key

    async def _replay(self, last_id: str | None) -> list[Message]:
        if last_id is None:
            return []
        try:
            after = order(last_id)
        except ValueError:
            after = None

        def read() -> tuple[list[Any], dict[str, Any]]:
            if not self._client.exists(self._key):
                return [], {}
            info = self._client.xinfo_stream(self._key)
            if after is None:
                return [], info
            first = f"({after[0]}-{after[1]}"
            entries = self._client.xrange(self._key, min=first, count=self.ring)
            return cast(list[Any], entries), info

        try:
            entries, info = await asyncio.to_thread(read)
        except Exception as exc:  # Redis down, or the stream not made yet
            if self._logged.ready("replay"):
                self._log.warning("live stream: cannot read what a client missed: %s", exc)
            return [_reset_message("unavailable")]
        current = _text(info.get("last-generated-id") or b"0-0")
        if after is None:
            return [_reset_message("unknown_id", current)]
        if after < order(_text(info.get("max-deleted-entry-id") or b"0-0")):
            return [_reset_message("too_far_behind", current)]
        if after > order(current):
            return [_reset_message("unknown_id", current)]
        return [m for m in map(self._decode, entries) if m is not None]

    async def run(self) -> None:
        """Follow the stream and deliver what any replica added; after a Redis outage the
        clients are sent ``reset`` (what was published meanwhile is lost to them)."""
        import redis.asyncio as aioredis

        backoff = Backoff(base=0.5, cap=10.0)
        this = asyncio.current_task()
        assert this is not None
        last = "$"
        failed = False
        while True:
            client = aioredis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s + 5, socket_connect_timeout=5
            )
            try:
                if last == "$":
                    # Where the stream is now, as an id: "$" in every XREAD would lose what is
                    # added between two of them.
                    newest = cast(list[Any], await client.xrevrange(self._key, count=1))
                    last = newest[0][0].decode() if newest else "0-0"
                while not this.cancelling():
                    got = cast(
                        list[Any], await client.xread({self._key: last}, block=1000, count=1000)
                    )
                    if failed:
                        failed = False
                        backoff.reset()
                        self._log.info("live stream: following Redis again")
                        self._deliver([_reset_message("unavailable")])
                    for _key, entries in got or ():
                        messages = [m for m in map(self._decode, entries) if m is not None]
                        last = entries[-1][0].decode()
                        self._deliver(messages)
                # redis-py may swallow the cancellation of a blocking read: stop all the same.
                raise asyncio.CancelledError
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: retry, clients keep their connection
                if this.cancelling():  # the cancellation turned into an error by redis-py
                    raise asyncio.CancelledError from exc
                if not failed:
                    self._log.warning("live stream: cannot follow Redis: %s", exc)
                failed = True
                await asyncio.sleep(backoff.next_delay())
            finally:
                # Bounded: a connection cancelled in the middle of a read may not close cleanly.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await client.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# What the ingest and the rollouts publish.


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 3)


def stored(
    hub: Hub,
    writes: Sequence[SeriesWrite],
    events: Sequence[tuple[str, str, wire.Event]],
) -> None:
    """What a stored group of batches changed: the newest point of each series written, per
    gateway (``latest``), and each event (``event``: gateway, tenant, event)."""
    items: list[tuple[Kind, str, str, dict[str, Any]]] = []
    by_gateway: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in writes:
        if not w.points:
            continue
        ts, fields = max(w.points, key=lambda p: p[0])
        key = (w.tags.get("gateway", ""), w.tenant)
        by_gateway.setdefault(key, []).append(
            {"measurement": w.measurement, "tags": w.tags, "fields": fields, "ts": _s(ts)}
        )
    for (gateway, tenant), series in by_gateway.items():
        items.append(("latest", tenant, gateway, {"gateway_id": gateway, "series": series}))
    for gateway, tenant, e in events:
        body = {
            "gateway_id": gateway,
            "id": e.id,
            "type": e.type,
            "ts": _s(e.ts),
            "source": e.source,
            "body": e.body,
        }
        items.append(("event", tenant, gateway, body))
    hub.publish_many(items)


def gateway_state(
    hub: Hub, tenant: str, gateway: str, state: wire.GatewayState, seen_ns: int
) -> None:
    """A gateway's state report, as the fleet listing shows it."""
    hub.publish(
        "gateway",
        tenant,
        gateway,
        {
            "id": gateway,
            "state": state.state,
            "last_seen": _s(seen_ns),
            "agent_version": state.agent_version,
            "backlog_readings": state.backlog_readings,
            "backlog_batches": state.backlog_batches,
            "oldest_unsent_s": state.oldest_unsent_s,
            "drops": dict(state.drops),
        },
    )


def config_report(hub: Hub, tenant: str, gateway: str, report: wire.ConfigReport) -> None:
    """What a gateway did with a desired config."""
    hub.publish(
        "config",
        tenant,
        gateway,
        {
            "gateway_id": gateway,
            "version": report.version,
            "status": report.status,
            "applied_version": report.applied_version,
            "reason": report.reason,
            "errors": report.errors,
            "ts": _s(report.ts),
        },
    )
