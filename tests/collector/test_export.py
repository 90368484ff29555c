"""`outpost-collector readings`: the most recent readings, or any range streamed as JSON Lines
or CSV, from a real SQLite store."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from outpost_iot.collector._export import parse_time
from outpost_iot.collector.cli import main as collector_cli
from outpost_iot.collector.stores import SeriesWrite, SqliteTimeSeriesStore

S = 10**9
DAY = 86400 * S


@pytest.fixture(scope="module")
def day_of_readings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A collector config whose store holds a day of 1 s readings (2 devices, 172,800 in all):
    more than --last can give."""
    tmp_path = tmp_path_factory.mktemp("export")
    start = (time.time_ns() // DAY - 1) * DAY
    ts = SqliteTimeSeriesStore(tmp_path / "timeseries.db")
    for device in ("d1", "d2"):
        ts.write(
            [
                SeriesWrite(
                    "climate",
                    {"device": device, "room": "cold store"},
                    [
                        (start + i * S, {"celsius": i % 40 - 5.5, "door_open": i % 7 == 0})
                        for i in range(86400)
                    ],
                    "acme",
                )
            ]
        )
    ts.close()
    return stores_only_config(tmp_path), start


def stores_only_config(folder: Path) -> Path:
    """A collector config whose stores are ``timeseries.db`` and ``documents.db`` in
    ``folder``: enough for the CLI's commands that read or change the stores."""
    for name in ("ca.pem", "c.pem", "c.key"):
        (folder / name).write_text("")
    cfg = folder / "collector.toml"
    cfg.write_text(
        f'[broker]\nca_file = "{folder / "ca.pem"}"\ncert_file = "{folder / "c.pem"}"\n'
        f'key_file = "{folder / "c.key"}"\n\n[stores]\n'
        f'timeseries_path = "{folder / "timeseries.db"}"\n'
        f'documents_path = "{folder / "documents.db"}"\n'
    )
    return cfg


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(collector_cli, ["readings", *args])
    return r.exit_code, r.stdout, r.stderr


def test_a_whole_day_comes_out_as_json_lines(
    day_of_readings: tuple[Path, int], tmp_path: Path
) -> None:
    cfg, start = day_of_readings
    out = tmp_path / "day.jsonl"
    code, _, err = run(
        "--config", str(cfg), "--measurement", "climate", "--since", str(start),
        "--until", str(start + DAY), "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "wrote 172800 readings" in err
    lines = out.read_text().splitlines()
    assert len(lines) == 172_800
    rows = [json.loads(line) for line in lines[:3]] + [json.loads(lines[-1])]
    assert rows[0]["ts"] == start
    assert rows[-1]["ts"] == start + DAY - S
    assert rows[0]["fields"] == {"celsius": -5.5, "door_open": True}
    assert {r["tags"]["device"] for r in rows[:2]} == {"d1", "d2"}
    stamps = [json.loads(line)["ts"] for line in lines[::997]]
    assert stamps == sorted(stamps)


def test_a_range_comes_out_as_csv_one_row_per_field(day_of_readings: tuple[Path, int]) -> None:
    cfg, start = day_of_readings
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start // S + 3600))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start // S + 3610))
    code, out, err = run(
        "--config", str(cfg), "--measurement", "climate", "--tag", "device=d2",
        "--since", since, "--until", until, "--format", "csv",
    )  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 10 * 2  # ten readings of d2, two fields each
    first = rows[0]
    assert first["ts_ns"] == str(start + 3600 * S)
    assert first["time"].endswith("Z")
    assert first["time"][11:19] == time.strftime("%H:%M:%S", time.gmtime(start // S + 3600))
    assert first["tags"] == "device=d2,room=cold store"
    assert {r["field"] for r in rows} == {"celsius", "door_open"}
    assert {r["value"] for r in rows if r["field"] == "door_open"} <= {"true", "false"}


def test_last_gives_the_most_recent(day_of_readings: tuple[Path, int]) -> None:
    cfg, start = day_of_readings
    code, out, _ = run("--config", str(cfg), "--measurement", "climate", "--last", "3")
    assert code == 0
    assert [json.loads(x)["ts"] for x in out.splitlines()] == [
        start + DAY - 2 * S,
        start + DAY - S,
        start + DAY - S,
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "yesterday"], "give a time as 2026-12-03T08:00:00Z"),
        (["--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["--since", "1h", "--last", "5"], "--last and --since do not go together"),
        (["--format", "xml"], "'jsonl', 'csv'"),
    ],
)
def test_bad_arguments_say_what_to_change(
    day_of_readings: tuple[Path, int], args: list[str], words: str
) -> None:
    cfg, _ = day_of_readings
    code, out, err = run("--config", str(cfg), "--measurement", "climate", *args)
    assert code == 2
    assert words in out + err


@given(st.integers(0, 2**62))
def test_times_in_nanoseconds_and_rfc3339_agree(ns: int) -> None:
    assert parse_time(str(ns).rjust(10, "0"), now_ns=0) == ns or ns < 10**9
    whole = ns - ns % 1000
    text = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole // S)) + f".{whole % S // 1000:06d}Z"
    )
    if whole // S < 253402300800:  # year 9999
        assert parse_time(text, now_ns=0) == whole


def test_durations_count_back_from_now() -> None:
    now = 1_800_000_000 * S
    assert parse_time("24h", now_ns=now) == now - DAY
    assert parse_time("now", now_ns=now) == now
    assert parse_time("2026-12-03", now_ns=now) == 1796256000 * S
