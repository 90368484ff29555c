"""Exporting a range, streamed in windows, on every time-series store: each point once, in order."""

from __future__ import annotations

import time

from outpost_iot.collector._export import last_points, stream_points
from outpost_iot.collector.stores import SeriesWrite, TimeSeriesStore
from tests.collector.contract.conftest import visible

S = 10**9
HOUR = 3600 * S
T = (time.time_ns() // HOUR - 6) * HOUR  # recent: VictoriaMetrics keeps its retention


class Counting:
    """The store, with the size of each answer kept."""

    def __init__(self, inner: TimeSeriesStore) -> None:
        self.inner = inner
        self.answers: list[int] = []

    def query(self, *args: object, **kwargs: object) -> object:
        out = self.inner.query(*args, **kwargs)  # type: ignore[arg-type]
        self.answers.append(len(out))
        return out


def test_a_range_streams_every_point_once_in_order_in_bounded_windows(ts: TimeSeriesStore) -> None:
    # Dense for ten minutes (10 readings/s, two devices), sparse for hours around them.
    dense = [T + HOUR + i * S // 10 for i in range(6000)]
    sparse = [T + i * 60 * S for i in range(300)]
    ts.write(
        [
            SeriesWrite(
                "export",
                {"device": d},
                [(t, {"v": i}) for i, t in enumerate(dense + sparse)],
                "acme",
            )
            for d in ("a", "b")
        ]
    )
    visible(ts)
    spy = Counting(ts)
    out = list(
        stream_points(spy, "export", start_ns=T, end_ns=T + 6 * HOUR, target=1000)  # type: ignore[arg-type]
    )
    expected = sorted((t, d) for t in set(dense + sparse) for d in ("a", "b"))
    assert sorted((p.ts, p.tags["device"]) for p in out) == expected  # each point once
    assert [p.ts for p in out] == sorted(p.ts for p in out)  # oldest first
    # The windows follow the density: a window grown over the sparse hours may land on the
    # dense part once, then they shrink (memory is a window's worth, about the target).
    big = [n for n in spy.answers if n > 2 * 1000]
    assert len(big) <= 2, spy.answers
    assert len(spy.answers) > 12  # the dense part was read in many windows, not one
    # And a range with nothing in it asks few questions.
    spy.answers.clear()
    assert list(stream_points(spy, "export", start_ns=0, end_ns=T - HOUR)) == []  # type: ignore[arg-type]
    assert len(spy.answers) < 40


def test_the_last_points_come_from_the_most_recent_windows(ts: TimeSeriesStore) -> None:
    times = [T + i * 30 * S for i in range(500)]
    ts.write(
        [
            SeriesWrite(
                "recent", {"device": "a"}, [(t, {"v": i}) for i, t in enumerate(times)], "acme"
            )
        ]
    )
    visible(ts)
    got = last_points(ts, "recent", 25, end_ns=time.time_ns())
    assert [p.ts for p in got] == times[-25:]
    assert [p.fields["v"] for p in got] == list(range(475, 500))
