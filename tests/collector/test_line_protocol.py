"""The collector's line-protocol encoder writes exactly what influxdb-client's Point writes."""

from __future__ import annotations

import random
import string

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from outpost_iot.collector.stores import InfluxTimeSeriesStore, SeriesWrite
from outpost_iot.collector.stores._influx import MEASUREMENT_LABEL, TENANT_LABEL
from outpost_iot.wire import FieldValue

TRICKY = ["plain", "with space", "com,ma", "eq=uals", 'quo"te', "back\\slash", "ends\\", "tab\there", "new\nline", "ünïcode", "#hash"]  # fmt: skip


def reference(s: SeriesWrite, ts: int, fields: dict[str, FieldValue]) -> str:
    point = Point(s.measurement).time(ts, WritePrecision.NS)
    for key, value in {**s.tags, TENANT_LABEL: s.tenant, MEASUREMENT_LABEL: s.measurement}.items():
        point.tag(key, value)
    for key, value in fields.items():
        point.field(key, value)
    return str(point.to_line_protocol())


def test_the_encoder_matches_influxdb_client() -> None:
    rng = random.Random(3)
    alphabet = string.ascii_letters + string.digits + ' ,="\\\t\n_-.ü#'
    store = InfluxTimeSeriesStore("http://127.0.0.1:1", kind="influxdb", org="o", token="t")
    series = []

    def word() -> str:
        if rng.random() < 0.5:
            return rng.choice(TRICKY)
        return "".join(rng.choices(alphabet, k=rng.randint(1, 8)))

    for i in range(300):
        fields: dict[str, FieldValue] = {
            word(): rng.choice([rng.uniform(-1e6, 1e6), float(rng.randint(-5, 5)), 1e-12, 3e20,
                                rng.randint(-(2**40), 2**40), True, False, word()])
            for _ in range(rng.randint(1, 4))
        }  # fmt: skip
        tags = {word(): word() for _ in range(rng.randint(0, 3))}
        measurement = word().lstrip("#") or "m"  # see below
        series.append(SeriesWrite(measurement, tags, [(1_796_000_000_000_000_000 + i, fields)], rng.choice(["acme", ""])))  # fmt: skip
    ours = list(store.lines(series))
    theirs = [reference(s, ts, f) for s in series for ts, f in s.points]
    assert ours == theirs
    # A measurement starting with # would make a comment line: not written, counted.
    comment = SeriesWrite("#hash", {}, [(1, {"v": 1.0}), (2, {"v": 2.0})], "acme")
    assert list(store.lines([comment])) == []
    assert store.unwritable == 2
    store.close()
