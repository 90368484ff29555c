"""`outpost-collector alarm-rule` and `alarm`: rules made from a file (problems named by
field), listed and deleted; alarms listed and acknowledged; each change audited."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from outpost_iot.collector.cli import main as collector_cli
from outpost_iot.collector.stores import AlarmChanges, AlarmRecord, SqliteDocumentStore
from tests.collector.test_export import stores_only_config


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(collector_cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_rules_are_made_listed_and_deleted_and_alarms_acknowledged(tmp_path: Path) -> None:
    cfg = str(stores_only_config(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "condition": {"kind": "threshold", "measurement": "m", "field": "f", "above": "hot"}}))  # fmt: skip
    code, _, err = run("alarm-rule", "create", "--config", cfg, "--tenant", "acme", "--file", str(bad))  # fmt: skip
    assert code != 0
    assert "condition.threshold.above: Input should be a valid number" in err
    good = tmp_path / "rule.toml"
    good.write_text('name = "Freezer warm"\nseverity = "critical"\n[condition]\nkind = "threshold"\nmeasurement = "sensor"\nfield = "temperature_c"\nabove = -15\n')  # fmt: skip
    code, out, err = run("alarm-rule", "create", "--config", cfg, "--tenant", "acme", "--file", str(good))  # fmt: skip
    assert code == 0, err
    rule_id = out.strip()
    code, out, _ = run("alarm-rule", "list", "--config", cfg)
    assert rule_id in out
    assert "Freezer warm" in out
    docs = SqliteDocumentStore(tmp_path / "documents.db")
    try:
        [(_, alarm)] = docs.apply_alarms(AlarmChanges([AlarmRecord(0, "acme", rule_id, "gw/device=f", "gw", "critical", "threshold", "Freezer warm", 10**18, {})]), 10**18)  # fmt: skip
        code, out, _ = run("alarm", "list", "--config", cfg)
        assert f"{alarm.id} " in out
        assert "active" in out
        assert run("alarm", "ack", "--config", cfg, str(alarm.id))[0] == 0
        assert docs.alarms("acme")[0].status == "acknowledged"
        code, _, err = run("alarm", "ack", "--config", cfg, str(alarm.id))
        assert code != 0
        assert "not open and unacknowledged" in err
        assert run("alarm-rule", "delete", "--config", cfg, rule_id)[0] == 0
        assert docs.rules("acme") == []
        actions = [e.action for e in docs.audit_log("acme")]
        assert actions[::-1] == ["alarm_rule.create", "alarm.acknowledge", "alarm_rule.delete"]
        assert docs.audit_log("acme")[0].actor.startswith("cli:")
    finally:
        docs.close()
