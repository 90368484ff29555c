"""The document store contract: every backend answers the same way (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from outpost_iot.collector._exceptions import StoreError, TokenRefused
from outpost_iot.collector.stores import (
    ApiTokenRecord,
    AuditEntry,
    BatchRecord,
    CertificateRecord,
    DesiredConfigRecord,
    DocumentStore,
    EnrollmentTokenRecord,
    GatewayRegistration,
    QuarantineEntry,
    RolloutMember,
    RolloutRecord,
    SessionRecord,
)
from outpost_iot.wire import ConfigReport, Event, GatewayState

S = 10**9
T = 1_800_000_000 * S


def enroll(
    docs: DocumentStore, gateway_id: str, tenant: str = "acme", site: str = "hq", uses: int = 1
) -> GatewayRegistration:
    token = EnrollmentTokenRecord(
        id=f"tok-{gateway_id}",
        hash=f"hash-{gateway_id}",
        tenant=tenant,
        site=site,
        created_ns=T,
        expires_ns=T + 3600 * S,
        uses_total=uses,
        uses_left=uses,
    )
    docs.create_enrollment_token(token)
    return docs.redeem_enrollment_token(token.hash, T + S, lambda _t: registration(gateway_id))


def registration(gateway_id: str, serial: str = "") -> GatewayRegistration:
    return GatewayRegistration(
        gateway_id=gateway_id,
        hardware={"board": "rpi4", "cores": 4},
        certificate=CertificateRecord(
            serial=serial or f"{gateway_id}-01",
            gateway_id=gateway_id,
            issued_ns=T,
            not_after_ns=T + 90 * 86400 * S,
            public_key_pem=f"PEM of {gateway_id}",
        ),
        certificate_pem=b"-----BEGIN CERTIFICATE-----",
    )


def test_batches_are_recorded_once_and_pruned_by_age(docs: DocumentStore) -> None:
    b1 = BatchRecord("gw-1", "s1", 1, 100, T)
    assert not docs.seen("gw-1", "s1", 1)
    docs.record([b1, BatchRecord("gw-1", "s1", 2, 50, T + S)], [])
    docs.record([b1], [])  # a retransmit recorded again: no error, still once
    assert docs.seen("gw-1", "s1", 1)
    assert docs.seen("gw-1", "s1", 2)
    assert not docs.seen("gw-1", "s2", 1)  # another stream (a re-created buffer)
    assert not docs.seen("gw-2", "s1", 1)
    gateway = docs.gateway("gw-1")
    assert gateway is not None
    assert gateway.last_seen_ns == T + S
    docs.record([BatchRecord("gw-1", "s1", 3, 1, T - 10 * S)], [])  # late: last seen stays
    assert docs.gateway("gw-1").last_seen_ns == T + S  # type: ignore[union-attr]
    assert docs.prune_seen(T + S) == 2  # seq 1 and the late seq 3
    assert not docs.seen("gw-1", "s1", 1)
    assert docs.seen("gw-1", "s1", 2)


def test_events_are_stored_once_found_by_filters_and_paged(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    enroll(docs, "gw-b", tenant="globex")
    events = [
        (
            "gw-a",
            Event(id=f"e{i}", type="motion", ts=T + i * S, source=f"cam{i % 2}", body={"i": i}),
        )
        for i in range(5)
    ] + [("gw-b", Event(id="x", type="motion", ts=T, source="cam0", body={"secret": "globex"}))]
    docs.record([], events)
    docs.record([], events[:2])  # redelivered: not twice
    assert [e.id for e in docs.events("gw-a")] == ["e0", "e1", "e2", "e3", "e4"]
    assert docs.events("gw-a")[2].body == {"i": 2}
    found = docs.find_events("acme", source="cam0")
    assert [(gw, e.id) for gw, e in found] == [("gw-a", "e0"), ("gw-a", "e2"), ("gw-a", "e4")]
    assert docs.find_events("acme", gateway_id="gw-b") == []  # another tenant's gateway
    everyone = docs.find_events("*", start_ns=T, end_ns=T + S)
    assert sorted(gw for gw, _ in everyone) == ["gw-a", "gw-b"]
    pages: list[str] = []
    after = None
    while True:
        page = docs.find_events("acme", limit=2, after=after)
        if not page:
            break
        pages += [e.id for _, e in page]
        gw, last = page[-1]
        after = (last.ts, gw, last.id)
    assert pages == ["e0", "e1", "e2", "e3", "e4"]


def test_availability_is_the_last_state_of_each_device(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    docs.record(
        [],
        [
            ("gw-a", Event(id="1", type="availability", ts=T, source="fw", body={"state": "online"})),
            ("gw-a", Event(id="2", type="availability", ts=T + 9 * S, source="fw", body={"state": "offline"})),
            ("gw-a", Event(id="3", type="availability", ts=T + 5 * S, source="ap", body={"state": "online"})),
            ("gw-a", Event(id="4", type="motion", ts=T + 20 * S, source="fw", body={"state": "x"})),
        ],
    )  # fmt: skip
    assert docs.availability("acme", "gw-a") == {
        "fw": ("offline", T + 9 * S),
        "ap": ("online", T + 5 * S),
    }
    assert docs.availability("globex", "gw-a") == {}


def test_quarantine_keeps_raw_bytes_filters_by_tenant_and_records_replays(
    docs: DocumentStore,
) -> None:
    enroll(docs, "gw-a")
    enroll(docs, "gw-b", tenant="globex")
    raw = bytes(range(256))  # not text: kept as it came
    ids = [
        docs.quarantine(QuarantineEntry(T, "t/a", "malformed", "bad zlib", raw, "gw-a", {"seq": "1"})),
        docs.quarantine(QuarantineEntry(T + S, "t/a", "oversized", "too big", b"{}", "gw-a")),
        docs.quarantine(QuarantineEntry(T + 2 * S, "t/b", "malformed", "x", b"b", "gw-b")),
        docs.quarantine(QuarantineEntry(T + 3 * S, "bad/topic", "bad_topic", "?", b"?", "")),
    ]  # fmt: skip
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    newest_first = docs.quarantined()
    assert [q.id for q in newest_first] == ids[::-1]
    assert [q.id for q in docs.quarantined(tenant="acme")] == [ids[1], ids[0]]
    (first,) = docs.quarantined(entry_id=ids[0])
    assert (first.raw, first.properties, first.reason) == (raw, {"seq": "1"}, "malformed")
    assert [q.id for q in docs.quarantined(reason="malformed")] == [ids[2], ids[0]]
    assert [q.id for q in docs.quarantined(gateway_id="gw-a", before_id=ids[1])] == [ids[0]]
    assert [q.id for q in docs.quarantined(limit=1)] == [ids[3]]
    docs.mark_replayed(ids[0], T + 60 * S, "stored")
    (replayed,) = docs.quarantined(entry_id=ids[0])
    assert (replayed.replayed_ns, replayed.replay_result) == (T + 60 * S, "stored")


def test_expiry_deletes_only_what_is_older_than_each_horizon(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    for i, age in enumerate((100, 10, 1)):
        ts = T - age * 86400 * S
        docs.record([], [("gw-a", Event(id=f"e{i}", type="motion", ts=ts, body={}))])
        docs.quarantine(QuarantineEntry(ts, "t", "malformed", "", b"x", "gw-a"))
        docs.audit(AuditEntry(ts, "cli:ops", "acme", "gateway.decommission", "gw-a", "cli"))
    gone = docs.expire(
        events_before_ns=T - 90 * 86400 * S,
        quarantine_before_ns=T - 30 * 86400 * S,
        audit_before_ns=T - 5 * 86400 * S,
    )
    assert gone == {
        "events": 1,
        "quarantined": 1,
        "audit_records": 2,
        "alarms": 0,
        "notifications": 0,
    }
    assert [e.id for e in docs.events("gw-a")] == ["e1", "e2"]
    assert len(docs.quarantined()) == 2
    assert len(docs.audit_log("*")) == 1


def test_the_audit_log_is_per_tenant_newest_first_and_paged(docs: DocumentStore) -> None:
    for i in range(5):
        docs.audit(
            AuditEntry(T + i, f"token:{i}", "acme" if i % 2 == 0 else "globex", "config.set",
                       f"gw-{i}", "10.0.0.1", {"version": i, "nested": {"ok": True}})
        )  # fmt: skip
    acme = docs.audit_log("acme")
    assert [e.target for e in acme] == ["gw-4", "gw-2", "gw-0"]
    assert acme[0].detail == {"version": 4, "nested": {"ok": True}}
    assert acme[0].id is not None
    older = docs.audit_log("acme", before_id=acme[0].id, limit=1)
    assert [e.target for e in older] == ["gw-2"]
    assert len(docs.audit_log("*")) == 5


def test_gateway_state_clock_and_boot_offsets(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    state = GatewayState(
        state="online",
        ts=T,
        boot_id="b1",
        agent_version="0.1.0",
        stream="s1",
        backlog_readings=20,
        drops={"disk_full": 3},
    )
    docs.save_state("gw-a", state, T + 5 * S)
    docs.save_state("gw-a", state.model_copy(update={"state": "offline"}), T + 2 * S)  # older
    record = docs.gateway("gw-a")
    assert record is not None
    assert record.state == "offline"
    assert record.last_seen_ns == T + 5 * S  # never goes back
    assert record.status["drops"] == {"disk_full": 3}
    assert record.status["backlog_readings"] == 20
    docs.set_clock("gw-a", 3600.5, True)
    record = docs.gateway("gw-a")
    assert (record.clock_skew_s, record.clock_flagged) == (3600.5, True)  # type: ignore[union-attr]
    assert docs.boot_offset("gw-a", "b1") is None
    docs.set_boot_offset("gw-a", "b1", -5 * S)
    docs.set_boot_offset("gw-a", "b1", -7 * S)  # replaced
    assert docs.boot_offset("gw-a", "b1") == -7 * S
    assert docs.gateway("nobody") is None


def test_enrollment_tokens_are_spent_atomically_and_refused_with_reasons(
    docs: DocumentStore,
) -> None:
    reg = enroll(docs, "gw-a", uses=2)
    assert reg.gateway_id == "gw-a"
    (token,) = docs.enrollment_tokens("acme")
    assert token.uses_left == 1
    assert docs.gateway_tenant("gw-a") == "acme"
    assert docs.gateway_exists("gw-a")
    (g,) = docs.gateways("acme")
    assert (g.site, g.hardware, g.tags) == ("hq", {"board": "rpi4", "cores": 4}, [])

    def boom(_t: EnrollmentTokenRecord) -> GatewayRegistration:
        raise RuntimeError("the CA is unavailable")

    with pytest.raises(RuntimeError):
        docs.redeem_enrollment_token(token.hash, T + S, boom)
    assert docs.enrollment_tokens("acme")[0].uses_left == 1  # nothing spent
    docs.redeem_enrollment_token(token.hash, T + S, lambda _t: registration("gw-b"))
    with pytest.raises(TokenRefused) as caught:
        docs.redeem_enrollment_token(token.hash, T + S, lambda _t: registration("gw-c"))
    assert caught.value.code == "used_up"
    with pytest.raises(TokenRefused) as caught:
        docs.redeem_enrollment_token("nope", T, lambda _t: registration("gw-c"))
    assert caught.value.code == "unknown"
    late = EnrollmentTokenRecord("t2", "h2", "acme", "hq", T, T + S, 1, 1)
    docs.create_enrollment_token(late)
    with pytest.raises(TokenRefused) as caught:
        docs.redeem_enrollment_token("h2", T + 2 * S, lambda _t: registration("gw-c"))
    assert caught.value.code == "expired"
    assert not docs.revoke_enrollment_token("t2", tenant="globex")  # not theirs
    assert docs.revoke_enrollment_token("t2", tenant="acme")
    with pytest.raises(TokenRefused) as caught:
        docs.redeem_enrollment_token("h2", T, lambda _t: registration("gw-c"))
    assert caught.value.code == "revoked"
    assert not docs.gateway_exists("gw-c")


def test_two_replicas_cannot_both_spend_the_last_use(docs: DocumentStore) -> None:
    docs.create_enrollment_token(EnrollmentTokenRecord("t", "h", "acme", "hq", T, T + 60 * S, 1, 1))
    barrier = threading.Barrier(2)
    results: list[str] = []

    def register(name: str) -> Any:
        def inner(_t: EnrollmentTokenRecord) -> GatewayRegistration:
            return registration(name)

        return inner

    def redeem(name: str) -> None:
        barrier.wait()
        try:
            docs.redeem_enrollment_token("h", T, register(name))
            results.append("enrolled")
        except TokenRefused as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=redeem, args=(f"gw-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["enrolled", "used_up"]
    assert len(docs.gateways("acme")) == 1


def test_certificates_renewal_and_decommissioning(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    assert docs.gateway_public_key("gw-a") == "PEM of gw-a"
    renewed = CertificateRecord("gw-a-02", "gw-a", T + 60 * S, T + 200 * 86400 * S, None, "PEM 2")
    docs.record_certificate(renewed)
    assert docs.gateway_public_key("gw-a") == "PEM 2"  # the newest
    cert = docs.certificate("gw-a-02")
    assert cert is not None
    assert (cert.gateway_id, cert.not_after_ns, cert.revoked_ns) == (
        "gw-a",
        renewed.not_after_ns,
        None,
    )
    (g,) = docs.gateways()
    assert g.cert_not_after_ns == renewed.not_after_ns
    assert docs.revoke_gateway("gw-a", T + 100 * S) == 2
    assert docs.revoke_gateway("gw-a", T + 200 * S) == 0  # already
    assert sorted(docs.revoked_certificates()) == [
        ("gw-a-01", T + 100 * S),
        ("gw-a-02", T + 100 * S),
    ]
    assert docs.revoked_gateways() == {"gw-a"}
    assert docs.gateways()[0].revoked_ns == T + 100 * S
    assert docs.gateway_public_key("gw-a") is None  # no key to seal to any more
    assert docs.certificate("none") is None


def test_tags_desired_configs_and_reports(docs: DocumentStore) -> None:
    enroll(docs, "gw-a")
    enroll(docs, "gw-b", tenant="globex")
    docs.set_gateway_tags("gw-a", ["lobby", "canary", "lobby"])
    assert docs.gateways("acme")[0].tags == ["canary", "lobby"]
    assert [g.id for g in docs.gateways("globex")] == ["gw-b"]
    assert [g.id for g in docs.gateways("*")] == ["gw-a", "gw-b"]
    for v in (1, 2, 3):
        docs.add_desired_config(DesiredConfigRecord("gw-a", v, T + v, "ops", b"\x00env%d" % v))
    with pytest.raises(StoreError):
        docs.add_desired_config(DesiredConfigRecord("gw-a", 2, T, "other", b"x"))  # taken
    assert [r.version for r in docs.desired_configs("gw-a", limit=2)] == [3, 2]
    assert docs.desired_configs("gw-a")[0].envelope == b"\x00env3"
    assert docs.config_report("gw-a") is None
    report = ConfigReport(
        version=3, status="rejected", applied_version=2, reason="invalid", errors=["a: b"], ts=T
    )
    docs.save_config_report("gw-a", report)
    docs.save_config_report("gw-a", report.model_copy(update={"status": "applied", "applied_version": 3, "errors": []}))  # fmt: skip
    got = docs.config_report("gw-a")
    assert got is not None
    assert (got.status, got.applied_version, got.errors) == ("applied", 3, [])
    (g,) = docs.gateways("acme")
    assert (g.config_applied, g.config_desired) == (3, 3)


def test_rollouts_and_their_members(docs: DocumentStore) -> None:
    docs.create_rollout(
        RolloutRecord(
            id="r1",
            tenant="acme",
            actor="ops",
            created_ns=T,
            status="running",
            waves=2,
            abort_percent=20.0,
            timeout_s=600.0,
            device_errors_fail=True,
        ),
        [
            RolloutMember(gateway_id=gw, wave=w, version=4, issued_ns=T,
                          envelope=b"env-" + gw.encode())
            for gw, w in (("gw-b", 0), ("gw-a", 1), ("gw-c", 1))
        ],
    )  # fmt: skip
    (r,) = docs.rollouts("acme")
    assert (r.status, r.current_wave, r.waves, r.device_errors_fail) == (
        "running",
        0,
        2,
        True,
    )
    assert docs.rollouts("globex") == []
    assert docs.rollouts("*", status="paused") == []
    members = docs.rollout_members("r1")
    assert [(m.gateway_id, m.wave) for m in members] == [
        ("gw-b", 0),
        ("gw-a", 1),
        ("gw-c", 1),
    ]
    assert members[0].envelope == b"env-gw-b"
    assert members[0].started_ns is None
    docs.update_rollout_member("r1", "gw-b", started_ns=T + S)
    docs.update_rollout_member("r1", "gw-b", outcome="applied")  # started_ns kept
    m = docs.rollout_members("r1")[0]
    assert (m.started_ns, m.outcome) == (T + S, "applied")
    docs.update_rollout("r1", current_wave=1)
    docs.update_rollout("r1", status="aborted", reason="wave 2: 2 of 2 failed")
    (r,) = docs.rollouts("acme", rollout_id="r1")
    assert (r.status, r.current_wave, r.reason) == ("aborted", 1, "wave 2: 2 of 2 failed")


def test_api_tokens(docs: DocumentStore) -> None:
    docs.create_api_token(ApiTokenRecord("t1", "hash1", "acme", "operator", "laptop", T))
    token = docs.api_token("hash1")
    assert token is not None
    assert (token.id, token.tenant, token.role, token.revoked_ns) == (
        "t1",
        "acme",
        "operator",
        None,
    )
    assert docs.api_token("other") is None
    assert docs.revoke_api_token("t1", T + S)
    assert not docs.revoke_api_token("t1", T + 2 * S)  # once
    assert docs.api_token("hash1").revoked_ns == T + S  # type: ignore[union-attr]


def test_sessions_last_until_they_expire_or_their_token_is_revoked(docs: DocumentStore) -> None:
    docs.create_api_token(ApiTokenRecord("t1", "hash1", "acme", "viewer", "laptop", T))
    docs.create_api_token(ApiTokenRecord("t2", "hash2", "globex", "operator", "phone", T))
    docs.create_session(
        SessionRecord(hash="s1", token_id="t1", created_ns=T, expires_ns=T + 60 * S, csrf="c1")
    )
    docs.create_session(
        SessionRecord(hash="s2", token_id="t2", created_ns=T, expires_ns=T + 60 * S, csrf="c2")
    )
    found = docs.session("s1", T + S)
    assert found is not None
    session, token = found
    assert (session.token_id, session.csrf, session.expires_ns) == ("t1", "c1", T + 60 * S)
    assert (token.id, token.tenant, token.role) == ("t1", "acme", "viewer")
    assert docs.session("s1", T + 60 * S) is None  # expired
    assert docs.session("nope", T) is None
    assert docs.revoke_api_token("t2", T + S)
    assert docs.session("s2", T + 2 * S) is None  # its token was revoked
    assert docs.delete_session("s1")
    assert not docs.delete_session("s1")
    assert docs.session("s1", T + S) is None
    docs.create_session(
        SessionRecord(hash="s3", token_id="t1", created_ns=T, expires_ns=T + 10 * S, csrf="c3")
    )
    assert docs.expire_sessions(T + 5 * S) == 1  # s2, whose token is revoked
    assert docs.session("s3", T + 6 * S) is not None
    assert docs.expire_sessions(T + 10 * S) == 1
    assert docs.session("s3", T + 6 * S) is None


def test_ping(docs: DocumentStore) -> None:
    docs.ping()
