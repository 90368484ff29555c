"""Rollouts in waves: each wave starts after the one before went well; a bad wave stops it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from outpost_iot.collector._configs import ConfigInvalid, ConfigService
from outpost_iot.collector._rollouts import RolloutError, RolloutService, wave_sizes
from outpost_iot.collector.cli import main as collector_cli
from outpost_iot.collector.stores import DesiredConfigRecord
from outpost_iot.wire import ConfigReport, topics
from tests.collector._api_fixture import Api
from tests.collector._fleet_fixture import CONFIG, MINUTE, Fleet


def test_wave_sizes() -> None:
    assert wave_sizes(["1", "10%", "100%"], 10) == [1, 1, 8]
    assert wave_sizes(["1", "30%", "100%"], 10) == [1, 3, 6]
    assert wave_sizes(["2", "2"], 10) == [2, 8]  # the last wave takes the rest
    assert wave_sizes(["100%"], 3) == [3]
    assert wave_sizes(["5", "100%"], 3) == [3]
    for bad in (["0"], ["x"], ["150%"], []):
        with pytest.raises(RolloutError):
            wave_sizes(bad, 10)


def test_a_failing_second_wave_stops_the_rollout_before_the_third(fleet: Fleet) -> None:
    rid = fleet.rollouts.create(
        tenant="acme", config=CONFIG, actor="ops", waves=["1", "30%", "100%"], abort_percent=20
    )
    members = fleet.docs.rollout_members(rid)
    waves = [[m.gateway_id for m in members if m.wave == w] for w in range(3)]
    assert [len(w) for w in waves] == [1, 3, 6]
    assert fleet.published == []  # nothing is sent before the first step

    fleet.rollouts.step()  # wave 1 starts
    assert [fleet.desired(g) for g in waves[0]] == [1]
    assert all(fleet.desired(g) == 0 for g in waves[1] + waves[2])
    assert fleet.published == [topics.down_config(waves[0][0])]
    fleet.rollouts.step()  # no report yet: it waits
    assert fleet.docs.rollouts("acme", rollout_id=rid)[0].current_wave == 0

    fleet.report(waves[0][0], 1, "applied")
    fleet.rollouts.step()  # wave 1 went well: wave 2 is next
    fleet.rollouts.step()  # wave 2 starts
    assert all(fleet.desired(g) == 1 for g in waves[1])
    fleet.report(waves[1][0], 1, "applied")
    fleet.report(waves[1][1], 1, "rejected")
    fleet.report(waves[1][2], 1, "rolled_back")
    fleet.rollouts.step()
    rollout = fleet.docs.rollouts("acme", rollout_id=rid)[0]
    assert rollout.status == "aborted"
    assert "wave 2: 2 of 3 gateways failed" in rollout.reason
    for _ in range(3):
        fleet.rollouts.step()
    assert all(fleet.desired(g) == 0 for g in waves[2])  # wave 3 never started
    assert len(fleet.published) == 4


def test_silent_gateways_time_out_and_count_as_failures(fleet: Fleet) -> None:
    rid = fleet.rollouts.create(
        tenant="acme",
        config=CONFIG,
        actor="ops",
        gateway_ids=fleet.gateways[:4],
        waves=["100%"],
        abort_percent=30,
        timeout_s=60,
    )
    fleet.rollouts.step()
    for g in fleet.gateways[:3]:
        fleet.report(g, 1, "applied")
    fleet.rollouts.step()
    assert fleet.docs.rollouts("acme", rollout_id=rid)[0].status == "running"
    fleet.clock[0] += 2 * MINUTE
    fleet.rollouts.step()
    outcomes = sorted(m.outcome for m in fleet.docs.rollout_members(rid))
    assert outcomes == ["applied", "applied", "applied", "timed_out"]
    assert fleet.docs.rollouts("acme", rollout_id=rid)[0].status == "completed"  # 25 % ≤ 30 %


def test_two_replicas_stepping_one_rollout_start_each_gateway_once(fleet: Fleet) -> None:
    rid = fleet.rollouts.create(tenant="acme", config=CONFIG, actor="ops", waves=["2", "100%"])
    other = RolloutService(docs=fleet.docs, configs=fleet.configs, now_ns=lambda: fleet.clock[0])
    wave1 = [m for m in fleet.docs.rollout_members(rid) if m.wave == 0]
    # Replica one publishes the first member; replica two steps before one recorded it started.
    rollout = fleet.docs.rollouts("acme", rollout_id=rid)[0]
    fleet.configs.commit(
        DesiredConfigRecord(wave1[0].gateway_id, 1, wave1[0].issued_ns, f"rollout:{rid}", wave1[0].envelope)
    )  # fmt: skip
    other._step(rollout)
    outcomes = {m.gateway_id: m.outcome for m in fleet.docs.rollout_members(rid)}
    assert outcomes[wave1[0].gateway_id] is None  # started by the other, not "skipped"
    assert all(fleet.desired(m.gateway_id) == 1 for m in wave1)
    starts = [e for e in fleet.docs.audit_log("acme") if e.action == "rollout.wave_start"]
    assert [e.detail["gateways"] for e in starts] == [[wave1[1].gateway_id]]


def test_pause_resume_abort_and_bad_input(fleet: Fleet) -> None:
    rid = fleet.rollouts.create(tenant="acme", config=CONFIG, actor="ops", waves=["1", "100%"])
    fleet.rollouts.control("acme", rid, "pause")
    fleet.rollouts.step()
    assert fleet.published == []  # paused: no wave starts
    with pytest.raises(RolloutError, match="is paused; cannot pause"):
        fleet.rollouts.control("acme", rid, "pause")
    fleet.rollouts.control("acme", rid, "resume")
    fleet.rollouts.step()
    assert len(fleet.published) == 1
    fleet.rollouts.control("acme", rid, "abort")
    assert fleet.docs.rollouts("acme", rollout_id=rid)[0].reason == "aborted by an operator"
    with pytest.raises(RolloutError, match="no rollout"):
        fleet.rollouts.control("globex", rid, "abort")  # another tenant's
    with pytest.raises(ConfigInvalid):
        fleet.rollouts.create(
            tenant="acme",
            config={"sources": [{"type": "simulated", "interval": 0}]},
            actor="ops",
            waves=["100%"],
        )
    with pytest.raises(RolloutError, match="no gateway matches"):
        fleet.rollouts.create(
            tenant="acme", config=CONFIG, actor="ops", site="nowhere", waves=["1"]
        )


def site_device(i: int) -> dict[str, Any]:
    """Each site's own firewall: another address and community at every gateway."""
    return {
        "name": "fw",
        "profile": "pfsense-snmp",
        "target": f"snmp://10.0.{i}.1",
        "community": f"community-{i}",
    }


def test_a_patch_rollout_changes_one_thing_on_gateways_whose_devices_differ(fleet: Fleet) -> None:
    for i, gw in enumerate(fleet.gateways[:3]):
        fleet.configs.set_desired(gw, {"devices": [site_device(i)]}, "ops")
    rid = fleet.rollouts.create(
        tenant="acme",
        patch={"devices": [{"name": "fw", "interval": 120}], "log_level": "debug"},
        actor="ops",
        gateway_ids=fleet.gateways[:3],
        waves=["100%"],
    )
    fleet.rollouts.step()
    assert [m.version for m in fleet.docs.rollout_members(rid)] == [2, 2, 2]
    for i, gw in enumerate(fleet.gateways[:3]):
        config = fleet.opened(gw)
        assert config["log_level"] == "debug"
        # Its own device, its own sealed community (carried), the new interval.
        assert config["devices"] == [site_device(i) | {"interval": 120}]


def test_a_rollout_that_fails_for_some_gateways_names_them_and_keeps_nothing(
    fleet: Fleet,
) -> None:
    fleet.configs.set_desired(fleet.gateways[0], {"devices": [site_device(0)]}, "ops")
    with pytest.raises(ConfigInvalid) as caught:
        fleet.rollouts.create(
            tenant="acme",
            patch={"devices": [{"name": "fw", "interval": 120}]},
            actor="ops",
            gateway_ids=fleet.gateways[:3],
            waves=["100%"],
        )
    ((field, problem),) = caught.value.problems
    assert field == "devices"
    assert "agent.toml" in problem
    assert f"gateways: {fleet.gateways[1]}, {fleet.gateways[2]}" in problem
    assert fleet.docs.rollouts("acme") == []
    # A whole config that lacks a secret: carried where the gateway had one, named where not.
    device = {k: v for k, v in site_device(0).items() if k != "community"}
    with pytest.raises(ConfigInvalid) as caught:
        fleet.rollouts.create(
            tenant="acme",
            config={"devices": [device]},
            actor="ops",
            gateway_ids=fleet.gateways[:2],
            waves=["100%"],
        )
    ((field, problem),) = caught.value.problems
    assert "needs community" in problem
    assert f"(gateways: {fleet.gateways[1]})" in problem  # the first one has it, sealed
    with pytest.raises(RolloutError, match="either a config or a patch"):
        fleet.rollouts.create(tenant="acme", actor="ops", waves=["1"])


async def test_rollouts_through_the_api(api: Api) -> None:
    def headers(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api.tokens[token]}"}

    body = {"config": CONFIG, "waves": ["1", "100%"], "abort_above_percent": 0}
    r = await api.client.post("/api/v1/rollouts", json=body, headers=headers("operator-a"))
    assert r.status_code == 201, r.text
    rollout = r.json()
    assert rollout["status"] == "running"
    assert [w["gateways"] for w in rollout["waves"]] == [1, 1]  # acme's two gateways
    rid = rollout["id"]
    assert (
        await api.client.post("/api/v1/rollouts", json=body, headers=headers("viewer-a"))
    ).status_code == 403
    r = await api.client.get(f"/api/v1/rollouts/{rid}", headers=headers("operator-b"))
    assert r.status_code == 404  # another tenant's
    r = await api.client.post(f"/api/v1/rollouts/{rid}/pause", headers=headers("operator-a"))
    assert r.json()["status"] == "paused"
    r = await api.client.post(f"/api/v1/rollouts/{rid}/pause", headers=headers("operator-a"))
    assert r.status_code == 409
    assert r.json()["error"] == "conflict"
    r = await api.client.post(f"/api/v1/rollouts/{rid}/abort", headers=headers("operator-a"))
    assert r.json()["status"] == "aborted"
    assert r.json()["reason"] == "aborted by an operator"

    bad = {"config": {"sources": [{"type": "simulated", "interval": 0}]}, "waves": ["100%"]}
    r = await api.client.post("/api/v1/rollouts", json=bad, headers=headers("operator-a"))
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "config.sources.0.simulated.interval"
    r = await api.client.post(
        "/api/v1/rollouts", json={**body, "waves": ["ten"]}, headers=headers("operator-a")
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_waves"

    # Target by tag: operators tag a canary gateway, the rollout goes to it alone.
    a1 = api.gateways["a1"]
    r = await api.client.put(
        f"/api/v1/gateways/{a1}/tags",
        json={"tags": ["canary", "lobby"]},
        headers=headers("operator-a"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["canary", "lobby"]
    tagged = (await api.get("/api/v1/gateways", tag="canary")).json()
    assert [g["id"] for g in tagged] == [a1]
    r = await api.client.put(
        f"/api/v1/gateways/{a1}/tags", json={"tags": ["no spaces"]}, headers=headers("operator-a")
    )
    assert r.status_code == 422
    r = await api.client.post(
        "/api/v1/rollouts", json={**body, "tag": "canary"}, headers=headers("operator-a")
    )
    assert r.status_code == 201, r.text
    assert [w["gateways"] for w in r.json()["waves"]] == [1]

    log = (await api.get("/api/v1/audit", token="operator-a")).json()
    assert [e["action"] for e in log] == [
        "rollout.create",
        "gateway.tags",
        "rollout.abort",
        "rollout.pause",
        "rollout.create",
    ]


async def test_the_api_says_which_gateways_failed_and_why(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.tokens['operator-a']}"}
    a1, a2 = api.gateways["a1"], api.gateways["a2"]
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"patch": {"log_level": "debug"}, "waves": ["100%"], "abort_above_percent": 10},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["failures"] == []
    stepper = RolloutService(
        docs=api.docs, configs=ConfigService(docs=api.docs, signing_key=api.signing_key)
    )
    stepper.step()
    api.docs.save_config_report(
        a1,
        ConfigReport(
            version=1,
            status="rejected",
            applied_version=0,
            reason="invalid",
            errors=["log_level: Input should be 'info'"],
            ts=1,
        ),
    )
    api.docs.save_config_report(
        a2,
        ConfigReport(
            version=1, status="rolled_back", applied_version=0, reason="no_ack_within_grace", ts=1
        ),
    )
    stepper.step()
    r = await api.client.get(f"/api/v1/rollouts/{rid}", headers=headers)
    body = r.json()
    assert body["status"] == "aborted"
    assert sorted((f["gateway_id"], f["reason"], f["errors"]) for f in body["failures"]) == sorted(
        [
            (a1, "invalid", ["log_level: Input should be 'info'"]),
            (a2, "no_ack_within_grace", []),
        ]
    )
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"config": CONFIG, "patch": {"log_level": "debug"}, "waves": ["1"]},
        headers=headers,
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_change"


def test_the_operator_cli_creates_watches_and_controls_rollouts(
    fleet: Fleet, tmp_path: Path
) -> None:
    managed = tmp_path / "managed.json"
    managed.write_text(json.dumps(CONFIG))
    cfg = ["--config", str(fleet.config_path)]
    r = CliRunner().invoke(
        collector_cli,
        [
            "rollout",
            "create",
            *cfg,
            "--tenant",
            "acme",
            "--file",
            str(managed),
            "--gateway",
            fleet.gateways[0],
            "--gateway",
            fleet.gateways[1],
            "--waves",
            "1,100%",
        ],
    )
    assert r.exit_code == 0, r.output
    rid = r.stdout.strip()
    assert "2 gateways in waves of 1, 1" in r.stderr
    # The running collector would step it; here the test does, with the gateways' reports.
    fleet.rollouts.step()
    fleet.report(fleet.gateways[0], 1, "applied")
    fleet.rollouts.step()
    fleet.rollouts.step()
    fleet.report(fleet.gateways[1], 1, "applied")
    fleet.rollouts.step()
    r = CliRunner().invoke(collector_cli, ["rollout", "watch", *cfg, rid, "--interval", "0.2"])
    assert r.exit_code == 0, r.output
    assert "wave 1: 1 gateways, started: 1 applied" in r.stdout
    assert f"rollout {rid} completed" in r.stdout

    r = CliRunner().invoke(
        collector_cli,
        [
            "rollout",
            "create",
            *cfg,
            "--tenant",
            "acme",
            "--file",
            str(managed),
            "--timeout",
            "soon",
        ],
    )
    assert r.exit_code == 2
    assert "--timeout" in r.output
    r = CliRunner().invoke(
        collector_cli,
        [
            "rollout",
            "create",
            *cfg,
            "--tenant",
            "acme",
            "--file",
            str(managed),
            "--waves",
            "1,100%",
        ],
    )
    rid2 = r.stdout.strip()
    assert CliRunner().invoke(collector_cli, ["rollout", "pause", *cfg, rid2]).exit_code == 0
    r = CliRunner().invoke(collector_cli, ["rollout", "pause", *cfg, rid2])
    assert r.exit_code == 1
    assert "is paused; cannot pause" in r.output
    r = CliRunner().invoke(collector_cli, ["rollout", "abort", *cfg, rid2])
    assert f"rollout {rid2} aborted" in r.stdout
    r = CliRunner().invoke(collector_cli, ["rollout", "watch", *cfg, rid2, "--interval", "0.2"])
    assert r.exit_code == 1
    assert "aborted by an operator" in r.stdout
    r = CliRunner().invoke(collector_cli, ["rollout", "create", *cfg, "--tenant", "acme"])
    assert r.exit_code == 2
    assert "give either --file (a whole config) or --patch (a change)" in r.output

    log = fleet.docs.audit_log("acme")
    by_operator = [e.action for e in log if e.actor.startswith("cli:")]
    assert by_operator[:4] == ["rollout.abort", "rollout.pause", "rollout.create", "rollout.create"]
    steps = [(e.action, e.detail) for e in reversed(log) if e.actor == f"rollout:{rid}"]
    assert steps == [
        ("rollout.wave_start", {"wave": 1, "gateways": [fleet.gateways[0]]}),
        ("rollout.wave_start", {"wave": 2, "gateways": [fleet.gateways[1]]}),
        ("rollout.completed", {}),
    ]


def test_the_cli_patches_one_gateway_and_rolls_a_patch_out(fleet: Fleet, tmp_path: Path) -> None:
    cfg = ["--config", str(fleet.config_path)]
    gw0, gw1 = fleet.gateways[:2]
    for i, gw in enumerate((gw0, gw1)):
        fleet.configs.set_desired(gw, {"devices": [site_device(i)]}, "ops")
    change = tmp_path / "change.toml"
    change.write_text('[[devices]]\nname = "fw"\ncommunity = "rotated"\n')
    # One gateway (the broker is not running: stored, and published by the collector later).
    r = CliRunner().invoke(collector_cli, ["config", "patch", *cfg, gw0, "--file", str(change)])
    assert "cannot publish" in r.output
    assert fleet.opened(gw0)["devices"][0]["community"] == "rotated"
    assert fleet.opened(gw1)["devices"][0]["community"] == "community-1"

    bad = tmp_path / "bad.json"
    bad.write_text('{"devices": [{"name": "fw", "interval": 0}]}')
    r = CliRunner().invoke(
        collector_cli,
        ["rollout", "create", *cfg, "--tenant", "acme", "--patch", str(bad), "--gateway", gw0],
    )
    assert r.exit_code == 1
    assert "devices.0.interval: Input should be greater than 0" in r.output

    r = CliRunner().invoke(
        collector_cli,
        [
            "rollout",
            "create",
            *cfg,
            "--tenant",
            "acme",
            "--patch",
            str(change),
            "--gateway",
            gw0,
            "--gateway",
            gw1,
            "--waves",
            "100%",
            "--device-errors-fail",
        ],
    )
    assert r.exit_code == 0, r.output
    rid = r.stdout.strip()
    fleet.rollouts.step()
    assert fleet.opened(gw1)["devices"][0]["community"] == "rotated"
    fleet.report(gw0, 3, "applied")
    fleet.docs.save_config_report(
        gw1,
        ConfigReport(
            version=2,
            status="applied",
            applied_version=2,
            reason="device_errors",
            errors=["fw: auth failed: wrong community"],
            ts=1,
        ),
    )
    fleet.rollouts.step()
    r = CliRunner().invoke(collector_cli, ["rollout", "watch", *cfg, rid, "--interval", "0.2"])
    assert r.exit_code == 1, r.output
    # It runs the new config, but its firewall refuses the new community: failed, as asked.
    assert f"  {gw1} (wave 1) failed: device_errors: fw: auth failed: wrong community" in r.stdout
    assert "1 applied, 1 failed, 0 timed out" in r.stdout
