from __future__ import annotations

import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.wire import topics


def reading(i: int, **tags: str) -> wire.Reading:
    return wire.Reading(
        measurement="env",
        tags=tags or {"device": "d1"},
        fields={"t": 20.5 + i, "ok": True},
        ts=10**18 + i,
    )


def batch(**overrides: object) -> wire.Batch:
    data: dict[str, object] = {
        "gw": "gw-1",
        "stream": "s1",
        "boot": "b1",
        "seq": 7,
        "created": 10**18,
        "clock": wire.ClockInfo(offset_ns=123, synced=False),
        "series": wire.group_readings([reading(i) for i in range(5)] + [reading(9, device="d2")]),
    }
    data.update(overrides)
    return wire.Batch.model_validate(data)


def test_round_trip_keeps_every_reading_and_groups_tags_once() -> None:
    b = batch(events=[wire.Event(id="e1", type="motion", ts=5, body={"zone": "door"})])
    frame = wire.encode_batch(b)
    back = wire.decode_batch(frame)
    assert back == b
    assert [r.tags["device"] for r in back.readings()] == ["d1"] * 5 + ["d2"]
    assert len(back.series) == 2
    body = orjson.loads(zlib.decompress(frame[5:]))
    assert body["series"][0]["t"] == {"device": "d1"}
    assert len(body["series"][0]["p"]) == 5


def test_types_survive_strictly() -> None:
    r = wire.Reading(measurement="m", fields={"b": True, "i": 3, "f": 3.0, "s": "3"}, ts=1)
    back = next(
        wire.decode_batch(wire.encode_batch(batch(series=wire.group_readings([r])))).readings()
    )
    assert back.fields == {"b": True, "i": 3, "f": 3.0, "s": "3"}
    assert [type(v) for v in back.fields.values()] == [bool, int, float, str]


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"garbage", "malformed", "magic"),
        (wire.frame(b"{}", version=2), "unsupported_version", "version 2"),
        (b"OPB\x01\x07xx", "malformed", "compression"),
        (b"OPB\x01\x01not zlib", "malformed", "decompress"),
        (wire.frame(b"{not json"), "malformed", "JSON"),
        (wire.frame(b'{"gw": "gw-1"}'), "invalid_schema", "stream"),
        (b"OPB\x01\x00" + bytes(2 << 20), "oversized", "limit"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(data)
    assert err.value.reason == reason
    assert words in err.value.detail


def test_zip_bomb_stops_at_the_body_limit() -> None:
    bomb = wire.frame(b" " * (20 << 20))  # 20 MiB of spaces compresses to ~20 KiB
    assert len(bomb) < 100_000
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(bomb)
    assert (err.value.reason, err.value.detail) == (
        "oversized",
        f"body exceeds {wire.limits.MAX_BODY_BYTES} bytes once decompressed",
    )


def test_the_body_limits_and_a_cut_stream_are_named() -> None:
    plain = wire.frame(b" " * 2048, compress=False)
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(plain, max_body_bytes=1024)
    assert (err.value.reason, err.value.detail) == ("oversized", "body exceeds 1024 bytes")
    whole = wire.encode_batch(batch())
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(whole[:-4])  # the stream's last bytes missing
    assert (err.value.reason, err.value.detail) == ("malformed", "compressed body is truncated")


def test_a_batch_can_be_encoded_without_compression() -> None:
    b = batch()
    plain = wire.encode_batch(b, compress=False)
    assert plain[4] == 0  # the header's compression code: none
    assert orjson.loads(plain[5:])["seq"] == b.seq
    assert wire.decode_batch(plain) == b


def test_too_many_readings_is_oversized() -> None:
    frame = wire.encode_batch(batch())
    with pytest.raises(wire.BatchRejected, match="6 readings, the limit is 5"):
        wire.decode_batch(frame, max_readings=5)


@pytest.mark.parametrize(
    "bad_point",
    [[1, {}], ["1", {"v": 1}], [-1, {"v": 1}], [1, {"v": [1]}], [1, {"v": None}], [1, {"": 1}]],
)
def test_schema_violations_name_the_place(bad_point: list[object]) -> None:
    body = batch().model_dump(mode="json")
    body["series"][0]["p"][0] = bad_point
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(wire.frame(orjson.dumps(body)))
    assert err.value.reason == "invalid_schema"
    assert "series.0.p.0" in err.value.detail


def test_gateway_id_must_be_a_single_topic_level() -> None:
    body = batch().model_dump(mode="json")
    body["gw"] = "gw/+"
    with pytest.raises(wire.BatchRejected, match="gw"):
        wire.decode_batch(wire.frame(orjson.dumps(body)))


def test_topics() -> None:
    assert topics.up_batch("gw-1") == "outpost/v1/gw/gw-1/up/batch"
    assert topics.down_ack("gw-1") == "outpost/v1/gw/gw-1/down/ack"
    assert topics.parse_up_topic("outpost/v1/gw/gw-1/up/state") == ("gw-1", "state")
    assert topics.parse_up_topic("outpost/v1/gw/gw-1/down/ack") is None
    assert topics.parse_up_topic("outpost/v1/gw/+/up/batch") is None
    assert topics.COLLECTOR_SUBSCRIPTION == "$share/collectors/outpost/v1/gw/+/up/#"


def test_ack_and_nack_messages() -> None:
    nack = wire.Nack(
        stream="s", seq=3, reason="rate_limited", limit="bytes_per_s", retry_after_ms=250
    )
    assert wire.decode_ack(wire.encode_message(nack)) == nack
    ack = wire.Ack(stream="s", seq=3, status="stored")
    assert wire.decode_ack(wire.encode_message(ack)) == ack
    with pytest.raises(wire.MessageRejected):
        wire.decode_ack(b'{"kind": "ack"}')
    with pytest.raises(wire.MessageRejected):
        wire.decode_ack(b"\xff")


@pytest.mark.parametrize(
    ("bad", "last"), [(3, "series.0.p.2.0: "), (4, "and 1 more"), (6, "and 3 more")]
)
def test_a_schema_error_names_three_places_and_counts_the_rest(bad: int, last: str) -> None:
    body = batch().model_dump(mode="json")
    body["series"][0]["p"] = [["not a timestamp", {"v": 1}]] * bad
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(wire.frame(orjson.dumps(body)))
    parts = err.value.detail.split("; ")
    assert [p.split(": ")[0] for p in parts[:3]] == [f"series.0.p.{i}.0" for i in range(3)]
    assert len(parts) == (3 if bad == 3 else 4)
    assert parts[-1].startswith(last)


def test_a_batch_gives_back_its_readings_with_their_measurement() -> None:
    readings = list(batch().readings())
    assert [(r.measurement, r.tags, r.ts) for r in readings] == [
        (r.measurement, r.tags, r.ts)
        for r in [*(reading(i) for i in range(5)), reading(9, device="d2")]
    ]


@pytest.mark.parametrize("compress", [True, False])
def test_each_limit_admits_exactly_its_value(compress: bool) -> None:
    """The frame, body and reading limits are inclusive: a batch exactly at a limit is
    decoded, one byte or reading more is oversized."""
    b = batch()
    data = wire.encode_batch(b, compress=compress)
    body = orjson.dumps(b.model_dump(mode="json"))
    assert wire.decode_batch(data, max_frame_bytes=len(data)) == b
    assert wire.decode_batch(data, max_body_bytes=len(body)) == b
    assert wire.decode_batch(data, max_readings=b.reading_count) == b
    for limits in (
        {"max_frame_bytes": len(data) - 1},
        {"max_body_bytes": len(body) - 1},
        {"max_readings": b.reading_count - 1},
    ):
        with pytest.raises(wire.BatchRejected) as err:
            wire.decode_batch(data, **limits)
        assert err.value.reason == "oversized", limits


def test_a_frame_of_only_a_header_is_an_empty_body_not_bad_magic() -> None:
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(wire.frame(b"", compress=False))
    assert err.value.reason == "malformed"
    assert err.value.detail.startswith("body is not valid JSON")
    with pytest.raises(wire.BatchRejected) as err:
        wire.decode_batch(wire.frame(b"")[:4])
    assert err.value.detail == "not an Outpost batch frame (bad magic bytes)"


readings_st = st.lists(
    st.builds(
        wire.Reading,
        measurement=st.sampled_from(["temp", "power", "disk"]),
        tags=st.dictionaries(st.sampled_from(["device", "site", "mount"]), st.text(max_size=8)),
        ts=st.integers(0, 2**62 - 1),
        fields=st.dictionaries(
            st.text(min_size=1, max_size=6),
            st.one_of(
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=10),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(readings=readings_st, events=st.integers(0, 3), synced=st.booleans())
def test_a_body_from_json_fragments_is_the_batch_encode_batch_writes(
    readings: list[wire.Reading], events: int, synced: bool
) -> None:
    """The agent's buffer builds bodies from stored JSON (wire.batch_body); the collector must
    read the same batch as one encode_batch wrote from the same content."""
    evs = [
        wire.Event(id=f"e{i}", type="availability", ts=i, source="dev", body={"state": "online"})
        for i in range(events)
    ]
    header = wire.BatchHeader(
        gateway_id="gw-1", stream_id="s", boot_id="b", seq=7, created_ns=5, offset_ns=-3,
        synced=synced,
    )  # fmt: skip
    series: dict[bytes, list[tuple[int, bytes]]] = {}
    for r in readings:
        series.setdefault(wire.series_key(r.measurement, r.tags), []).append(
            (r.ts, orjson.dumps(r.fields))
        )
    body = wire.batch_body(header, series, [orjson.dumps(e.model_dump(mode="json")) for e in evs])
    expected = wire.Batch(
        gateway_id="gw-1", stream_id="s", boot_id="b", seq=7, created_ns=5,
        clock=wire.ClockInfo(offset_ns=-3, synced=synced),
        series=wire.group_readings(readings), events=evs,
    )  # fmt: skip
    assert wire.decode_batch(wire.frame(body)) == wire.decode_batch(wire.encode_batch(expected))
