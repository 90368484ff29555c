"""The collector assembled from its config, in one place and through constructors.

::

    stores ── enrollment ──────────────────────────────┐
       │                                               │
       ├── ingestor (limiter, dedup: Redis if set)     │
       ├── retained outbox ── configs ── rollouts      │
       │                                               │
       └── service (MQTT session: ingest, publish, roster, maintenance)
                 │                                     │
                 └───────────── API (HTTPS, if [api]) ─┘

Everything is made in dependency order and handed to what uses it; nothing is attached after
construction. ``outpost-collector serve`` runs what :func:`assemble` returns until a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from outpost_iot.collector._alarms import AlarmEvaluator, run_schedule
from outpost_iot.collector._backends import open_documents, open_timeseries
from outpost_iot.collector._config import CollectorConfig
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._enrollment import EnrollmentService
from outpost_iot.collector._exceptions import ConfigError
from outpost_iot.collector._ingest import DedupWindow, Ingestor, Limiter
from outpost_iot.collector._notify import Deliveries
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector._service import ApiServer, CollectorService, RetainedOutbox
from outpost_iot.collector._stream import Hub, LocalHub, RedisHub
from outpost_iot.collector.api import ApiServices, create_app
from outpost_iot.collector.stores import DocumentStore, TimeSeriesStore
from outpost_iot.provisioning import ProvisioningError
from outpost_iot.systemd import Notifier


@dataclass(frozen=True, slots=True, kw_only=True)
class Collector:
    """A collector ready to run: its MQTT service and, with ``[api]``, its HTTPS API."""

    service: CollectorService
    api: ApiServer | None
    stream: Hub
    alarms: AlarmEvaluator
    deliveries: Deliveries
    alarm_interval_s: float
    configs: ConfigService | None = None  # gives gateways their edge alarm rules

    async def run(self) -> None:
        """Until cancelled (or one part fails: then the others stop too)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.service.run(), name="collector")
                tg.create_task(
                    run_schedule(self.alarms, self.alarm_interval_s, self.configs), name="alarms"
                )
                tg.create_task(self.deliveries.run(), name="notifications")
                if self.api is not None:
                    self.stream.bind(asyncio.get_running_loop())
                    tg.create_task(self.stream.run(), name="stream")
                    tg.create_task(self.api.serve(), name="api")
        finally:
            self.stream.close()


def enrollment_service(config: CollectorConfig, docs: DocumentStore) -> EnrollmentService | None:
    """With ``[pki]`` and ``[enrollment]``; raises :class:`ConfigError` if the CA or the signing
    key cannot be loaded."""
    if config.pki is None or config.enrollment is None:
        return None
    try:
        return EnrollmentService(docs=docs, pki=config.pki, enrollment=config.enrollment)
    except (ProvisioningError, OSError, ValueError) as exc:
        raise ConfigError(f"[pki]: cannot load the CA or signing key: {exc}") from None


@contextlib.contextmanager
def assemble(config: CollectorConfig) -> Iterator[Collector]:
    """Open the stores the config names and build every part on them; the stores are closed
    when the block ends. Raises :class:`~collector._exceptions.CollectorError` saying what to
    change (a store that cannot be opened, a CA that cannot be read)."""
    docs = open_documents(config)
    try:
        ts = open_timeseries(config)
    except BaseException:
        docs.close()
        raise
    try:
        yield _build(config, docs, ts)
    finally:
        ts.close()
        docs.close()


def _build(config: CollectorConfig, docs: DocumentStore, ts: TimeSeriesStore) -> Collector:
    enrollment = enrollment_service(config, docs)
    limiter: Limiter | None = None
    dedup: DedupWindow | None = None
    shared_ping: Callable[[], None] | None = None
    hub: Hub = LocalHub(**config.stream.model_dump())
    if config.redis is not None:
        from outpost_iot.collector import _shared  # redis is imported only when configured

        redis_client = _shared.connect(config.redis)
        prefix = config.redis.prefix
        limiter = _shared.RedisRateLimiter(redis_client, config.limits, prefix=prefix)
        dedup = _shared.RedisDedupWindow(
            redis_client, prefix=prefix, window_s=config.redis.dedup_window_s
        )
        if config.redis.latest_values:
            ts = _shared.LatestValues(ts, redis_client, prefix=prefix)
        hub = RedisHub(
            redis_client,
            prefix=prefix,
            url=config.redis.url.get_secret_value(),
            timeout_s=config.redis.timeout_s,
            **config.stream.model_dump(),
        )

        def shared_ping() -> None:
            _shared.ping(redis_client)

    stream = hub if config.api is not None else None
    deliveries = Deliveries(docs=docs, config=config.alarms, smtp=config.smtp)
    alarms = AlarmEvaluator(docs=docs, timeseries=ts, stream=stream, on_change=deliveries.wake)
    ingestor = Ingestor(
        config=config,
        timeseries=ts,
        documents=docs,
        enrollment=enrollment,
        limiter=limiter,
        dedup=dedup,
        stream=stream,
        alarms=alarms,
    )
    outbox = RetainedOutbox()
    configs = rollouts = None
    if config.pki is not None:
        configs = ConfigService(
            docs=docs, signing_key=config.pki.signing_key, publish=outbox.publish
        )
        rollouts = RolloutService(docs=docs, configs=configs, stream=hub)
    service = CollectorService(
        broker=config.broker,
        ingestor=ingestor,
        documents=docs,
        dedup_window_s=config.stores.dedup_window_days * 86400,
        max_queued=config.limits.max_queued_batches,
        max_queued_bytes=config.limits.max_queued_bytes,
        overload_retry_after_ms=config.limits.overload_retry_after_ms,
        notifier=Notifier(),
        summary_interval_s=config.summary_interval_s,
        timeseries=ts,
        retention=config.retention,
        outbox=outbox,
        on_connect=configs.republish if configs is not None else None,
        rollout_step=rollouts.step if rollouts is not None else None,
    )
    api = None
    if config.api is not None and enrollment is not None:
        services = ApiServices(
            documents=docs,
            enrollment=enrollment,
            timeseries=ts,
            metrics=ingestor.metrics,
            broker_connected=service.subscribed.is_set,
            replay=ingestor.replay,
            configs=configs,
            rollouts=rollouts,
            shared_state=shared_ping,
            on_enrolled=lambda gateway_id: _add_to_roster(service, gateway_id),
            stream=hub,
            alarms=config.alarms,
            alarm_evaluator=alarms,
            deliveries=deliveries,
            smtp_configured=config.smtp is not None,
        )
        api = ApiServer(config.api, create_app(services))
    return Collector(
        service=service,
        api=api,
        stream=hub,
        alarms=alarms,
        deliveries=deliveries,
        alarm_interval_s=config.alarms.interval_s,
        configs=configs,
    )


def _add_to_roster(service: CollectorService, gateway_id: str) -> None:
    """Put a gateway just enrolled on the broker's roster before its certificate is handed
    out, so its first connection may already use its topics (waits up to 5 s; if the broker
    does not answer, the next reconnect's reconciliation adds it)."""
    try:
        service.roster.add(gateway_id).result(timeout=5)
    except TimeoutError:
        logging.getLogger("outpost.collector.roster").warning(
            "gateway %s: the broker has not confirmed its roster entry yet", gateway_id
        )
