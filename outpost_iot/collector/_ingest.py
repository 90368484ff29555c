"""Ingest: decode → validate → deduplicate → rate-limit → correct clocks → store → ack.

:class:`Ingestor` is the synchronous core and knows nothing of MQTT: it takes received
messages and returns the replies to publish. Acks are produced only after the stores
committed. A batch that cannot be decoded is quarantined with its raw bytes and acked as
``quarantined`` so the gateway stops resending it; a store that fails gives nacks, not loss.

Containment: whatever one message holds, it costs that message only. A message the code cannot
handle (a bug, a value no store can take) is quarantined with its raw bytes and the reason, the
failure is logged once, and every other message of the group is handled as usual. Quarantine
itself is bounded per gateway (entries and raw bytes) and charged to the gateway's rate limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from outpost_iot import wire
from outpost_iot.collector import _stream
from outpost_iot.collector._alarms import AlarmEvaluator
from outpost_iot.collector._clockfix import ClockCorrector, SendStamp
from outpost_iot.collector._config import CollectorConfig
from outpost_iot.collector._enrollment import EnrollmentService
from outpost_iot.collector._exceptions import EnrollmentRefused, StoreError, StoreUnavailable
from outpost_iot.collector._limits import RateLimiter, Verdict
from outpost_iot.collector._stream import Hub
from outpost_iot.collector.stores import (
    BatchRecord,
    DocumentStore,
    QuarantineEntry,
    SeriesWrite,
    TimeSeriesStore,
)
from outpost_iot.wire import limits, printable, topics


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


_M = TypeVar("_M")  # a decoded message

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
    # Messages not kept at all, by reason (quarantine budget used up, rate-limited garbage).
    dropped: Counter[str] = field(default_factory=Counter)
    quarantine_bytes_not_kept: int = 0  # raw bytes past a gateway's quarantine budget
    contained: int = 0  # messages that raised in the collector's own code (then quarantined)
    corrections_refused: int = 0  # clock corrections that would leave the timestamp range
    retained_cleared: int = 0  # retained publishes a gateway left where only state may be
    write_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class _Accepted:
    gateway_id: str
    batch: wire.Batch
    size: int
    delta_ns: int
    received_ns: int
    msg: Incoming  # kept for quarantine if no store can take the batch


# Decoded readings and events held for one group before it is written: a group of large
# batches is stored in parts, so its memory stays bounded whatever the frames unpack to.
_GROUP_UNITS = 50_000
# A reading with many fields costs more than one with a few (see batch_units).
_FIELDS_PER_UNIT = 8


def batch_units(batch: wire.Batch) -> int:
    """What a batch costs against ``readings_per_s``: one per reading and per event, and a
    reading with more than 8 fields one more per 8 further fields."""
    units = len(batch.events)
    for s in batch.series:
        for _ts, fields in s.p:
            units += 1 + (len(fields) - 1) // _FIELDS_PER_UNIT
    return units


def batch_key(props: dict[str, str]) -> tuple[str, int] | None:
    """The ``(stream, seq)`` a publish names in its user properties, if both are valid."""
    stream = props.get(wire.PROP_STREAM, "")
    seq_text = props.get(wire.PROP_SEQ, "")
    if not 1 <= len(stream) <= 64 or not stream.isprintable():
        return None
    if not (seq_text.isascii() and seq_text.isdigit()) or len(seq_text) > 19:
        return None
    seq = int(seq_text)
    return (stream, seq) if 1 <= seq <= limits.INT64_MAX else None


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
        stream: Hub | None = None,
        alarms: AlarmEvaluator | None = None,
    ) -> None:
        self._cfg = config
        self._stream = stream
        self._alarms = alarms
        self._ts = timeseries
        self._docs = documents
        self._tenants: wire.BoundedDict[str, str] = wire.BoundedDict(100_000)
        self._lock = threading.RLock()
        self._replay_failure: tuple[str, str] | None = None
        self._replay_retry = ""  # a replayed state or report the store could not save
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
        self._logged = wire.LogThrottle(60.0, clock=monotonic)

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
        if entry.size and not entry.raw:
            return "still_invalid", "its raw bytes were not kept (the quarantine budget was used)"
        kind = topics.parse_up_topic(entry.topic)
        if kind is not None and kind[1] == "renew":
            # A certificate for a request the gateway gave up on long ago would be issued and
            # recorded for nobody; the gateway sends a new request by itself.
            return "still_invalid", "certificate requests are not replayed: the gateway asks again"
        msg = Incoming(entry.topic, entry.raw, dict(entry.properties), now_ns)
        with self._lock:
            self._replaying, self._replay_failure, self._replay_retry = True, None, ""
            try:
                replies = self._handle([msg])
                failure, retry = self._replay_failure, self._replay_retry
            finally:
                self._replaying, self._replay_failure, self._replay_retry = False, None, ""
        if failure is not None:
            return "still_invalid", f"{failure[0]}: {failure[1]}"
        if retry:
            return "retry", retry
        for reply in replies:
            message = reply.message
            if isinstance(message, wire.Ack) and message.status in ("stored", "duplicate"):
                return message.status, ""
            if isinstance(message, wire.Nack):
                return "retry", f"{message.reason}: {message.detail or 'try again later'}"
            if isinstance(message, wire.Ack):
                return "still_invalid", f"{message.status}: {message.reason or ''}"
        if kind is not None and kind[1] in ("state", "config"):
            return "stored", ""  # a state or config report, saved (neither is answered)
        return "still_invalid", "nothing to ingest in this message"

    def _handle(self, messages: Sequence[Incoming]) -> list[Reply]:
        replies: list[Reply] = []
        stored: list[Reply] = []
        accepted: list[_Accepted] = []
        keys: set[tuple[str, str, int]] = set()
        units = 0
        for msg in messages:
            try:
                units += self._dispatch(msg, replies, accepted, keys)
            except Exception as exc:  # containment: this message only, never the process
                self._contain(msg, exc, replies)
            if units > _GROUP_UNITS:
                stored += self._store(accepted)
                accepted, units = [], 0
        if accepted:
            stored += self._store(accepted)
        replies.extend(stored)
        if self._twins:
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

    def _dispatch(
        self,
        msg: Incoming,
        replies: list[Reply],
        accepted: list[_Accepted],
        keys: set[tuple[str, str, int]],
    ) -> int:
        """Handle one message; return the units it added to the group (an accepted batch)."""
        if not msg.payload and not msg.properties:
            # An empty publish: a retained message being cleared (by its gateway, or by us
            # after a gateway left junk retained). Nothing to store, nothing to answer.
            self.metrics.dropped["empty"] += 1
            return 0
        parsed = topics.parse_up_topic(msg.topic)
        if parsed is None:
            gateway_id = topics.gateway_of(msg.topic) or ""
            self._quarantine(
                msg, gateway_id, "bad_topic", "not an outpost/v1/gw/<id>/up/<kind> topic"
            )
            return 0
        gateway_id, kind = parsed
        if self._enrollment is not None and self._enrollment.is_revoked(gateway_id):
            self._refuse_revoked(msg, gateway_id, kind, replies)
            return 0
        if kind == "batch":
            return self._batch(msg, gateway_id, replies, accepted, keys)
        if kind == "state":
            self._state(msg, gateway_id)
        elif kind == "renew":
            replies.extend(self._renew(msg, gateway_id))
        elif kind == "config":
            self._config_report(msg, gateway_id)
        else:
            self._quarantine(msg, gateway_id, "bad_topic", f"no message kind {kind!r} in up/")
        return 0

    def _contain(self, msg: Incoming, exc: Exception, replies: list[Reply]) -> None:
        """A message that raised in our own code: log it once, keep it, answer the gateway."""
        self.metrics.contained += 1
        gateway_id = topics.gateway_of(msg.topic) or ""
        what = f"{type(exc).__name__}: {exc}"
        self._log_once(
            (gateway_id, type(exc).__name__),
            logging.ERROR,
            "a message from gateway %s on %s could not be handled (%s); it is quarantined",
            gateway_id or "(unknown)",
            msg.topic,
            what,
            exc_info=exc,
        )
        outcome: Quarantined
        try:
            outcome = self._quarantine(msg, gateway_id, "internal_error", what)
        except Exception as again:  # the quarantine itself failed: not kept, so not acked
            self._log_once(
                (gateway_id, "contain"),
                logging.ERROR,
                "the message from gateway %s could not be quarantined either (%s: %s)",
                gateway_id or "(unknown)",
                type(again).__name__,
                again,
            )
            outcome = "store_failed"
        key = batch_key(msg.properties)
        if gateway_id and key is not None and msg.topic == topics.up_batch(gateway_id):
            replies.append(Reply(topics.down_ack(gateway_id), self._answer(outcome, *key)))

    def _log_once(
        self,
        key: tuple[str, str],
        level: int,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
        every_s: float = 60.0,
    ) -> None:
        """Log ``message`` at most once a minute per ``key`` (gateway, kind): a gateway that
        sends the same bad thing a thousand times gets one line, not a thousand."""
        if self._logged.ready(key, every_s):
            self._log.log(level, message, *args, exc_info=exc_info)

    def _batch(
        self,
        msg: Incoming,
        gateway_id: str,
        replies: list[Reply],
        accepted: list[_Accepted],
        keys: set[tuple[str, str, int]],
    ) -> int:
        ack_topic = topics.down_ack(gateway_id)
        named = batch_key(msg.properties)
        if named is None:
            # Without a valid (stream, seq) there is nothing to ack; the raw bytes are kept.
            self._quarantine(
                msg,
                gateway_id,
                "malformed",
                "publish lacks valid 'stream' (1-64 characters) and 'seq' (1 to 2^63-1) user"
                " properties",
            )
            return 0
        stream, seq = named
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
            outcome = self._quarantine(msg, gateway_id, exc.reason, exc.detail)
            replies.append(Reply(ack_topic, self._answer(outcome, stream, seq, exc.reason)))
            return 0
        key = (gateway_id, stream, seq)
        if key in keys:
            # The same batch twice in one group (a retransmit that caught up with the first
            # copy): it gets the first copy's outcome once that is known, not an ack now that
            # would let the gateway drop it if the store then fails.
            self._twins.append(key)
            return 0
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
            return 0
        try:
            return self._claimed(msg, gateway_id, batch, key, taken, replies, accepted, keys)
        except BaseException:
            self._release([key])
            raise

    def _claimed(
        self,
        msg: Incoming,
        gateway_id: str,
        batch: wire.Batch,
        key: tuple[str, str, int],
        taken: str,
        replies: list[Reply],
        accepted: list[_Accepted],
        keys: set[tuple[str, str, int]],
    ) -> int:
        """The rest of a batch's checks, once it is claimed in the dedup window."""
        _, stream, seq = key
        ack_topic = topics.down_ack(gateway_id)
        try:
            seen = taken == "stored" or self._docs.seen(*key)
        except StoreError as exc:
            self._release([key])
            self._store_failed("cannot check batch %s for duplicates: %s", key, exc)
            replies.append(Reply(ack_topic, self._store_nack(stream, seq)))
            return 0
        if seen:
            self._release([key])
            self.metrics.duplicates += 1
            replies.append(Reply(ack_topic, wire.Ack(stream=stream, seq=seq, status="duplicate")))
            return 0
        units = batch_units(batch)
        verdict = self._limiter.consume(gateway_id, units, len(msg.payload), self._now())
        if not verdict.allowed:
            self._release([key])
            replies.append(Reply(ack_topic, self._rate_nack(stream, seq, verdict)))
            return 0
        stamp = _send_stamp(msg.properties)
        try:
            if stamp is not None:
                self._clock.observe(gateway_id, stamp, msg.received_ns)
            delta = self._clock.delta_ns(gateway_id, batch)
        except StoreError as exc:
            self._log.error("cannot record the clock of %s: %s", gateway_id, exc)
            self._release([key])
            self._limiter.refund(gateway_id, units, len(msg.payload))
            replies.append(Reply(ack_topic, self._store_nack(stream, seq)))
            return 0
        delta, problem = self._checked_times(gateway_id, batch, delta, msg.received_ns)
        if problem is not None:
            self._release([key])
            self._limiter.refund(gateway_id, units, len(msg.payload))
            outcome = self._quarantine(msg, gateway_id, "future_timestamp", problem)
            replies.append(Reply(ack_topic, self._answer(outcome, stream, seq, "future_timestamp")))
            return 0
        keys.add(key)
        accepted.append(_Accepted(gateway_id, batch, len(msg.payload), delta, msg.received_ns, msg))
        return batch.reading_count + len(batch.events)

    def _checked_times(
        self, gateway_id: str, batch: wire.Batch, delta: int, received_ns: int
    ) -> tuple[int, str | None]:
        """The clock correction to apply, and why the batch cannot be stored (or None).

        A correction that would move a timestamp out of 0 .. 2^62 is not applied (the gateway's
        own timestamps are valid). Timestamps further ahead of the collector's clock than
        ``max_future_s`` are refused: stores drop or mis-file the far future.
        """
        stamps = [ts for s in batch.series for ts, _ in s.p] + [e.ts for e in batch.events]
        if not stamps:
            return delta, None
        lo, hi = min(stamps), max(stamps)
        if delta and not (lo + delta >= 0 and hi + delta <= limits.TIME_MAX_NS):
            self.metrics.corrections_refused += batch.reading_count
            self._log_once(
                (gateway_id, "correction"),
                logging.WARNING,
                "gateway %s (boot %s): a clock correction of %.0f s would move its timestamps"
                " out of range; stored as sent",
                gateway_id,
                printable(batch.boot_id),
                delta / 1e9,
            )
            delta = 0
        ahead_s = (hi + delta - received_ns) / 1e9
        max_future = self._cfg.limits.max_future_s
        if ahead_s > max_future:
            return delta, (
                f"a timestamp is {ahead_s:.0f} s ahead of the collector's clock; the limit is"
                f" {max_future:.0f} s ([limits] max_future_s)"
            )
        return delta, None

    def _tenant(self, gateway_id: str) -> str:
        """The gateway's tenant (fixed at enrollment, so cached); '' for one not enrolled."""
        tenant = self._tenants.get(gateway_id)
        if tenant is None:
            tenant = self._docs.gateway_tenant(gateway_id) or ""
            self._tenants[gateway_id] = tenant
        return tenant

    def _store(self, accepted: list[_Accepted]) -> list[Reply]:
        """Write a group of batches; a group the stores cannot take is written batch by batch,
        and a batch that still fails (not an outage: a value the store refuses) is quarantined."""
        try:
            return self._write(accepted)
        except Exception as exc:
            if len(accepted) > 1:
                return [reply for a in accepted for reply in self._store([a])]
            (a,) = accepted
            self._release([(a.gateway_id, a.batch.stream_id, a.batch.seq)])
            self._limiter.refund(a.gateway_id, batch_units(a.batch), a.size)
            self.metrics.contained += 1
            what = f"{type(exc).__name__}: {exc}"
            self._log_once(
                (a.gateway_id, "unstorable"),
                logging.ERROR,
                "gateway %s: batch %d could not be stored (%s); it is quarantined",
                a.gateway_id,
                a.batch.seq,
                what,
                exc_info=exc,
            )
            outcome = self._quarantine(a.msg, a.gateway_id, "unstorable", what)
            return [
                Reply(
                    topics.down_ack(a.gateway_id),
                    self._answer(outcome, a.batch.stream_id, a.batch.seq, "unstorable"),
                )
            ]

    def _write(self, accepted: list[_Accepted]) -> list[Reply]:
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
            # Before the batch is marked stored: if this collector dies here, the batch comes
            # again and is evaluated again (raising nothing twice).
            self._evaluate("readings", self._alarms.on_stored if self._alarms else None, writes)
            if self._alarms is not None and events:
                self._evaluate(
                    "edge alarms",
                    self._alarms.on_edge_events,
                    [(self._tenant(gw), gw, e) for gw, e in events],
                )
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
                self._limiter.refund(a.gateway_id, batch_units(a.batch), a.size)
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
        if self._stream is not None:
            _stream.stored(self._stream, writes, [(gw, self._tenant(gw), e) for gw, e in events])
        return [
            Reply(
                topics.down_ack(a.gateway_id),
                wire.Ack(stream=a.batch.stream_id, seq=a.batch.seq, status="stored"),
            )
            for a in accepted
        ]

    def _evaluate(self, what: str, evaluate: Callable[..., None] | None, *args: Any) -> None:
        """Run alarm rules. A store failure propagates (the batch is nacked and comes again);
        any other failure is logged and counted, and the readings are stored all the same."""
        if evaluate is None:
            return
        try:
            evaluate(*args)
        except StoreError:
            raise
        except Exception as exc:
            assert self._alarms is not None
            errors = self._alarms.metrics.errors
            errors[what] = errors.get(what, 0) + 1
            if self._logged.ready(f"alarms:{what}"):
                self._log.exception("alarm rules failed on %s (stored all the same): %s", what, exc)

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

    def _decoded(self, msg: Incoming, gateway_id: str, decode: Callable[[bytes], _M]) -> _M | None:
        """The message decoded, or None when it is invalid: then it is quarantined."""
        try:
            return decode(msg.payload)
        except wire.MessageRejected as exc:
            self._quarantine(msg, gateway_id, "invalid_schema", str(exc))
            return None

    def _saved(self, what: str, gateway_id: str, save: Callable[..., object], *args: Any) -> bool:
        """Save what a gateway reported; when the store fails, log it and, if this is a replay
        from quarantine, leave the message there to be retried."""
        try:
            save(gateway_id, *args)
        except StoreError as exc:
            self._log.error("cannot store %s of %s: %s", what, gateway_id, exc)
            self._replay_retry = f"store_unavailable: {exc}"
            return False
        return True

    def _config_report(self, msg: Incoming, gateway_id: str) -> None:
        report = self._decoded(msg, gateway_id, wire.decode_config_report)
        if report is None:
            return
        if not self._saved("the config report", gateway_id, self._docs.save_config_report, report):
            return
        if self._stream is not None:
            _stream.config_report(self._stream, self._tenant(gateway_id), gateway_id, report)
        if self._alarms is not None:
            try:
                self._evaluate(
                    "config reports",
                    self._alarms.on_config_report,
                    self._tenant(gateway_id),
                    gateway_id,
                    report,
                )
            except StoreError as exc:  # the report is saved; the next one is evaluated again
                self._log.error("cannot evaluate alarm rules on %s's report: %s", gateway_id, exc)
        log = self._log.info if report.status == "applied" else self._log.warning
        # The reason and errors come from the gateway: escaped and cut, so they cannot forge
        # log lines or flood the log.
        log(
            "gateway %s: config %d %s%s",
            gateway_id,
            report.version,
            report.status,
            f" ({printable(report.reason)}: {printable('; '.join(report.errors))})"
            if report.reason
            else "",
        )

    def _state(self, msg: Incoming, gateway_id: str) -> None:
        state = self._decoded(msg, gateway_id, wire.decode_state)
        if state is None:
            return
        if not self._saved("the state", gateway_id, self._docs.save_state, state, msg.received_ns):
            return
        if self._stream is not None:
            tenant = self._tenant(gateway_id)
            _stream.gateway_state(self._stream, tenant, gateway_id, state, msg.received_ns)
        if state.drops:
            self._log_once(
                (gateway_id, "drops"),
                logging.INFO,
                "gateway %s reports drops: %s",
                gateway_id,
                printable(str(state.drops)),
            )
        if state.buffer_reset:
            self._log_once(  # once per reset (the gateway repeats it in every state)
                (gateway_id, "buffer_reset:" + state.buffer_reset),
                logging.WARNING,
                "gateway %s started a new buffer: %s",
                gateway_id,
                printable(state.buffer_reset),
                every_s=float("inf"),
            )

    def _refuse_revoked(
        self, msg: Incoming, gateway_id: str, kind: str, replies: list[Reply]
    ) -> None:
        """A decommissioned gateway: store nothing, answer batches with a nack."""
        self.metrics.nacks["revoked"] += 1
        self._log_once(
            (gateway_id, "revoked"),
            logging.WARNING,
            "refused a %s from decommissioned gateway %s",
            kind,
            gateway_id,
        )
        key = batch_key(msg.properties)
        if kind == "batch" and key is not None:
            replies.append(
                Reply(
                    topics.down_ack(gateway_id),
                    wire.Nack(
                        stream=key[0],
                        seq=key[1],
                        reason="revoked",
                        retry_after_ms=3_600_000,
                        detail="this gateway was decommissioned; re-enroll it to send again",
                    ),
                )
            )

    def _renew(self, msg: Incoming, gateway_id: str) -> list[Reply]:
        topic = topics.down_renew(gateway_id)
        request = self._decoded(msg, gateway_id, wire.decode_renew_request)
        if request is None:
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

    def _rate_nack(self, stream: str, seq: int, verdict: Verdict) -> wire.Nack:
        self.metrics.nacks["rate_limited"] += 1
        return wire.Nack(
            stream=stream,
            seq=seq,
            reason="rate_limited",
            limit=verdict.limit,
            retry_after_ms=min(86_400_000, max(1, int(verdict.retry_after_s * 1000))),
        )

    def _answer(
        self, outcome: Quarantined, stream: str, seq: int, reason: str = "invalid"
    ) -> wire.Ack | wire.Nack:
        """The gateway's answer for a batch that went to quarantine (or could not)."""
        if isinstance(outcome, Verdict):
            return self._rate_nack(stream, seq, outcome)
        if outcome == "store_failed":
            return self._store_nack(stream, seq)
        # Kept, or dropped and counted here: either way the gateway must not send it again.
        return wire.Ack(stream=stream, seq=seq, status="quarantined", reason=reason)

    def _quarantine(self, msg: Incoming, gateway_id: str, reason: str, detail: str) -> Quarantined:
        """Keep a bad message with its raw bytes, within the gateway's budget.

        Returns ``kept``; ``dropped`` (counted: the gateway's quarantine is full);
        ``store_failed``; or the rate-limit :class:`Verdict` when the gateway is over its limit
        (a bad message costs its bytes like a good one).
        """
        detail = printable(detail, 1000)
        if self._replaying:  # a replay that still fails: report it, do not keep it twice
            self._replay_failure = self._replay_failure or (reason, detail)
            return "kept"
        lim = self._cfg.limits
        raw = msg.payload
        try:
            if gateway_id:
                verdict = self._limiter.consume(gateway_id, 1, len(raw), self._now())
                if not verdict.allowed:
                    self.metrics.dropped["rate_limited"] += 1
                    return verdict
                entries, kept = self._docs.quarantine_usage(gateway_id)
                if entries >= lim.quarantine_entries:
                    self.metrics.dropped["quarantine_full"] += 1
                    self._log_once(
                        (gateway_id, "quarantine_full"),
                        logging.WARNING,
                        "gateway %s: its quarantine holds %d entries (the limit); further bad"
                        " messages are counted and dropped until retention frees room",
                        gateway_id,
                        entries,
                    )
                    return "dropped"
                if kept + len(raw) > lim.quarantine_bytes:
                    self.metrics.quarantine_bytes_not_kept += len(raw)
                    detail += f" (raw bytes not kept: the gateway's quarantine budget of {lim.quarantine_bytes} bytes is used)"
                    raw = b""
            self._docs.quarantine(
                QuarantineEntry(
                    received_ns=msg.received_ns,
                    topic=msg.topic,
                    reason=reason,
                    detail=detail,
                    raw=raw,
                    gateway_id=gateway_id,
                    properties={
                        k: v[:256] for k, v in msg.properties.items() if k in _KEPT_PROPERTIES
                    },
                    size=len(msg.payload),
                )
            )
        except StoreError as exc:
            self._log.error("cannot quarantine a message on %s: %s", msg.topic, exc)
            return "store_failed"
        self.metrics.quarantined += 1
        self._log_once(
            (gateway_id, f"quarantine:{reason}"),
            logging.WARNING,
            "quarantined a message on %s (%d bytes): %s: %s",
            msg.topic,
            len(msg.payload),
            reason,
            detail,
        )
        return "kept"


# What a quarantine entry keeps of the publish's user properties: what replay needs.
_KEPT_PROPERTIES = frozenset(
    (wire.PROP_STREAM, wire.PROP_SEQ, wire.PROP_BOOT, wire.PROP_SENT_MONO, wire.PROP_SENT_WALL)
)
Quarantined = Literal["kept", "dropped", "store_failed"] | Verdict


def _send_stamp(props: dict[str, str]) -> SendStamp | None:
    """The gateway's clocks at send, if the properties carry sane ones (else no correction)."""
    boot = props.get(wire.PROP_BOOT, "")
    mono, wall = props.get(wire.PROP_SENT_MONO, ""), props.get(wire.PROP_SENT_WALL, "")
    if not 1 <= len(boot) <= 64 or not all(
        t.isascii() and t.isdigit() and len(t) <= 19 for t in (mono, wall)
    ):
        return None
    mono_ns, wall_ns = int(mono), int(wall)
    if mono_ns > limits.TIME_MAX_NS or wall_ns > limits.TIME_MAX_NS:
        return None
    return SendStamp(boot_id=boot, mono_ns=mono_ns, wall_ns=wall_ns)
