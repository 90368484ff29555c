"""The collector's MQTT side: a shared subscription feeding the :class:`Ingestor`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import ssl
import time
from collections.abc import Callable, Iterator

import aiomqtt
import uvicorn
from paho.mqtt.subscribeoptions import SubscribeOptions

from outpost_iot import mqtt, wire
from outpost_iot.collector._config import ApiConfig, BrokerConfig, RetentionConfig
from outpost_iot.collector._exceptions import StoreError
from outpost_iot.collector._ingest import Incoming, Ingestor, batch_key
from outpost_iot.collector._roster import RESPONSE_TOPIC, BrokerRoster
from outpost_iot.collector.stores import DocumentStore, TimeSeriesStore
from outpost_iot.systemd import Notifier, ProgressMonitor, feed_watchdog
from outpost_iot.wire import topics

_MAX_GROUP = 64  # messages processed (and committed) together


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where there is one (Linux with glibc); None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def client_tls(config: BrokerConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
    return ctx


class ApiServer:
    """The HTTPS API inside the collector's event loop (uvicorn, TLS from [api])."""

    def __init__(self, config: ApiConfig, app: object) -> None:
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,  # type: ignore[arg-type]
                host=config.listen,
                port=config.port,
                ssl_certfile=str(config.tls_cert),
                ssl_keyfile=str(config.tls_key),
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    async def serve(self) -> None:
        await self._server.serve()


class _EmbeddedServer(uvicorn.Server):
    """Leaves SIGINT and SIGTERM to the collector, which stops all its tasks together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def enrolled_gateways(docs: DocumentStore) -> set[str]:
    """Gateways enrolled and not decommissioned: the broker's roster follows them."""
    return {
        str(g.id) for g in docs.gateways() if g.enrolled_ns is not None and g.revoked_ns is None
    }


class RetainedOutbox:
    """Retained publishes (QoS 1) that other parts of the collector ask for from any thread —
    desired configs — sent on the current or next broker session, again on the next session
    when one fails."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, bytes]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Take publishes from now on (the collector's event loop is running)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()

    def publish(self, topic: str, payload: bytes) -> None:
        """Any thread; raises :class:`RuntimeError` before the collector runs."""
        if self._loop is None or self._queue is None:
            raise RuntimeError("the collector service is not running")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (topic, payload))

    async def send(self, client: aiomqtt.Client) -> None:
        """Publish what is asked for on ``client``'s session, until it ends."""
        assert self._queue is not None
        while True:
            topic, payload = await self._queue.get()
            try:
                await client.publish(topic, payload, qos=1, retain=True)
            except aiomqtt.MqttError:
                self._queue.put_nowait((topic, payload))  # again on the next session
                raise


class CollectorService:
    """Subscribes with ``$share/collectors/…``; any number of replicas split the stream."""

    def __init__(
        self,
        *,
        broker: BrokerConfig,
        ingestor: Ingestor,
        documents: DocumentStore,
        dedup_window_s: float,
        max_queued: int = 2_000,
        max_queued_bytes: int = 256 << 20,
        overload_retry_after_ms: int = 2_000,
        summary_interval_s: float = 60.0,
        notifier: Notifier | None = None,
        logger: logging.Logger | None = None,
        timeseries: TimeSeriesStore | None = None,
        retention: RetentionConfig | None = None,
        roster: BrokerRoster | None = None,
        outbox: RetainedOutbox | None = None,
        on_connect: Callable[[], object] | None = None,
        rollout_step: Callable[[], None] | None = None,
    ) -> None:
        """``outbox``: retained publishes other parts ask for (desired configs);
        ``on_connect``: run in a thread after each subscription (republish desired configs);
        ``rollout_step``: run in a thread every 2 s (advance rollouts)."""
        self._notifier = notifier or Notifier({})
        self.monitor = ProgressMonitor()
        self._cfg = broker
        self._ingestor = ingestor
        self._docs = documents
        self._dedup_window_s = dedup_window_s
        self._max_queued = max_queued
        self._overload_retry_ms = overload_retry_after_ms
        self._summary_interval = summary_interval_s
        self.overloaded = 0
        self._logged = wire.LogThrottle(3600.0)  # background failures, retained junk
        self._queued_bytes = 0
        self._max_queued_bytes = max_queued_bytes
        self._trim_marker: tuple[int, int] = (0, 0)
        self._trimmed = 0.0
        self._log = logger or logging.getLogger("outpost.collector")
        self.subscribed = asyncio.Event()
        self._ts = timeseries
        self._retention = retention
        self.roster = roster or BrokerRoster(
            enrolled=lambda: enrolled_gateways(documents),
            revoked=documents.revoked_gateways,
            logger=self._log.getChild("roster"),
        )
        self._outbox = outbox or RetainedOutbox()
        self._on_connect = on_connect
        self._rollout_step = rollout_step

    async def run(self) -> None:
        self._outbox.open()
        self.monitor.register("ingest")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                feed_watchdog(self._notifier, self.monitor, status=self._status, logger=self._log),
                name="collector-watchdog",
            )
            tg.create_task(self._prune_dedup_records(), name="collector-prune")
            tg.create_task(self._log_summary(), name="collector-summary")
            tg.create_task(self._refresh_revocations(), name="collector-revocations")
            if self._rollout_step is not None:
                tg.create_task(
                    self._advance_rollouts(self._rollout_step), name="collector-rollouts"
                )
            if self._ts is not None and self._retention is not None:
                tg.create_task(
                    self._maintain(self._ts, self._retention), name="collector-retention"
                )
            tg.create_task(self._connect_forever(), name="collector-mqtt")

    async def _prune_dedup_records(self) -> None:
        """Forget stored-batch records older than the dedup window, hourly.

        A gateway retransmits within minutes (``ack_timeout``), so a window of days is ample;
        the idempotent time-series writes cover anything older.
        """
        while True:
            cutoff = time.time_ns() - int(self._dedup_window_s * 1e9)
            try:
                pruned = await asyncio.to_thread(self._docs.prune_seen, cutoff)
            except Exception as exc:  # one failure must not stop the collector
                self._loop_failed("prune dedup records", exc)
            else:
                if pruned:
                    self._log.info("pruned %d dedup records older than the window", pruned)
            await asyncio.sleep(3600)

    async def _maintain(self, ts: TimeSeriesStore, r: RetentionConfig) -> None:
        """Rollups brought up to date every minute; old data expired every hour."""
        day = 86400 * 10**9
        last_expiry = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_expiry >= r.expire_interval_s or not last_expiry:
                    # Tried once per interval even when it fails: rollups go on meanwhile.
                    last_expiry = loop.time()
                    now = time.time_ns()
                    gone = await asyncio.to_thread(
                        ts.expire,
                        raw_before_ns=now - int(r.raw_days * day),
                        rollup_5m_before_ns=now - int(r.rollup_5m_days * day),
                        rollup_1h_before_ns=now - int(r.rollup_1h_days * day),
                    )
                    gone |= await asyncio.to_thread(
                        self._docs.expire,
                        events_before_ns=now - int(r.events_days * day),
                        quarantine_before_ns=now - int(r.quarantine_days * day),
                        audit_before_ns=now - int(r.audit_days * day),
                    )
                    gone["console_sessions"] = await asyncio.to_thread(
                        self._docs.expire_sessions, now
                    )
                    if any(gone.values()):
                        self._log.info(
                            "retention: deleted %s",
                            ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in gone.items() if v),
                        )
                else:
                    await asyncio.to_thread(
                        ts.refresh_rollups, time.time_ns() - int(r.raw_days * day)
                    )
            except Exception as exc:  # a bad row must not stop maintenance, or the collector
                self._loop_failed("update rollups or expire old data", exc)
            await asyncio.sleep(r.rollup_interval_s)

    async def _advance_rollouts(self, step: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                await asyncio.to_thread(step)
            except Exception as exc:  # one failure must not stop the collector
                self._loop_failed("advance rollouts", exc)

    async def _refresh_revocations(self) -> None:
        """Pick up decommissions made with the CLI (another process) within seconds."""
        while True:
            await asyncio.sleep(2)
            try:
                await asyncio.to_thread(self._ingestor.refresh_revocations)
                self.roster.sync_revoked(await asyncio.to_thread(self._docs.revoked_gateways))
            except Exception as exc:  # one failure must not stop the collector
                self._loop_failed("read revocations", exc)

    def _loop_failed(self, what: str, exc: Exception) -> None:
        """A background step failed: a store error is logged each time (it says what is down);
        anything else with its traceback, once an hour per step and kind, and the step runs
        again at its next turn."""
        if isinstance(exc, StoreError):
            self._log.warning("cannot %s: %s", what, exc)
            return
        if self._logged.ready((what, type(exc).__name__)):
            self._log.error(
                "cannot %s (will try again): %s: %s", what, type(exc).__name__, exc, exc_info=exc
            )

    async def _log_summary(self) -> None:
        """One line per interval with what was ingested, for operators reading the log."""
        last = ""
        while True:
            await asyncio.sleep(self._summary_interval)
            m = self._ingestor.metrics
            line = (
                f"stored {m.batches_stored} batches / {m.readings_stored} readings / "
                f"{m.events_stored} events; duplicates {m.duplicates}; quarantined "
                f"{m.quarantined}; corrected {m.readings_corrected}; nacks "
                f"{dict(m.nacks) or 0}; overloaded {self.overloaded} (totals since start)"
            )
            if line != last:
                self._log.info("%s", line)
                last = line

    def _status(self) -> str:
        m = self._ingestor.metrics
        link = "subscribed" if self.subscribed.is_set() else "not connected"
        return f"{link}; {m.readings_stored} readings stored; {m.quarantined} quarantined"

    async def _connect_forever(self) -> None:
        # The same policy as the gateways' (a collector is one of few clients: a lower cap).
        backoff = mqtt.Backoff(base=0.5, cap=2.0, busy_cap=30.0)
        while True:
            self._attempt: mqtt.Client | None = None
            try:
                await mqtt.run_session(self._session(backoff), name="collector-session")
            except* aiomqtt.MqttError as group:
                self._log.warning(
                    "broker %s:%d lost or refused: %s",
                    self._cfg.host,
                    self._cfg.port,
                    "; ".join(str(e) for e in group.exceptions),
                )
            self.subscribed.clear()
            attempt = self._attempt
            delay = backoff.next_delay(busy=attempt is not None and attempt.costly_failure)
            while delay > 0:  # waiting to reconnect is not a stall
                self.monitor.beat("ingest")
                await asyncio.sleep(min(1.0, delay))
                delay -= 1.0

    def _client(self) -> mqtt.Client:
        expiry = self._cfg.session_expiry_s
        return mqtt.Client(
            self._cfg.host,
            self._cfg.port,
            identifier=self._cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=client_tls(self._cfg),
            keepalive=self._cfg.keepalive,
            # A persistent session: what arrives while this replica reconnects waits for it.
            clean_start=expiry == 0,
            properties=mqtt.session_properties(expiry) if expiry else None,
            logger=self._log.getChild("mqtt"),
        )

    async def _session(self, backoff: mqtt.Backoff) -> None:
        client = self._attempt = self._client()
        async with client:
            backoff.connected()
            # Retain-as-published: a retained publish shows as retained, so junk a gateway
            # leaves retained on its up/ topics (only its state may be) is found and cleared.
            await client.subscribe(
                topics.COLLECTOR_SUBSCRIPTION,
                options=SubscribeOptions(qos=1, retainAsPublished=True),
            )
            self._log.info(
                "collector subscribed to %s on %s:%d",
                topics.COLLECTOR_SUBSCRIPTION,
                self._cfg.host,
                self._cfg.port,
            )
            self.subscribed.set()
            self._notifier.ready(self._status())
            queue: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=self._max_queued)
            if self._on_connect is not None:
                await asyncio.to_thread(self._on_connect)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client, queue), name="collector-receive")
                    tg.create_task(self._work(client, queue), name="collector-ingest")
                    tg.create_task(self._outbox.send(client), name="collector-publish")
                    tg.create_task(self.roster.run(client), name="collector-roster")
            except asyncio.CancelledError:
                # Stopping: end the session, so the broker hands this replica's share of the
                # batches to the others (or answers "no subscribers") instead of keeping them
                # for a replica that may not come back. What was queued here but not yet
                # stored was not acked: the gateways send it again.
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.end_session()
                raise

    async def _receive(self, client: aiomqtt.Client, queue: asyncio.Queue[Incoming]) -> None:
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            topic = str(message.topic)
            if topic == RESPONSE_TOPIC:
                self.roster.on_message(data)
                continue
            if message.retain and data and not topic.endswith("/up/state"):
                await self._clear_retained(client, topic)
            props: dict[str, str] = {}
            user = getattr(message.properties, "UserProperty", None) if message.properties else None
            for key, value in user or []:
                props[str(key)] = str(value)
            incoming = Incoming(str(message.topic), data, props, time.time_ns())
            if queue.full() or self._queued_bytes + len(data) > self._max_queued_bytes:
                # Backpressure instead of unbounded memory: the gateway keeps the batch.
                await self._refuse_overloaded(client, incoming)
                continue
            self._queued_bytes += len(data)
            queue.put_nowait(incoming)

    async def _clear_retained(self, client: aiomqtt.Client, topic: str) -> None:
        """Only a gateway's state may stay retained: anything else is cleared at once (and
        still handled as the message it is), so no junk accumulates in the broker's store."""
        self._ingestor.metrics.retained_cleared += 1
        gateway = topics.gateway_of(topic) or "(unknown)"
        if self._logged.ready(("retained", gateway)):
            self._log.warning(
                "gateway %s published retained on %s; only up/state may be retained: cleared",
                gateway,
                topic,
            )
        await client.publish(topic, b"", qos=1, retain=True)

    async def _refuse_overloaded(self, client: aiomqtt.Client, msg: Incoming) -> None:
        self.overloaded += 1
        parsed = topics.parse_up_topic(msg.topic)
        key = batch_key(msg.properties)
        if parsed is None or parsed[1] != "batch" or key is None:
            # Not a batch (e.g. a periodic state report): the next one supersedes it.
            return
        nack = wire.Nack(
            stream=key[0],
            seq=key[1],
            reason="overloaded",
            retry_after_ms=self._overload_retry_ms,
            detail="the collector is behind; keep the batch and retry",
        )
        await client.publish(topics.down_ack(parsed[0]), wire.encode_message(nack), qos=1)

    async def _work(self, client: aiomqtt.Client, queue: asyncio.Queue[Incoming]) -> None:
        while True:
            self.monitor.beat("ingest")
            try:
                async with asyncio.timeout(1.0):
                    first = await queue.get()
            except TimeoutError:
                await self._give_memory_back()  # after a burst, once things are quiet
                continue
            group = [first]
            while len(group) < _MAX_GROUP and not queue.empty():
                group.append(queue.get_nowait())
            self._queued_bytes -= sum(len(m.payload) for m in group)
            try:
                replies = await asyncio.to_thread(self._ingestor.handle, group)
            except Exception as exc:  # the ingestor contains each message; this is a last guard
                # Nothing was acked: the gateways send these batches again after ack_timeout.
                self._loop_failed(f"handle a group of {len(group)} message(s)", exc)
                continue
            for reply in replies:
                await client.publish(reply.topic, wire.encode_message(reply.message), qos=1)
            await self._give_memory_back()

    async def _give_memory_back(self) -> None:
        """Hand freed memory back to the system after large or bad input (at most every 10 s).

        Decoding a frame of many small objects takes several times the frame's body in memory
        for a moment; glibc keeps what was freed in its per-thread arenas, so without this the
        collector's memory would follow the largest burst it ever saw.
        """
        m = self._ingestor.metrics
        marker = (m.quarantined + sum(m.dropped.values()), m.readings_stored // 50_000)
        now = time.monotonic()
        if marker == self._trim_marker or now - self._trimmed < 10.0 or _MALLOC_TRIM is None:
            return
        self._trim_marker, self._trimmed = marker, now
        await asyncio.to_thread(_MALLOC_TRIM, 0)
