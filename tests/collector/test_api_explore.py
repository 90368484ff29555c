"""The data explorer's API: the catalog of what there is to chart, and raw exports (CSV, JSON
Lines) streamed as downloads, tenant-scoped and bounded."""

from __future__ import annotations

import asyncio
import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot.collector._export import csv_lines
from outpost_iot.collector.stores import SeriesWrite, StoredPoint
from tests.collector._api_fixture import MINUTE, T0, Api, iso
from tests.collector.test_api import write_temperatures


async def test_the_catalog_lists_a_tenants_measurements_fields_and_tag_values(api: Api) -> None:
    write_temperatures(api, "a1", "acme")
    write_temperatures(api, "b1", "globex")
    a2 = api.gateways["a2"]
    api.ts.write([SeriesWrite("power", {"gateway": a2, "device": "plug"}, [(T0, {"w": 3.0, "on": True})], "acme")])  # fmt: skip
    r = await api.get("/api/v1/series/catalog")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] is False
    assert body["measurements"] == [
        {
            "name": "climate",
            "fields": ["celsius"],
            "tags": {"device": ["d1", "d2"], "gateway": [api.gateways["a1"]]},
            "series": 2,
        },
        {"name": "power", "fields": ["on", "w"], "tags": {"device": ["plug"], "gateway": [a2]}, "series": 1},
    ]  # fmt: skip
    # Narrowed to one gateway; another tenant's series never show, an admin sees both.
    narrowed = (await api.get("/api/v1/series/catalog", tag=f"gateway:{a2}")).json()
    assert [m["name"] for m in narrowed["measurements"]] == ["power"]
    other = (await api.get("/api/v1/series/catalog", token="viewer-b")).json()
    assert other["measurements"][0]["tags"]["gateway"] == [api.gateways["b1"]]
    assert len(other["measurements"]) == 1
    admin = (await api.get("/api/v1/series/catalog", token="admin")).json()
    assert admin["measurements"][0]["series"] == 4
    assert (await api.get("/api/v1/series/catalog", tag="no-colon")).status_code == 400


async def test_an_export_streams_every_raw_reading_of_the_range_as_csv(api: Api) -> None:
    d1 = write_temperatures(api, "a1", "acme")
    write_temperatures(api, "b1", "globex", offset=100)  # another tenant's: never exported
    r = await api.get(
        "/api/v1/series/export", measurement="climate", tag="device:d1",
        start=iso(T0), end=iso(T0 + 2 * MINUTE),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="climate-20261121T222640Z.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [float(row["value"]) for row in rows] == d1
    assert rows[0]["time"] == "2026-11-21T22:26:40.000000000Z"
    assert rows[0]["tags"] == f"device=d1,gateway={api.gateways['a1']}"
    assert {row["field"] for row in rows} == {"celsius"}

    jsonl = await api.get(
        "/api/v1/series/export", measurement="climate", format="jsonl",
        start=iso(T0), end=iso(T0 + MINUTE),
    )  # fmt: skip
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert len(lines) == 120  # two devices, 60 s, this tenant only
    assert all(line["fields"]["celsius"] < 100 for line in lines)
    assert (await api.get("/api/v1/series/export", measurement="climate", tenant="globex")).status_code == 403  # fmt: skip
    assert (await api.get("/api/v1/series/export", measurement="climate", token=None)).status_code == 401  # fmt: skip


async def test_exports_at_once_are_bounded_and_a_slot_comes_back(api: Api) -> None:
    """A fifth export while four stream is refused with Retry-After; the slots come back
    whether an export ends or its client leaves before reading."""
    slots = api.app.state.exports
    for _ in range(4):
        assert slots.acquire(blocking=False)
    try:
        r = await api.get("/api/v1/series/export", measurement="climate")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "10"
        assert r.json()["error"] == "busy"
    finally:
        for _ in range(4):
            slots.release()
    for _ in range(10):  # more exports than slots, one after another
        assert (await api.get("/api/v1/series/export", measurement="climate")).status_code == 200
    # A client that goes away without reading the body gives its slot back too.
    headers = {"Authorization": f"Bearer {api.tokens['viewer-a']}"}
    for _ in range(6):
        async with api.client.stream(
            "GET", "/api/v1/series/export", params={"measurement": "climate"}, headers=headers
        ) as response:
            assert response.status_code == 200
    await asyncio.sleep(0)
    assert (await api.get("/api/v1/series/export", measurement="climate")).status_code == 200


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tags=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), _text, max_size=3),
       text=_text, number=st.floats(allow_nan=False, allow_infinity=False) | st.integers())  # fmt: skip
def test_no_csv_cell_from_a_device_reads_as_a_formula(
    tags: dict[str, str], text: str, number: float
) -> None:
    """Whatever a device names its tags or sends as text, no cell a spreadsheet opens starts
    with a formula character, the text is otherwise kept, and numbers stay numbers."""
    point = StoredPoint("climate", tags, T0, {"note": text, "value": number})
    rows = list(csv.reader(io.StringIO("".join(csv_lines(iter([point]))), newline="")))
    assert rows[0] == ["time", "ts_ns", "measurement", "tags", "field", "value"]
    by_field = {row[4]: row for row in rows[1:]}
    for row in rows[1:]:
        for cell in (row[2], row[3], row[4]):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    note = by_field["note"][5]
    assert note == text or (note == "'" + text and text[:1] in "=+-@\t\r")
    assert float(by_field["value"][5]) == float(number)
