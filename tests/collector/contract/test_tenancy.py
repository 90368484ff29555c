"""Every tenant-scoped read of the document store, one parametrized test: asked as one tenant, a
store never answers with another's records (each read is checked to answer the other tenant
with its own, so a read that answers nothing at all does not pass)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from outpost_iot.collector.stores import (
    AlarmChanges,
    AuditEntry,
    DocumentStore,
    EnrollmentTokenRecord,
    QuarantineEntry,
    RolloutMember,
    RolloutRecord,
)
from outpost_iot.wire import Event, GatewayState
from tests.collector.contract.test_alarm_store import alarm, endpoint, rule
from tests.collector.contract.test_documents import S, T, enroll

TENANTS = ("acme", "globex")
GW = {"acme": "gw-acme", "globex": "gw-globex"}


def populate(docs: DocumentStore) -> None:
    """The same kinds of record for each tenant, named after it."""
    for tenant, gw in GW.items():
        enroll(docs, gw, tenant=tenant)  # a gateway, its certificate, a used token
        docs.create_enrollment_token(
            EnrollmentTokenRecord(
                id=f"tok-spare-{tenant}", hash=f"h-spare-{tenant}", tenant=tenant, site="hq",
                created_ns=T, expires_ns=T + 3600 * S, uses_total=1, uses_left=1,
            )
        )  # fmt: skip
        docs.record(
            [],
            [(gw, Event(id=f"ev-{tenant}", type="motion", ts=T, source=f"cam-{tenant}", body={}))],
        )
        docs.record(
            [],
            [
                (
                    gw,
                    Event(
                        id=f"av-{tenant}",
                        type="availability",
                        ts=T,
                        source=f"dev-{tenant}",
                        body={"state": "online"},
                    ),
                )
            ],
        )
        docs.save_state(
            gw, GatewayState(state="online", ts=T, boot_id="b", agent_version="1", stream="s"), T
        )
        docs.quarantine(QuarantineEntry(T, f"t/{tenant}", "malformed", tenant, b"x", gw))
        docs.audit(AuditEntry(T, f"token:{tenant}", tenant, "config.set", gw, "cli"))
        docs.create_rollout(
            RolloutRecord(id=f"r-{tenant}", tenant=tenant, actor="ops", created_ns=T,
                          status="running", waves=1, abort_percent=20.0, timeout_s=60.0,
                          device_errors_fail=False),
            [RolloutMember(gateway_id=gw, wave=0, version=1, issued_ns=T, envelope=b"e")],
        )  # fmt: skip
        docs.save_rule(rule(f"rule-{tenant}", tenant=tenant))
        docs.save_endpoint(endpoint(f"ep-{tenant}", tenant=tenant))
        docs.apply_alarms(
            AlarmChanges(steps=[alarm(f"rule-{tenant}", f"{gw}/device=d", tenant=tenant)]), T
        )


# (read, what it answers as a tenant: the names of the tenants its records belong to)
READS: dict[str, Callable[[DocumentStore, str], set[str]]] = {
    "gateways": lambda d, t: {g.id.removeprefix("gw-") for g in d.gateways(t)},
    "enrollment_tokens": lambda d, t: {r.tenant for r in d.enrollment_tokens(t)},
    "find_events": lambda d, t: {e.id.split("-")[1] for _, e in d.find_events(t)},
    "find_events of a gateway": lambda d, t: {
        e.id.split("-")[1] for g in GW.values() for _, e in d.find_events(t, gateway_id=g)
    },
    "availability": lambda d, t: {
        dev.removeprefix("dev-") for g in GW.values() for dev in d.availability(t, g)
    },
    "quarantined": lambda d, t: {q.detail for q in d.quarantined(tenant=t)},
    "audit_log": lambda d, t: {e.tenant for e in d.audit_log(t)},
    "rollouts": lambda d, t: {r.tenant for r in d.rollouts(t)},
    "rollouts by id": lambda d, t: {
        r.tenant for rid in ("r-acme", "r-globex") for r in d.rollouts(t, rollout_id=rid)
    },
    "rules": lambda d, t: {r.tenant for r in d.rules(t)},
    "rules by id": lambda d, t: {
        r.tenant for rid in ("rule-acme", "rule-globex") for r in d.rules(t, rule_id=rid)
    },
    "alarms": lambda d, t: {a.tenant for a in d.alarms(t)},
    "alarm_counts": lambda d, t: {t} if d.alarm_counts(t)["critical"]["active"] == 1 else set(),
    "alarm_summary": lambda d, t: {g.removeprefix("gw-") for g in d.alarm_summary(t)},
    "endpoints": lambda d, t: {e.tenant for e in d.endpoints(t)},
    "endpoints by id": lambda d, t: {
        e.tenant for eid in ("ep-acme", "ep-globex") for e in d.endpoints(t, endpoint_id=eid)
    },
    "notifications": lambda d, t: {n.tenant for n in d.notifications(t)},
}


@pytest.mark.parametrize("read", sorted(READS))
def test_a_tenant_reads_only_its_own(docs: DocumentStore, read: str) -> None:
    populate(docs)
    for tenant in TENANTS:
        assert READS[read](docs, tenant) == {tenant}, f"{read} as {tenant}"


def test_revoking_another_tenants_token_does_nothing(docs: DocumentStore) -> None:
    populate(docs)
    assert not docs.revoke_enrollment_token("tok-spare-globex", tenant="acme")
    (spare,) = [t for t in docs.enrollment_tokens("globex") if t.id == "tok-spare-globex"]
    assert not spare.revoked
    assert docs.revoke_enrollment_token("tok-spare-globex", tenant="globex")


def test_another_tenants_alarms_rules_and_endpoints_cannot_be_changed(
    docs: DocumentStore,
) -> None:
    populate(docs)
    [theirs] = docs.alarms("globex")
    assert docs.ack_alarm("acme", theirs.id, "token:acme", T) is None
    assert not docs.delete_rule("acme", "rule-globex")
    assert not docs.delete_endpoint("acme", "ep-globex")
    assert docs.alarms("globex")[0].status == "active"
    assert len(docs.rules("globex")) == 1
    assert len(docs.endpoints("globex")) == 1


def test_every_tenant_scoped_read_of_the_store_is_in_this_test() -> None:
    """A new read that takes a tenant must be added to READS (or here, with the reason)."""
    import inspect

    from outpost_iot.collector.stores import _base

    takes_tenant = {
        name
        for name, fn in inspect.getmembers(_base.DocumentStore, inspect.isfunction)
        if "tenant" in inspect.signature(fn).parameters
        and not name.startswith(("create_", "save_"))
    }
    changes = {"revoke_enrollment_token", "ack_alarm", "delete_rule", "delete_endpoint"}
    covered = {r.split(" ")[0] for r in READS} | changes
    assert takes_tenant <= covered, (
        f"tenant-scoped reads without a tenancy test: {takes_tenant - covered}"
    )
