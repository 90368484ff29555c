"""Every record comes back as it was written, field by field, from every backend (SQLite,
PostgreSQL): the contract tests elsewhere check what the stores do; these check that nothing is
lost or swapped on the way (a column read into the wrong field, a tenant's filter applied to an
admin, a refusal that no longer says which token). Written from the survivors of mutation
testing (docs/reliability.md)."""

from __future__ import annotations

import dataclasses

import pytest

from outpost_iot.collector._exceptions import TokenRefused
from outpost_iot.collector.stores import (
    AuditEntry,
    DesiredConfigRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    QuarantineEntry,
    RolloutRecord,
    SeriesWrite,
    TimeSeriesStore,
)
from outpost_iot.wire import Event, GatewayState
from tests.collector.contract.conftest import visible
from tests.collector.contract.test_documents import S, T, enroll
from tests.collector.contract.test_timeseries import T as RECENT


def test_audit_entries_come_back_field_by_field(docs: DocumentStore) -> None:
    written = AuditEntry(
        T + 7, "token:t1", "acme", "config.set", "gw-9", "10.1.2.3", {"version": 4}
    )
    docs.audit(written)
    [got] = docs.audit_log("acme")
    assert got.id is not None
    assert dataclasses.replace(got, id=None) == written


def test_quarantine_entries_come_back_field_by_field(docs: DocumentStore) -> None:
    written = QuarantineEntry(
        received_ns=T + 11,
        topic="outpost/v1/gw/gw-q/up/batch",
        reason="malformed",
        detail="not an Outpost batch frame",
        raw=b"\x00\x01raw",
        gateway_id="gw-q",
        properties={"stream": "s1", "seq": "5"},
        size=6,
    )
    docs.quarantine(written)
    [got] = docs.quarantined()
    assert got.id is not None
    assert dataclasses.replace(got, id=None) == written
    docs.mark_replayed(got.id, T + 99, "stored")
    [again] = docs.quarantined()
    assert (again.replayed_ns, again.replay_result) == (T + 99, "stored")


def test_enrollment_tokens_come_back_field_by_field_and_refusals_name_the_token(
    docs: DocumentStore,
) -> None:
    written = EnrollmentTokenRecord("tok-1", "hash-1", "acme", "hq", T + 1, T + 3600 * S, 5, 4)
    docs.create_enrollment_token(written)
    assert docs.enrollment_tokens("acme") == [written]
    assert docs.enrollment_tokens() == [written]  # an admin's view
    # Refusals say why, in words, and which token and tenant (for the audit log).
    expiring = EnrollmentTokenRecord("tok-2", "hash-2", "acme", "hq", T, T + 10 * S, 1, 1)
    docs.create_enrollment_token(expiring)
    assert refusal(docs, "hash-2", T + 10 * S) == (
        "expired",
        "this enrollment token has expired",  # at exactly its expiry: expired
        ("acme", "tok-2"),
    )
    # An admin (no tenant) can revoke any tenant's token.
    assert docs.revoke_enrollment_token("tok-1")
    assert refusal(docs, "hash-1", T + S) == (
        "revoked",
        "this enrollment token was revoked by an operator",
        ("acme", "tok-1"),
    )
    enroll(docs, "gw-u")  # its token, tok-gw-u, has one use
    assert refusal(docs, "hash-gw-u", T + S) == (
        "used_up",
        "this enrollment token was already used 1 time(s)",
        ("acme", "tok-gw-u"),
    )
    assert refusal(docs, "nothing", T)[:2] == ("unknown", "this enrollment token does not exist")


def refusal(docs: DocumentStore, token_hash: str, now: int) -> tuple[str, str, tuple[str, str]]:
    """What redeeming the token is refused with: code, message, (tenant, token id)."""
    with pytest.raises(TokenRefused) as caught:
        docs.redeem_enrollment_token(token_hash, now, lambda _t: pytest.fail("spent"))
    e = caught.value
    return e.code, e.message, (e.tenant, e.token_id)


def test_desired_configs_come_back_field_by_field(docs: DocumentStore) -> None:
    enroll(docs, "gw-d")
    written = DesiredConfigRecord("gw-d", 7, T + 70, "token:ops", b"\x00signed")
    docs.add_desired_config(written)
    assert docs.desired_configs("gw-d") == [written]


def test_events_keep_their_source_everywhere_they_are_read(docs: DocumentStore) -> None:
    enroll(docs, "gw-e")
    event = Event(id="e1", type="motion", ts=T, source="frigate/front", body={"zone": "door"})
    docs.record([], [("gw-e", event)])
    assert docs.events("gw-e") == [event]
    assert docs.find_events("acme") == [("gw-e", event)]


def test_gateways_as_the_fleet_view_reads_them(docs: DocumentStore) -> None:
    enroll(docs, "gw-g")
    docs.save_state("gw-g", GatewayState(state="online", ts=T, boot_id="b1", stream="s1"), T)
    record = docs.gateway("gw-g")
    assert record is not None
    assert (record.id, record.state, record.clock_flagged) == ("gw-g", "online", False)
    # What the gateway said, without the envelope's version and the state stored beside it.
    assert not {"v", "state"} & record.status.keys()
    assert record.status["stream"] == "s1"
    [item] = docs.gateways("acme")
    assert item.clock_flagged is False
    assert not {"v", "state"} & item.status.keys()
    docs.set_clock("gw-g", -42.5, True)
    [item] = docs.gateways("acme")
    assert (item.clock_flagged, item.clock_skew_s) == (True, -42.5)


def test_an_admin_sees_every_tenants_rollouts(docs: DocumentStore) -> None:
    for rollout_id, tenant in (("r1", "acme"), ("r2", "globex")):
        docs.create_rollout(
            RolloutRecord(id=rollout_id, tenant=tenant, actor="ops", created_ns=T,
                          status="running", waves=1, abort_percent=10.0, timeout_s=60.0,
                          device_errors_fail=False),
            [],
        )  # fmt: skip
    assert sorted(r.id for r in docs.rollouts("*")) == ["r1", "r2"]
    assert [r.id for r in docs.rollouts("globex")] == ["r2"]
    [r1] = docs.rollouts("acme")
    assert (r1.actor, r1.abort_percent, r1.timeout_s, r1.device_errors_fail) == (
        "ops",
        10.0,
        60.0,
        False,
    )


# -- the time-series store -------------------------------------------------------------------


def test_points_and_latest_values_keep_their_measurement_tags_and_types(
    ts: TimeSeriesStore,
) -> None:
    tags = {"gateway": "gw-1", "device": "d1"}
    ts.write([SeriesWrite("power", tags, [(RECENT, {"on": True, "watts": 3})], "acme")])
    ts.write([SeriesWrite("power", {**tags, "device": "d2"}, [(RECENT, {"on": False})], "acme")])
    visible(ts)
    [point] = ts.query("power", tenant="acme", tags={"device": "d1"})
    assert point.measurement == "power"
    latest = ts.latest("acme", "power", tags={"device": "d1"})
    assert sorted((v.measurement, v.field) for v in latest) == [("power", "on"), ("power", "watts")]
    assert {v.tags["device"] for v in latest} == {"d1"}  # the filter applies
    assert {v.field: float(v.value) for v in latest} == {"on": 1.0, "watts": 3.0}  # a true one


def test_the_same_tags_in_any_order_are_one_series(ts: TimeSeriesStore) -> None:
    ts.write([SeriesWrite("m", {"a": "1", "b": "2"}, [(RECENT, {"x": 1.0})], "acme")])
    ts.write([SeriesWrite("m", {"b": "2", "a": "1"}, [(RECENT, {"x": 2.0})], "acme")])
    visible(ts)
    assert ts.count_points("m") == 1
    [point] = ts.query("m", tenant="acme")
    assert float(point.fields["x"]) == 2.0  # the later write of the same point


def test_devices_list_every_measurement_they_sent(ts: TimeSeriesStore) -> None:
    """(With the time of the last reading: here a second after the first.)"""
    for measurement, t in (("climate", RECENT), ("power", RECENT + S)):
        ts.write(
            [
                SeriesWrite(
                    measurement, {"gateway": "gw-1", "device": "d1"}, [(t, {"x": 1.0})], "acme"
                )
            ]
        )
    visible(ts)
    assert ts.devices("acme", "gw-1") == {"d1": (["climate", "power"], RECENT + S)}
