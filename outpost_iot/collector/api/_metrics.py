"""Prometheus metrics, read from the ingest counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from outpost_iot.collector._alarms import AlarmMetrics
from outpost_iot.collector._ingest import IngestMetrics
from outpost_iot.collector._notify import Deliveries
from outpost_iot.collector._stream import Hub
from outpost_iot.collector.stores import TimeSeriesStore

_NOT_KEPT = {
    "text_fields_skipped": "Text field values the time-series backend does not store",
    "unwritable_readings": "Readings line protocol cannot carry (measurement starts with #)",
}


class _IngestCollector(Collector):
    def __init__(self, metrics: IngestMetrics, timeseries: TimeSeriesStore | None = None) -> None:
        self._m = metrics
        self._ts = timeseries

    def collect(self) -> Iterator[Metric]:
        m = self._m
        # What a time-series backend could not keep (VictoriaMetrics: text fields; line
        # protocol: a measurement starting with #): counted, never silent.
        for reason, count in self._ts.not_kept().items() if self._ts is not None else ():
            help_ = _NOT_KEPT.get(reason, f"Values the time-series backend did not keep: {reason}")
            yield CounterMetricFamily(f"outpost_timeseries_{reason}", help_, value=count)
        for name, doc, value in (
            ("outpost_batches_stored", "Batches stored and acked", m.batches_stored),
            ("outpost_readings_stored", "Readings stored", m.readings_stored),
            ("outpost_events_stored", "Events stored", m.events_stored),
            (
                "outpost_duplicates",
                "Retransmitted batches acked without storing again",
                m.duplicates,
            ),
            ("outpost_quarantined", "Messages quarantined as invalid", m.quarantined),
            (
                "outpost_readings_clock_corrected",
                "Readings with corrected timestamps",
                m.readings_corrected,
            ),
            ("outpost_acks", "Acks sent (stored)", m.batches_stored),
            (
                "outpost_contained",
                "Messages the collector's own code or a store failed on (quarantined)",
                m.contained,
            ),
            (
                "outpost_clock_corrections_refused",
                "Readings whose clock correction would have left the timestamp range",
                m.corrections_refused,
            ),
            (
                "outpost_quarantine_bytes_not_kept",
                "Raw bytes of quarantined messages past their gateway's budget",
                m.quarantine_bytes_not_kept,
            ),
            (
                "outpost_retained_cleared",
                "Retained publishes cleared where only a gateway's state may be retained",
                m.retained_cleared,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        nacks = CounterMetricFamily("outpost_nacks", "Nacks sent, by reason", labels=["reason"])
        for reason, count in sorted(m.nacks.items()):
            nacks.add_metric([reason], count)
        yield nacks
        dropped = CounterMetricFamily(
            "outpost_dropped",
            "Messages not kept, by reason (quarantine full, rate-limited garbage, empty)",
            labels=["reason"],
        )
        for reason, count in sorted(m.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        h = m.write_latency
        yield HistogramMetricFamily(
            "outpost_store_write_seconds",
            "Time to write a group of batches to the stores",
            buckets=[(str(b), c) for b, c in zip(h.buckets, h.counts, strict=True)]
            + [("+Inf", h.count)],
            sum_value=h.total_s,
        )


class _StreamCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        m = self._hub.metrics
        yield GaugeMetricFamily(
            "outpost_stream_clients", "Live stream clients connected", value=self._hub.clients
        )
        yield CounterMetricFamily(
            "outpost_stream_published", "Messages published into the live stream", value=m.published
        )
        yield CounterMetricFamily(
            "outpost_stream_disconnected_slow",
            "Stream clients cut off for not reading (they resume with Last-Event-ID)",
            value=m.disconnected_slow,
        )
        dropped = CounterMetricFamily(
            "outpost_stream_dropped",
            "Messages the live stream could not publish",
            labels=["reason"],
        )
        for reason, count in sorted(m.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped


class _AlarmCollector(Collector):
    def __init__(self, alarms: AlarmMetrics, deliveries: Deliveries | None) -> None:
        self._a = alarms
        self._d = deliveries

    def collect(self) -> Iterator[Metric]:
        a = self._a
        yield GaugeMetricFamily("outpost_alarm_rules", "Enabled alarm rules this collector evaluates", value=a.rules)  # fmt: skip
        for name, doc, value in (
            ("outpost_alarm_evaluations", "Readings checked against a threshold rule", a.evaluations),
            ("outpost_alarms_raised", "Alarms this collector raised", a.raised),
            ("outpost_alarms_cleared", "Alarms this collector cleared", a.cleared),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily(
            "outpost_alarm_errors", "Alarm evaluations that failed, by where", labels=["where"]
        )
        for where, n in sorted(a.errors.items()):
            errors.add_metric([where], n)
        yield errors
        if self._d is not None:
            notes = CounterMetricFamily(
                "outpost_notifications",
                "Notification attempts by outcome (delivered, failed: tried again, given_up)",
                labels=["outcome"],
            )
            for outcome, n in (("delivered", self._d.delivered), ("failed", self._d.failed), ("given_up", self._d.given_up)):  # fmt: skip
                notes.add_metric([outcome], n)
            yield notes


def metrics_text(
    metrics: IngestMetrics | None,
    timeseries: TimeSeriesStore | None = None,
    stream: Hub | None = None,
    alarms: AlarmMetrics | None = None,
    deliveries: Deliveries | None = None,
) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    if metrics is not None:
        registry.register(_IngestCollector(metrics, timeseries))
    if stream is not None:
        registry.register(_StreamCollector(stream))
    if alarms is not None:
        registry.register(_AlarmCollector(alarms, deliveries))
    return generate_latest(registry), CONTENT_TYPE_LATEST
