"""The alarm role of the document store: every backend keeps one open alarm per rule and
originator, writes notifications with the change that causes them, and leases them so that
two replicas do not send one at the same time."""

from __future__ import annotations

import dataclasses
import threading

from outpost_iot.collector.stores import (
    AlarmChanges,
    AlarmClear,
    AlarmCondition,
    AlarmRecord,
    AlarmRuleRecord,
    DocumentStore,
    NotificationRecord,
    NotifyEndpointRecord,
)

S = 10**9
T = 1_800_000_000 * S


def rule(rule_id: str = "r1", tenant: str = "acme", notify: bool = True) -> AlarmRuleRecord:
    spec = {"condition": {"kind": "threshold", "measurement": "climate", "field": "celsius", "above": 8}, "scope": {}}  # fmt: skip
    return AlarmRuleRecord(rule_id, tenant, "Freezer warm", "critical", True, False, notify, spec, T, T, "token:op")  # fmt: skip


def alarm(rule_id: str = "r1", originator: str = "gw-1/device=f1", tenant: str = "acme", severity: str = "critical", at: int = T) -> AlarmRecord:  # fmt: skip
    gateway = originator.split("/")[0]
    return AlarmRecord(0, tenant, rule_id, originator, gateway, severity, "threshold", "Freezer warm", at, {"value": 9.5})  # fmt: skip


def endpoint(endpoint_id: str = "e1", tenant: str = "acme", min_severity: str = "warning") -> NotifyEndpointRecord:  # fmt: skip
    return NotifyEndpointRecord(endpoint_id, tenant, "ops", "webhook", {"url": "https://hooks.example/x"}, "s3cret", min_severity, True, T)  # fmt: skip


def test_one_open_alarm_per_rule_and_originator_and_its_notifications_once(
    docs: DocumentStore,
) -> None:
    docs.save_rule(rule())
    docs.save_endpoint(endpoint("e1"))
    docs.save_endpoint(endpoint("e2", min_severity="critical"))
    docs.save_endpoint(endpoint("e3", tenant="globex"))  # another tenant's: never told
    [(what, raised)] = docs.apply_alarms(AlarmChanges(steps=[alarm()]), T)
    assert what == "raised"
    assert raised.id > 0
    assert raised.status == "active"
    # Raised again (another replica, a batch sent again): nothing changes, nothing is sent.
    assert docs.apply_alarms(AlarmChanges(steps=[alarm(at=T + S)]), T + S) == []
    assert docs.open_alarms([("r1", "gw-1/device=f1"), ("r1", "other")]) == {("r1", "gw-1/device=f1"): raised}  # fmt: skip
    notes = docs.notifications("acme")
    assert sorted((n.endpoint_id, n.event, n.key) for n in notes) == [
        ("e1", "raised", f"alarm-{raised.id}-raised-e1"),
        ("e2", "raised", f"alarm-{raised.id}-raised-e2"),
    ]
    assert notes[0].payload["alarm"]["originator"] == "gw-1/device=f1"
    assert docs.notifications("globex") == []

    # Cleared once; then a new alarm for the same originator may be raised.
    clear = AlarmClear("r1", "gw-1/device=f1", T + 5 * S, {"value": 4.0})
    [(what, cleared)] = docs.apply_alarms(AlarmChanges(steps=[clear]), T + 5 * S)
    assert (what, cleared.id, cleared.status, cleared.details) == ("cleared", raised.id, "cleared", {"value": 4.0})  # fmt: skip
    assert docs.apply_alarms(AlarmChanges(steps=[clear]), T + 6 * S) == []
    assert len(docs.notifications("acme")) == 4
    [(_, again)] = docs.apply_alarms(AlarmChanges(steps=[alarm(at=T + 9 * S)]), T + 9 * S)
    assert again.id != raised.id
    # A minor alarm reaches only the endpoint that wants minor ones; a silent rule, none.
    docs.save_rule(rule("r2"))
    docs.apply_alarms(AlarmChanges(steps=[alarm("r2", severity="minor")]), T)
    assert {n.endpoint_id for n in docs.notifications("acme") if n.payload["alarm"]["rule_id"] == "r2"} == {"e1"}  # fmt: skip
    docs.save_rule(rule("r3", notify=False))
    docs.apply_alarms(AlarmChanges(steps=[alarm("r3")]), T)
    assert not [n for n in docs.notifications("acme") if n.payload["alarm"]["rule_id"] == "r3"]


def test_alarms_are_acknowledged_listed_counted_and_kept_per_tenant(docs: DocumentStore) -> None:
    docs.save_rule(rule())
    docs.save_rule(rule("g1", tenant="globex"))
    raised = dict(
        docs.apply_alarms(
            AlarmChanges(
                steps=[
                    alarm(originator="gw-1/device=f1"),
                    alarm(originator="gw-1/device=f2", severity="minor"),
                    alarm("g1", "gw-9", tenant="globex"),
                ]
            ),
            T,
        )
    )
    assert len(raised) == 1  # dict of ("raised", ...): the same key thrice
    first, second = docs.alarms("acme", status="open")[::-1]
    assert docs.ack_alarm("globex", first.id, "token:x", T) is None  # not theirs
    acked = docs.ack_alarm("acme", first.id, "token:op", T + S)
    assert acked is not None
    assert (acked.status, acked.acked_by) == ("acknowledged", "token:op")
    assert docs.ack_alarm("acme", first.id, "token:op", T + 2 * S) is None  # once
    assert [a.id for a in docs.alarms("acme", status="active")] == [second.id]
    assert [a.id for a in docs.alarms("acme", status="acknowledged")] == [first.id]
    assert [a.id for a in docs.alarms("acme", severity="minor")] == [second.id]
    assert [a.id for a in docs.alarms("acme", before_id=second.id)] == [first.id]
    assert [a.id for a in docs.alarms("acme", alarm_id=second.id)] == [second.id]
    [theirs] = docs.alarms("globex")
    assert docs.alarms("acme", alarm_id=theirs.id) == []
    assert docs.alarms("acme", alarm_id=2**63 - 1) == []  # the largest id a caller may give
    counts = docs.alarm_counts("acme")
    assert counts["critical"] == {"active": 0, "acknowledged": 1}
    assert counts["minor"] == {"active": 1, "acknowledged": 0}
    assert docs.alarm_summary("acme") == {"gw-1": (2, "critical")}
    assert [a.tenant for a in docs.alarms("globex")] == ["globex"]
    assert len(docs.alarms("*")) == 3
    # Deleting a rule clears its alarms (without notifying) and is per tenant.
    assert not docs.delete_rule("globex", "r1")
    assert docs.delete_rule("acme", "r1")
    assert docs.alarms("acme", status="open") == []
    assert docs.rules("acme") == []
    # Cleared alarms go with the events' retention.
    gone = docs.expire(events_before_ns=T + 10**15, quarantine_before_ns=0, audit_before_ns=0)
    assert gone["alarms"] == 2


def test_conditions_are_kept_until_stopped(docs: DocumentStore) -> None:
    key = ("r1", "gw-1/device=f1")
    docs.apply_alarms(AlarmChanges(start=[AlarmCondition(*key, T, 9.0)]), T)
    assert docs.conditions([key]) == {key: AlarmCondition(*key, T, 9.0)}
    assert docs.conditions_of(["r1"]) == [AlarmCondition(*key, T, 9.0)]
    docs.apply_alarms(AlarmChanges(start=[AlarmCondition(*key, T + S, 3.0)]), T)
    assert docs.conditions([key])[key].since_ns == T + S
    docs.apply_alarms(AlarmChanges(stop=[key]), T)
    assert docs.conditions([key]) == {}


def test_rules_are_saved_listed_and_stamped(docs: DocumentStore) -> None:
    before = docs.rules_stamp()
    docs.save_rule(rule())
    changed = dataclasses.replace(rule(), name="Freezer too warm", updated_ns=T + S)
    docs.save_rule(changed)
    assert docs.rules("acme") == [changed]
    assert docs.rules("acme", rule_id="r1") == [changed]
    assert docs.rules("globex") == []
    assert docs.rules_stamp() != before


def test_notifications_are_leased_sent_retried_and_visible_per_endpoint(
    docs: DocumentStore,
) -> None:
    docs.save_rule(rule())
    docs.save_endpoint(endpoint("e1"))
    docs.apply_alarms(AlarmChanges(steps=[alarm()]), T)
    [(note, ep)] = docs.claim_notifications(T, 30 * S, 10)
    assert (ep.id, ep.secret, note.event) == ("e1", "s3cret", "raised")
    # Leased: another replica finds nothing until the lease ends.
    assert docs.claim_notifications(T + S, 30 * S, 10) == []
    docs.notification_failed(note.id, "e1", T + 2 * S, T + 10 * S, "HTTP 500")
    [e1] = docs.endpoints("acme")
    assert (e1.failures, e1.last_error, e1.pending) == (1, "HTTP 500", 1)
    assert docs.claim_notifications(T + 5 * S, 30 * S, 10) == []  # not due yet
    [(again, _)] = docs.claim_notifications(T + 10 * S, 30 * S, 10)
    assert (again.id, again.attempts, again.key) == (note.id, 1, note.key)
    docs.notification_sent(again.id, "e1", T + 11 * S)
    [e1] = docs.endpoints("acme")
    assert (e1.failures, e1.delivered, e1.pending, e1.last_success_ns) == (0, 1, 0, T + 11 * S)
    assert docs.claim_notifications(T + 100 * S, 30 * S, 10) == []
    # A test notification; one given up stays listed with its error.
    docs.enqueue_notification(NotificationRecord(0, "acme", "e1", None, "test", "test-1", {"event": "test"}, T, next_ns=T))  # fmt: skip
    [(test, _)] = docs.claim_notifications(T + 100 * S, 30 * S, 10)
    docs.notification_failed(test.id, "e1", T + 101 * S, None, "connection refused")
    assert docs.claim_notifications(T + 10**12, 30 * S, 10) == []
    assert docs.notifications("acme", endpoint_id="e1")[0].last_error == "connection refused"
    assert docs.delete_endpoint("acme", "e1")
    assert docs.endpoints("acme") == []


def test_two_replicas_claiming_at_once_never_take_the_same_notification(
    docs: DocumentStore,
) -> None:
    docs.save_rule(rule())
    docs.save_endpoint(endpoint("e1"))
    docs.apply_alarms(
        AlarmChanges(steps=[alarm(originator=f"gw-1/device=d{i}") for i in range(40)]), T
    )
    taken: list[list[int]] = [[], []]

    def claim(i: int) -> None:
        for _ in range(20):
            taken[i] += [n.id for n, _ in docs.claim_notifications(T, 60 * S, 3)]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken[0] + taken[1]) == sorted({*taken[0], *taken[1]})
    assert len(taken[0]) + len(taken[1]) == 40
