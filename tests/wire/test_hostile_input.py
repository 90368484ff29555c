"""The wire contract against hostile input: whatever bytes arrive, decoding either gives a model
that every store can keep and every encoder can write, or refuses with a reason; nothing else.

Property-based (hypothesis): the generated bodies go past every limit in wire._limits: integers
beyond int64, timestamps past 2116, deep nesting, long names, too many fields.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot import wire
from outpost_iot.wire import limits
from tests._fuzz import budget

FUZZ = settings(
    max_examples=budget(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Integers around every boundary that matters: int64, the timestamp limit, u64 (orjson's).
edge_ints = st.sampled_from(
    [
        0,
        -1,
        1,
        2**31 - 1,
        2**31,
        limits.TIME_MAX_NS,
        limits.TIME_MAX_NS + 1,
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        2**64 - 1,
        2**64,
        10**30,
    ]
)
ints = st.one_of(st.integers(), edge_ints)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.text(min_size=300, max_size=400),  # past the name limit
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


names = st.one_of(st.text(min_size=1, max_size=12), st.text(min_size=250, max_size=300))
fields = st.dictionaries(names, scalars, max_size=6) | st.builds(
    lambda n: {f"f{i}": i for i in range(n)}, st.sampled_from([1, limits.MAX_FIELDS, 300])
)
series = st.fixed_dictionaries(
    {
        "m": names,
        "t": st.dictionaries(names, st.text(max_size=30), max_size=3),
        "p": st.lists(st.tuples(ints, fields).map(list), max_size=4),
    }
)
events = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=140),
        "type": names,
        "ts": ints,
        "body": st.one_of(
            st.dictionaries(st.text(max_size=8), json_values, max_size=4),
            st.sampled_from([nested(20), nested(40), nested(300)]),
        ),
    }
)
batch_like = st.fixed_dictionaries(
    {
        "gw": st.sampled_from(["gw-1", "gw/1", ""]),
        "stream": st.text(min_size=1, max_size=70),
        "boot": st.text(min_size=1, max_size=70),
        "seq": ints,
        "created": ints,
        "clock": st.fixed_dictionaries({"offset_ns": ints, "synced": st.booleans()}),
        "series": st.lists(series, max_size=3),
        "events": st.lists(events, max_size=3),
    }
)


def body(value: Any) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits), as a hostile
    # sender would.
    return json.dumps(value).encode()


def assert_storable(batch: wire.Batch) -> None:
    """What a decoded batch must be: every integer fits int64, every timestamp 0 .. 2^62 - 1,
    and it encodes again (orjson refuses >64-bit integers and depth > 254)."""
    assert 1 <= batch.seq <= limits.INT64_MAX
    assert 0 <= batch.created_ns <= limits.TIME_MAX_NS
    assert abs(batch.clock.offset_ns) <= limits.OFFSET_MAX_NS
    for r in batch.readings():
        assert 0 <= r.ts <= limits.TIME_MAX_NS
        assert len(r.fields) <= limits.MAX_FIELDS
        for v in r.fields.values():
            if isinstance(v, int) and not isinstance(v, bool):
                assert limits.INT64_MIN <= v <= limits.INT64_MAX
    for e in batch.events:
        assert 0 <= e.ts <= limits.TIME_MAX_NS
    assert wire.decode_batch(wire.encode_batch(batch)) == batch


def outcome(decode: Any, data: bytes) -> tuple[Any, wire.WireError | None]:
    """What decoding gives: the model, or the refusal; anything else raised fails the test."""
    try:
        return decode(data), None
    except (wire.BatchRejected, wire.MessageRejected) as exc:
        return None, exc


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_batch_or_refused_with_a_reason(data: bytes) -> None:
    batch, refused = outcome(wire.decode_batch, data)
    if isinstance(refused, wire.BatchRejected):
        assert refused.reason in ("malformed", "unsupported_version", "oversized", "invalid_schema")
        assert refused.detail
    else:
        assert_storable(batch)


@FUZZ
@given(batch_like, st.booleans())
def test_any_batch_shaped_body_is_storable_or_refused(
    value: dict[str, Any], compress: bool
) -> None:
    batch, refused = outcome(wire.decode_batch, wire.frame(body(value), compress=compress))
    if isinstance(refused, wire.BatchRejected):
        assert refused.reason in ("malformed", "invalid_schema", "oversized")
        assert refused.detail
    else:
        assert_storable(batch)


def good_body(**changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "gw": "gw-1",
        "stream": "s1",
        "boot": "b1",
        "seq": 1,
        "created": 10**18,
        "clock": {"offset_ns": 0, "synced": True},
        "series": [{"m": "m", "t": {}, "p": [[10**18, {"v": 1}]]}],
        "events": [],
    }
    b.update(changes)
    return b


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"series": [{"m": "m", "p": [[1, {"e": 2**64 - 1}]]}]}, "64-bit"),  # an energy total
        ({"series": [{"m": "m", "p": [[1, {"e": 2**63}]]}]}, "64-bit"),  # a Counter64
        ({"series": [{"m": "m", "p": [[2**63 - 1, {"v": 1}]]}]}, "less than or equal"),
        ({"seq": 2**63}, "less than or equal"),
        ({"clock": {"offset_ns": 2**63 - 1, "synced": True}}, "less than or equal"),
        ({"events": [{"id": "e", "type": "t", "ts": 1, "body": nested(300)}]}, "deeper than 32"),
        ({"events": [{"id": "e", "type": "t", "ts": 1, "body": {"x": "y" * 70_000}}]}, "bytes"),
        ({"series": [{"m": "m", "p": [[1, {f"f{i}": i for i in range(300)}]]}]}, "at most 256"),
        ({"series": [{"m": "m" * 300, "p": [[1, {"v": 1}]]}]}, "at most 256"),
        ({"events": [{"id": str(i), "type": "t", "ts": 1} for i in range(5001)]}, "5000"),
    ],
)
def test_each_limit_is_refused_with_words_that_name_it(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(wire.BatchRejected) as caught:
        wire.decode_batch(wire.frame(body(good_body(**changes))))
    assert caught.value.reason == "invalid_schema"
    assert words in caught.value.detail


def test_a_body_nested_twenty_levels_is_fine() -> None:
    b = wire.decode_batch(
        wire.frame(body(good_body(events=[{"id": "e", "type": "t", "ts": 1, "body": nested(20)}])))
    )
    assert_storable(b)


def test_a_zip_bomb_stops_at_the_body_limit() -> None:
    bomb = wire.frame(b" " * (limits.MAX_BODY_BYTES + 1))
    assert len(bomb) < 64 * 1024  # small on the wire
    with pytest.raises(wire.BatchRejected, match="oversized"):
        wire.decode_batch(bomb)
    assert zlib.decompress(bomb[5:])  # (it is a real zlib stream)


control = st.dictionaries(
    st.sampled_from(
        [
            "v",
            "state",
            "ts",
            "boot_id",
            "stream",
            "backlog_batches",
            "backlog_readings",
            "oldest_unsent_s",
            "last_ack_ts",
            "drops",
            "version",
            "status",
            "applied_version",
            "reason",
            "errors",
            "request_id",
            "csr",
            "kind",
            "seq",
            "retry_after_ms",
            "buffer_reset",
        ]
    ),
    json_values,
    max_size=10,
)


@FUZZ
@given(control)
def test_control_messages_are_bounded_or_refused(value: dict[str, Any]) -> None:
    data = body(value)
    for decode in (
        wire.decode_state,
        wire.decode_config_report,
        wire.decode_renew_request,
        wire.decode_ack,
    ):
        msg, refused = outcome(decode, data)
        if refused is not None:
            assert str(refused)
            continue
        encoded = wire.encode_message(msg)  # never fails: every integer fits, every text is cut
        for v in json.loads(encoded).values():
            if isinstance(v, int) and not isinstance(v, bool):
                assert limits.INT64_MIN <= v <= limits.INT64_MAX


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        (wire.decode_state, {"state": "online", "ts": 10**30, "boot_id": "b"}),
        (
            wire.decode_state,
            {"state": "online", "ts": 1, "boot_id": "b", "backlog_readings": 2**63},
        ),
        (wire.decode_state, {"state": "online", "ts": 1, "boot_id": "b", "drops": {"x": 2**64}}),
        (
            wire.decode_config_report,
            {"version": 2**63, "status": "applied", "applied_version": 1, "ts": 1},
        ),
        (
            wire.decode_config_report,
            {
                "version": 1,
                "status": "applied",
                "applied_version": 1,
                "ts": 1,
                "errors": ["e"] * 101,
            },
        ),
    ],
)
def test_out_of_range_control_messages_are_refused(decode: Any, message: dict[str, Any]) -> None:
    with pytest.raises(wire.MessageRejected):
        decode(body(message))


def test_a_report_cuts_long_error_lists_to_fit() -> None:
    errors = wire.ConfigReport.fit_errors(["x" * 5000] * 150)
    report = wire.ConfigReport(version=1, status="applied", applied_version=1, ts=1, errors=errors)
    assert len(report.errors) == limits.MAX_REPORT_ERRORS
    assert report.errors[-1] == "… and 51 more"
    assert len(report.errors[0]) == limits.MAX_REPORT_TEXT_CHARS


@FUZZ
@given(json_values)
def test_the_tree_check_never_recurses_or_lets_a_bad_tree_pass(value: Any) -> None:
    try:
        wire.limits.check_json_tree(value, max_depth=4, max_items=20)
    except wire.TooComplex:
        return
    assert json.dumps(value)  # a tree that passes is writable


def test_the_tree_check_handles_depth_past_the_interpreters_recursion_limit() -> None:
    with pytest.raises(wire.TooComplex, match="deeper than 32"):
        wire.limits.check_json_tree(nested(100_000), max_depth=32, max_items=10**6)


def test_log_throttle_once_per_period_per_key_with_keys_bounded() -> None:
    now = [0.0]
    throttle = wire.LogThrottle(60.0, clock=lambda: now[0], max_keys=100)
    assert throttle.ready("a")
    assert not throttle.ready("a"), "the same key within the period: no second line"
    assert throttle.ready("b")
    now[0] = 59.0
    assert not throttle.ready("a")
    assert throttle.ready("a", every_s=30)  # a shorter period for this call
    now[0] = 200.0
    assert throttle.ready("a")
    for i in range(1000):  # keys invented by a sender: memory stays bounded
        throttle.ready(f"k{i}")
    assert len(throttle._last) == 100


def test_every_log_line_is_one_line_whatever_it_quotes() -> None:
    import logging

    record = logging.LogRecord(
        "outpost",
        logging.WARNING,
        __file__,
        1,
        "device said %s",
        ("a\nFORGED\x1b[2J" + "x" * 9000,),
        None,
    )
    line = wire.SafeFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "a\\nFORGED\\x1b[2J" in line
    assert len(line) < 4200  # cut, with how much was left out
