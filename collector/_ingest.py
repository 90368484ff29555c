"""Ingest: decode → validate → deduplicate → rate-limit → correct clocks → store → ack.

:class:`Ingestor` is the synchronous core and knows nothing of MQTT: it takes received
messages and returns the replies to publish. Acks are produced only after the stores
committed. A batch that cannot be decoded is quarantined with its raw bytes and acked as
``quarantined`` so the gateway stops resending it; a store that fails gives nacks, not loss.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import wire
from collector._clockfix import ClockCorrector, SendStamp
from collector._config import CollectorConfig
from collector._enrollment import EnrollmentService
from collector._exceptions import EnrollmentRefused, StoreError, StoreUnavailable
from collector._limits import RateLimiter, Verdict
from collector.stores import (
    BatchRecord,
    DocumentStore,
    QuarantineEntry,
    SeriesWrite,
    TimeSeriesStore,
)
from wire import topics


class Limiter(Protocol):
    """Per-gateway rate limits: in process (:class:`RateLimiter`) or shared (Redis)."""

    def consume(self, gateway_id: str, readings: int, size: int, now: float) -> Verdict: ...

    def refund(self, gateway_id: str, readings: int, size: int) -> None: ...


class DedupWindow(Protocol):
    """Claims and recently stored batches shared by replicas (Redis)."""

    def take(
        self, key: tuple[str, str, int]
    ) -> Literal["stored", "busy", "claimed", "unknown"]: ...

    def done(self, keys: Sequence[tuple[str, str, int]], *, stored: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    properties: dict[str, str]
    received_ns: int


@dataclass(frozen=True, slots=True)
class Reply:
    topic: str
    message: wire.Ack | wire.Nack | wire.RenewResponse


WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class LatencyHistogram:
    """Cumulative-bucket histogram (Prometheus style) of store write latency, in seconds."""

    buckets: tuple[float, ...] = WRITE_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * len(WRITE_BUCKETS_S))
    total_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.total_s += seconds
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1


@dataclass
class IngestMetrics:
    batches_stored: int = 0
    readings_stored: int = 0
    events_stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    readings_corrected: int = 0
    nacks: Counter[str] = field(default_factory=Counter)
    write_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class _Accepted:
    gateway_id: str
    batch: wire.Batch
    size: int
    delta_ns: int
    received_ns: int


class Ingestor:
    def __init__(
        self,
        *,
        config: CollectorConfig,
        timeseries: TimeSeriesStore,
        documents: DocumentStore,
        enrollment: EnrollmentService | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        limiter: Limiter | None = None,
        dedup: DedupWindow | None = None,
    ) -> None:
        self._cfg = config
        self._ts = timeseries
        self._docs = documents
        self._tenants: dict[str, str] = {}
        self._lock = threading.RLock()
        self._replay_failure: tuple[str, str] | None = None
        self._replaying = False
        self._enrollment = enrollment
        self._now = monotonic
        self._log = logger or logging.getLogger("outpost.collector.ingest")
        lim = config.limits
        self._limiter: Limiter = limiter or RateLimiter(
            readings_per_s=lim.readings_per_s,
            readings_burst=lim.readings_burst,
            bytes_per_s=lim.bytes_per_s,
            bytes_burst=lim.bytes_burst,
        )
        self._dedup = dedup
        self._twins: list[tuple[str, str, int]] = []  # repeats within one group, see _batch
        self._failing_since: float | None = None  # when the stores began to fail (monotonic)
        self._failure_logged = 0.0
        self._failures_unlogged = 0
        self._clock = ClockCorrector(
            docs=documents, tolerance_ns=int(config.clock.tolerance_s * 1e9), logger=self._log
        )
        self.metrics = IngestMetrics()

    def refresh_revocations(self) -> None:
        if self._enrollment is not None:
            self._enrollment.refresh_revoked()

    def handle(self, messages: Sequence[Incoming]) -> list[Reply]:
        """Process messages received together; writes are committed before acks are returned."""
        with self._lock:  # the MQTT worker and an operator's replay share the limiter and cache
            return self._handle(messages)

    def replay(self, entry: QuarantineEntry, now_ns: int) -> tuple[str, str]:
        """Validate and ingest a quarantined message again (after a fix): ``(result, detail)``.

        ``result`` is ``stored``, ``duplicate`` (it had arrived since), ``still_invalid`` (the
        reason it fails now), or ``retry`` (rate limit or store unavailable: try again later).
        A message that still fails is not quarantined a second time. The gateway got its ack
        when the message was quarantined, so nothing is sent to it now.
        """
        msg = Incoming(entry.topic, entry.raw, dict(entry.properties), now_ns)
        with self._lock:
            self._replaying, self._replay_failure = True, None
            try:
                replies = self._handle([msg])
                failure = self._replay_failure
            finally:
                self._replaying, self._replay_failure = False, None
        if failure is not None:
            return "still_invalid", f"{failure[0]}: {failure[1]}"
        for reply in replies:
            message = reply.message
            if isinstance(message, wire.Ack) and message.status in ("stored", "duplicate"):
                return message.status, ""
            if isinstance(message, wire.Nack):
                return "retry", f"{message.reason}: {message.detail or 'try again later'}"
            if isinstance(message, wire.Ack):
                return "still_invalid", f"{message.status}: {message.reason or ''}"
        kind = topics.parse_up_topic(entry.topic)
        if kind is not None and kind[1] == "state":
            return "stored", ""
        return "still_invalid", "nothing to ingest in this message"

    def _handle(self, messages: Sequence[Incoming]) -> list[Reply]:
        replies: list[Reply] = []
        accepted: list[_Accepted] = []
        keys: set[tuple[str, str, int]] = set()
        for msg in messages:
            parsed = topics.parse_up_topic(msg.topic)
            if parsed is None:
                self._quarantine(msg, "", "bad_topic", "not an outpost/v1/gw/<id>/up/<kind> topic")
                continue
            gateway_id, kind = parsed
            if self._enrollment is not None and self._enrollment.is_revoked(gateway_id):
                self._refuse_revoked(msg, gateway_id, kind, replies)
                continue
            if kind == "batch":
                self._batch(msg, gateway_id, replies, accepted, keys)
            elif kind == "state":
                self._state(msg, gateway_id)
            elif kind == "renew":
                replies.extend(self._renew(msg, gateway_id))
            elif kind == "config":
                self._config_report(msg, gateway_id)
            else:
                self._log.debug("ignoring %s from %s (not handled yet)", kind, gateway_id)
        if accepted:
            stored = self._store(accepted)
            replies.extend(stored)
            ok = {
                (r.topic, r.message.stream, r.message.seq)
                for r in stored
                if isinstance(r.message, wire.Ack) and r.message.status == "stored"
            }
            for gateway_id, stream, seq in self._twins:
                topic = topics.down_ack(gateway_id)
                if (topic, stream, seq) in ok:
                    self.metrics.duplicates += 1
                    message: wire.Ack | wire.Nack = wire.Ack(
                        stream=stream, seq=seq, status="duplicate"
                    )
                else:
                    message = self._store_nack(stream, seq)
                replies.append(Reply(topic, message))
        self._twins.clear()
        return replies

    def _batch(
        self,
        msg: Incoming,
        gateway_id: str,
        replies: list[Reply],
        accepted: list[_Accepted],
        keys: set[tuple[str, str, int]],
    ) -> None:
        ack_topic = topics.down_ack(gateway_id)
        stream = msg.properties.get(wire.PROP_STREAM, "")
        try:
            seq = int(msg.properties.get(wire.PROP_SEQ, ""))
        except ValueError:
            seq = 0
        if not stream or seq < 1:
            # Without (stream, seq) there is nothing to ack; the raw bytes are kept.
            self._quarantine(
                msg, gateway_id, "malformed", "publish lacks the 'stream' and 'seq' user properties"
            )
            return
        lim = self._cfg.limits
        try:
            batch = wire.decode_batch(
                msg.payload, max_frame_bytes=lim.max_frame_bytes, max_readings=lim.max_readings
            )
            if batch.gateway_id != gateway_id:
                raise wire.BatchRejected(
                    "gateway_mismatch",
                    f"batch says gateway {batch.gateway_id!r} but arrived on {gateway_id!r}'s topic",
                )
            if batch.stream_id != stream or batch.seq != seq:
                raise wire.BatchRejected(
                    "malformed", "stream/seq in the body differ from the publish properties"
                )
        except wire.BatchRejected as exc:
            if not self._quarantine(msg, gateway_id, exc.reason, exc.detail):
                replies.append(Reply(ack_topic, self._store_nack(stream, seq)))
                return
            replies.append(
                Reply(
                    ack_topic,
                    wire.Ack(stream=stream, seq=seq, status="quarantined", reason=exc.reason),
                )
            )
            return
        key = (gateway_id, stream, seq)
        if key in keys:
            # The same batch twice in one group (a retransmit that caught up with the first
            # copy): it gets the first copy's outcome once that is known, not an ack now that
            # would let the gateway drop it if the store then fails.
            self._twins.append(key)
            return
        taken = self._dedup.take(key) if self._dedup is not None else "unknown"
        if taken == "busy":
            # Another replica is storing it now (a retransmit overtook the first copy). Not a
            # duplicate ack: that one could still fail. The gateway sends this batch again
            # shortly, without slowing the rest of its stream.
            self.metrics.nacks["in_progress"] += 1
            replies.append(
                Reply(
                    ack_topic,
                    wire.Nack(
                        stream=stream,
                        seq=seq,
                        reason="in_progress",
                        retry_after_ms=1000,
                        detail="another collector replica is storing this batch now",
                    ),
                )
            )
            return
        try:
            seen = taken == "stored" or self._docs.seen(*key)
        except StoreError as exc:
            self._release([key])
            self._store_failed("cannot check batch %s for duplicates: %s", key, exc)
            replies.append(Reply(ack_topic, self._store_nack(stream, seq)))
            return
        if seen:
            self._release([key])
            self.metrics.duplicates += 1
            replies.append(Reply(ack_topic, wire.Ack(stream=stream, seq=seq, status="duplicate")))
            return
        verdict = self._limiter.consume(
            gateway_id, batch.reading_count, len(msg.payload), self._now()
        )
        if not verdict.allowed:
            self._release([key])
            self.metrics.nacks["rate_limited"] += 1
            replies.append(
                Reply(
                    ack_topic,
                    wire.Nack(
                        stream=stream,
                        seq=seq,
                        reason="rate_limited",
                        limit=verdict.limit,
                        retry_after_ms=max(1, int(verdict.retry_after_s * 1000)),
                    ),
                )
            )
            return
        stamp = _send_stamp(msg.properties)
        try:
            if stamp is not None:
                self._clock.observe(gateway_id, stamp, msg.received_ns)
            delta = self._clock.delta_ns(gateway_id, batch)
        except StoreError as exc:
            self._log.error("cannot record the clock of %s: %s", gateway_id, exc)
            self._release([key])
            self._limiter.refund(gateway_id, batch.reading_count, len(msg.payload))
            replies.append(Reply(ack_topic, self._store_nack(stream, seq)))
            return
        keys.add(key)
        accepted.append(_Accepted(gateway_id, batch, len(msg.payload), delta, msg.received_ns))

    def _tenant(self, gateway_id: str) -> str:
        """The gateway's tenant (fixed at enrollment, so cached); '' for one not enrolled."""
        tenant = self._tenants.get(gateway_id)
        if tenant is None:
            tenant = self._docs.gateway_tenant(gateway_id) or ""
            self._tenants[gateway_id] = tenant
        return tenant

    def _store(self, accepted: list[_Accepted]) -> list[Reply]:
        writes: list[SeriesWrite] = []
        events: list[tuple[str, wire.Event]] = []
        corrected = 0
        started = time.perf_counter()
        try:
            for a in accepted:
                d = a.delta_ns
                tenant = self._tenant(a.gateway_id)
                for s in a.batch.series:
                    # The gateway id is a tag the collector sets: a gateway speaks only for itself.
                    tags = {**s.t, "gateway": a.gateway_id}
                    points = [(ts + d, f) for ts, f in s.p] if d else list(s.p)
                    writes.append(SeriesWrite(s.m, tags, points, tenant))
                for e in a.batch.events:
                    events.append((a.gateway_id, e.model_copy(update={"ts": e.ts + d}) if d else e))
                if d:
                    corrected += a.batch.reading_count
            self._ts.write(writes)
            self._docs.record(
                [
                    BatchRecord(
                        a.gateway_id,
                        a.batch.stream_id,
                        a.batch.seq,
                        a.batch.reading_count,
                        a.received_ns,
                    )
                    for a in accepted
                ],
                events,
            )
        except StoreError as exc:
            kind = "unavailable" if isinstance(exc, StoreUnavailable) else "failed"
            self._store_failed("store %s, nacking %d batch(es): %s", kind, len(accepted), exc)
            self._release([(a.gateway_id, a.batch.stream_id, a.batch.seq) for a in accepted])
            replies = []
            for a in accepted:
                self._limiter.refund(a.gateway_id, a.batch.reading_count, a.size)
                replies.append(
                    Reply(
                        topics.down_ack(a.gateway_id),
                        self._store_nack(a.batch.stream_id, a.batch.seq),
                    )
                )
            return replies
        self.metrics.write_latency.observe(time.perf_counter() - started)
        self._store_ok()
        if self._dedup is not None:
            self._dedup.done(
                [(a.gateway_id, a.batch.stream_id, a.batch.seq) for a in accepted], stored=True
            )
        self.metrics.batches_stored += len(accepted)
        self.metrics.readings_stored += sum(a.batch.reading_count for a in accepted)
        self.metrics.events_stored += len(events)
        self.metrics.readings_corrected += corrected
        return [
            Reply(
                topics.down_ack(a.gateway_id),
                wire.Ack(stream=a.batch.stream_id, seq=a.batch.seq, status="stored"),
            )
            for a in accepted
        ]

    def _store_failed(self, message: str, *args: object) -> None:
        """Log a store failure: the first of an outage, then at most one line every 10 s with
        how many more there were (an outage must not flood the log with a line per batch)."""
        now = self._now()
        if self._failing_since is None or now - self._failure_logged >= 10.0:
            more = (
                f" ({self._failures_unlogged} more failures since the last line)"
                if self._failures_unlogged
                else ""
            )
            self._log.error(message + more, *args)
            self._failure_logged, self._failures_unlogged = now, 0
            if self._failing_since is None:
                self._failing_since = now
        else:
            self._failures_unlogged += 1

    def _store_ok(self) -> None:
        if self._failing_since is not None:
            self._log.warning(
                "stores answer again after %.0f s of failures", self._now() - self._failing_since
            )
            self._failing_since, self._failures_unlogged = None, 0

    def _release(self, keys: list[tuple[str, str, int]]) -> None:
        if self._dedup is not None:
            self._dedup.done(keys, stored=False)

    def _config_report(self, msg: Incoming, gateway_id: str) -> None:
        try:
            report = wire.decode_config_report(msg.payload)
        except wire.MessageRejected as exc:
            self._quarantine(msg, gateway_id, "invalid_schema", str(exc))
            return
        try:
            self._docs.save_config_report(gateway_id, report)
        except StoreError as exc:
            self._log.error("cannot store the config report of %s: %s", gateway_id, exc)
            return
        log = self._log.info if report.status == "applied" else self._log.warning
        log(
            "gateway %s: config %d %s%s",
            gateway_id,
            report.version,
            report.status,
            f" ({report.reason}: {'; '.join(report.errors)})" if report.reason else "",
        )

    def _state(self, msg: Incoming, gateway_id: str) -> None:
        try:
            state = wire.decode_state(msg.payload)
        except wire.MessageRejected as exc:
            self._quarantine(msg, gateway_id, "invalid_schema", str(exc))
            return
        try:
            self._docs.save_state(gateway_id, state, msg.received_ns)
        except StoreError as exc:
            self._log.error("cannot save state of %s: %s", gateway_id, exc)
            return
        if state.drops:
            self._log.info("gateway %s reports drops: %s", gateway_id, state.drops)

    def _refuse_revoked(
        self, msg: Incoming, gateway_id: str, kind: str, replies: list[Reply]
    ) -> None:
        """A decommissioned gateway: store nothing, answer batches with a nack."""
        self.metrics.nacks["revoked"] += 1
        stream = msg.properties.get(wire.PROP_STREAM, "")
        seq = msg.properties.get(wire.PROP_SEQ, "")
        self._log.warning("refused a %s from decommissioned gateway %s", kind, gateway_id)
        if kind == "batch" and stream and seq.isdigit():
            replies.append(
                Reply(
                    topics.down_ack(gateway_id),
                    wire.Nack(
                        stream=stream,
                        seq=int(seq),
                        reason="revoked",
                        retry_after_ms=3_600_000,
                        detail="this gateway was decommissioned; re-enroll it to send again",
                    ),
                )
            )

    def _renew(self, msg: Incoming, gateway_id: str) -> list[Reply]:
        topic = topics.down_renew(gateway_id)
        try:
            request = wire.decode_renew_request(msg.payload)
        except wire.MessageRejected as exc:
            self._quarantine(msg, gateway_id, "invalid_schema", str(exc))
            return []
        if self._enrollment is None:
            return [
                Reply(
                    topic,
                    wire.RenewResponse(
                        request_id=request.request_id,
                        status="refused",
                        reason="unavailable",
                        detail="this collector does not issue certificates (no [pki])",
                    ),
                )
            ]
        try:
            pem = self._enrollment.renew(gateway_id, request.csr)
        except EnrollmentRefused as exc:
            self._log.warning("refused renewal for %s: %s", gateway_id, exc.message)
            return [
                Reply(
                    topic,
                    wire.RenewResponse(
                        request_id=request.request_id,
                        status="refused",
                        reason=exc.code,
                        detail=exc.message,
                    ),
                )
            ]
        except StoreError as exc:
            self._log.error("cannot record renewal for %s: %s", gateway_id, exc)
            return []  # the gateway asks again later
        return [
            Reply(
                topic,
                wire.RenewResponse(request_id=request.request_id, status="issued", certificate=pem),
            )
        ]

    def _store_nack(self, stream: str, seq: int) -> wire.Nack:
        self.metrics.nacks["store_unavailable"] += 1
        return wire.Nack(
            stream=stream,
            seq=seq,
            reason="store_unavailable",
            retry_after_ms=self._cfg.limits.store_retry_after_ms,
            detail="the collector's store is unavailable; keep the batch",
        )

    def _quarantine(self, msg: Incoming, gateway_id: str, reason: str, detail: str) -> bool:
        """Keep a bad message with its raw bytes; False if even that failed."""
        if self._replaying:  # a replay that still fails: report it, do not keep it twice
            self._replay_failure = self._replay_failure or (reason, detail)
            return True
        try:
            self._docs.quarantine(
                QuarantineEntry(
                    received_ns=msg.received_ns,
                    topic=msg.topic,
                    reason=reason,
                    detail=detail,
                    raw=msg.payload,
                    gateway_id=gateway_id,
                    properties=msg.properties,
                )
            )
        except StoreError as exc:
            self._log.error("cannot quarantine a message on %s: %s", msg.topic, exc)
            return False
        self.metrics.quarantined += 1
        self._log.warning(
            "quarantined a message on %s (%d bytes): %s: %s",
            msg.topic,
            len(msg.payload),
            reason,
            detail,
        )
        return True


def _send_stamp(props: dict[str, str]) -> SendStamp | None:
    try:
        return SendStamp(
            boot_id=props[wire.PROP_BOOT],
            mono_ns=int(props[wire.PROP_SENT_MONO]),
            wall_ns=int(props[wire.PROP_SENT_WALL]),
        )
    except (KeyError, ValueError):
        return None
