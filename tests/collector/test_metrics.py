"""What a time-series backend could not keep reaches the metrics, through every wrapper."""

from __future__ import annotations

from outpost_iot.collector._ingest import IngestMetrics
from outpost_iot.collector._shared import LatestValues
from outpost_iot.collector.api._metrics import metrics_text


class _Dropping:
    """A store that could not keep some values (only what the metrics read of it)."""

    def not_kept(self) -> dict[str, int]:
        return {"text_fields_skipped": 7, "unwritable_readings": 2, "new_reason": 1}


def test_each_reason_a_backend_gives_is_a_counter() -> None:
    text = metrics_text(IngestMetrics(), _Dropping())[0].decode()  # type: ignore[arg-type]
    assert "outpost_timeseries_text_fields_skipped_total 7.0" in text
    assert "outpost_timeseries_unwritable_readings_total 2.0" in text
    assert "outpost_timeseries_new_reason_total 1.0" in text  # a reason with no help text yet
    assert "# HELP outpost_timeseries_text_fields_skipped_total Text field values" in text


def test_the_shared_latest_values_cache_passes_the_counts_on() -> None:
    cache = LatestValues.__new__(LatestValues)  # only the delegation is under test
    cache.inner = _Dropping()  # type: ignore[assignment]
    assert cache.not_kept() == _Dropping().not_kept()


def test_a_store_that_keeps_everything_adds_no_counter() -> None:
    class Keeping:
        def not_kept(self) -> dict[str, int]:
            return {}

    text = metrics_text(IngestMetrics(), Keeping())[0].decode()  # type: ignore[arg-type]
    assert "outpost_timeseries_" not in text
