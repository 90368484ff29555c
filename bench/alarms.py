"""Alarm rules at ingest: the cost per reading and the ingest rate with 10,000 rules.

.venv/bin/python -m bench.alarms [--runs 5] [--batches 40]

Real SQLite stores (synchronous=FULL, as deployed) and the collector's Ingestor with its
AlarmEvaluator; 10 gateways of one tenant, 1,000 devices each; batches of 500 readings (one
``sensor`` reading of ``celsius`` per device). Scenarios:

- ``none``: no rules (the baseline);
- ``per-device``: 10,000 threshold rules, one per device (``scope.device``), never crossed;
- ``per-measurement``: 10,000 unscoped threshold rules over 100 measurements (100 each), the
  batches' measurement among them, never crossed: every reading is checked against 100 rules;
- ``crossing``: the per-device rules, with 1 % of the readings crossing (alarms raised and
  cleared, notifications written).

For each: readings ingested per second (Ingestor.handle, acks included) and the evaluator's
own time per reading (on_stored timed alone), medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import report
from outpost_iot import wire
from outpost_iot.collector._alarms import AlarmEvaluator, RuleIn
from outpost_iot.collector._config import load_config
from outpost_iot.collector._ingest import Incoming, Ingestor
from outpost_iot.collector.stores import (
    AlarmRuleRecord,
    NotifyEndpointRecord,
    SeriesWrite,
    SqliteDocumentStore,
    SqliteTimeSeriesStore,
)
from outpost_iot.dev._processes import Mosquitto, collector_config, free_port
from outpost_iot.wire import topics

GATEWAYS = 10
DEVICES = 1000
PER_BATCH = 500
S = 10**9


def _rules(docs: SqliteDocumentStore, scenario: str) -> None:
    now = time.time_ns()
    for i in range(10_000):
        if scenario == "per-measurement":
            cond = {"kind": "threshold", "measurement": f"m{i % 100}" if i % 100 else "sensor", "field": "celsius", "above": 1000}  # fmt: skip
            scope: dict[str, str] = {}
        else:
            cond = {"kind": "threshold", "measurement": "sensor", "field": "celsius", "above": 50, "clear": 40}  # fmt: skip
            scope = {"device": f"d{i}"}
        rule = RuleIn.model_validate({"name": f"r{i}", "condition": cond, "scope": scope})
        docs.save_rule(
            AlarmRuleRecord(
                f"r{i}",
                "acme",
                rule.name,
                "major",
                True,
                False,
                True,
                rule.spec(),
                now,
                now,
                "bench",
            )
        )
    docs.save_endpoint(
        NotifyEndpointRecord(
            "ep", "acme", "ops", "webhook", {"url": "https://x.example"}, "k", "warning", True, now
        )
    )


def _batch(gw: str, g: int, seq: int, t0: int, crossing: bool) -> Incoming:
    readings = []
    for k in range(PER_BATCH):
        device = (seq * PER_BATCH + k) % DEVICES + g * DEVICES
        hot = crossing and (seq * PER_BATCH + k) % 100 == 0
        value = 60.0 if hot and seq % 2 else (20.0 if not hot else 30.0)
        readings.append(
            wire.Reading(
                measurement="sensor",
                tags={"device": f"d{device}"},
                fields={"celsius": value},
                ts=t0 + seq * S + k,
            )
        )
    b = wire.Batch.model_validate(
        {"gw": gw, "stream": "s", "boot": "b", "seq": seq, "created": t0,
         "clock": {"offset_ns": 0, "synced": True}, "series": wire.group_readings(readings), "events": []}
    )  # fmt: skip
    return Incoming(topics.up_batch(gw), wire.encode_batch(b), {wire.PROP_STREAM: "s", wire.PROP_SEQ: str(seq)}, t0)  # fmt: skip


def run(scenario: str, batches: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        config = load_config(collector_config(root / "c.toml", Mosquitto(root / "broker"), root / "data", api_port=free_port()))  # fmt: skip
        config = config.model_copy(update={"limits": config.limits.model_copy(update={"readings_per_s": 10**9, "readings_burst": 10**9, "bytes_per_s": 10**12, "bytes_burst": 10**12})})  # fmt: skip
        docs = SqliteDocumentStore(config.stores.documents_path)
        ts = SqliteTimeSeriesStore(config.stores.timeseries_path)
        gateways = [f"gw-{g}" for g in range(GATEWAYS)]
        for gw in gateways:  # enrolled into tenant acme
            docs._conn.execute(
                "INSERT INTO gateways (id, tenant, site) VALUES (?, 'acme', 'hq')", (gw,)
            )
        if scenario != "none":
            _rules(docs, scenario)
        evaluator = AlarmEvaluator(docs=docs, timeseries=ts)
        evaluator.refresh(force=True)
        ingest = Ingestor(config=config, timeseries=ts, documents=docs, alarms=evaluator)
        t0 = time.time_ns() - 3600 * S
        crossing = scenario == "crossing"
        made = [[_batch(gw, g, seq, t0, crossing) for g, gw in enumerate(gateways)] for seq in range(1, batches + 1)]  # fmt: skip
        started = time.perf_counter()
        for group in made:
            replies = ingest.handle(group)
            assert all(r.message.status == "stored" for r in replies), replies  # type: ignore[union-attr]
        elapsed = time.perf_counter() - started
        readings = batches * GATEWAYS * PER_BATCH
        # The evaluator alone, over the same kind of writes (readings already stored).
        writes = [
            SeriesWrite(
                "sensor",
                {"device": f"d{(k % DEVICES) + g * DEVICES}", "gateway": gw},
                [(t0 + k, {"celsius": 20.0})],
                "acme",
            )
            for g, gw in enumerate(gateways)
            for k in range(PER_BATCH)
        ]
        t = time.perf_counter()
        for _ in range(5):
            evaluator.on_stored(writes)
        per_reading_us = (time.perf_counter() - t) / (5 * len(writes)) * 1e6
        if crossing:
            assert evaluator.metrics.raised > 0, evaluator.metrics
        docs.close()
        ts.close()
    return readings / elapsed, per_reading_us


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args()
    for scenario in ("none", "per-device", "per-measurement", "crossing"):
        results = [run(scenario, args.batches) for _ in range(args.runs)]
        rates = [r for r, _ in results]
        costs = [c for _, c in results]
        report(f"alarms.ingest.{scenario}", rates, "readings/s", rules=0 if scenario == "none" else 10_000)  # fmt: skip
        report(f"alarms.evaluate.{scenario}", costs, "us/reading", median_us=round(statistics.median(costs), 2))  # fmt: skip


if __name__ == "__main__":
    main()
