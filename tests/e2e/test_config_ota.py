"""Config over the air with a real Mosquitto, the real collector and a real enrolled agent."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from outpost_iot.dev._processes import free_port, spawn, stop
from outpost_iot.wire import topics
from tests._wait import wait_until
from tests.e2e._harness import Harness, readings_dropped
from tests.e2e.test_protection import Client
from tests.provisioning.test_enrollment import (
    _api_up,
    collector,
    enroll,
    gateway_id_of,
    new_token,
    trust,
    tune,
    url,
)

pytestmark = [pytest.mark.broker]
SECRET = "pf-api-key-never-in-clear-123"


@pytest.fixture
def site(harness: Harness) -> Iterator[dict[str, Any]]:
    """A collector with its API, and one enrolled agent running with a simulated source."""
    harness.api_port = free_port()
    harness.crl_reload_command = f"kill -HUP {harness.broker.pid}"
    harness.start_collector()
    wait_until(lambda: _api_up(harness), timeout=15, what="the collector's API")
    result = enroll(harness, new_token(harness), "ota")
    assert result.exit_code == 0, result.output
    gw = gateway_id_of(harness, "ota")
    config = harness.root / "ota" / "agent.toml"
    tune(config, uplink="config_grace_s = 6")
    with config.open("a") as f:
        f.write('\n[[sources]]\ntype = "simulated"\nname = "base"\ninterval = 0.5\ndevices = 1\n')
    token = collector(
        harness, "api-token", "create", "--tenant", "acme", "--role", "operator", "--name", "t"
    ).split()[0]
    log = harness.root / "ota-agent.log"
    agent = spawn(["outpost_iot.agent.cli", "run", "--config", str(config)], log=log)
    try:
        yield {"h": harness, "gw": gw, "config": config, "token": token, "log": log}
    finally:
        stop(agent)


def api(s: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=url(s["h"]),
        verify=trust(s["h"]),
        headers={"Authorization": f"Bearer {s['token']}"},
        timeout=10,
    )


def devices_seen(s: dict[str, Any], since_ns: int) -> set[str]:
    with sqlite3.connect(s["h"].data / "timeseries.db") as db:
        rows = db.execute(
            "SELECT DISTINCT json_extract(s.tags, '$.device') FROM series s JOIN points p"
            " ON p.series_id = s.id WHERE json_extract(s.tags, '$.gateway') = ? AND p.ts >= ?",
            (s["gw"], since_ns),
        ).fetchall()
    return {r[0] for r in rows}


def reported(s: dict[str, Any]) -> dict[str, Any] | None:
    with api(s) as c:
        state = c.get(f"/api/v1/gateways/{s['gw']}/config").json()
    return state.get("reported")


def wait_report(s: dict[str, Any], **want: Any) -> dict[str, Any]:
    def ok() -> bool:
        r = reported(s)
        return r is not None and all(r.get(k) == v for k, v in want.items())

    wait_until(ok, timeout=45, what=f"a config report {want}", seen=lambda: reported(s))
    report = reported(s)
    assert report is not None
    return report


def put(s: dict[str, Any], config: dict[str, Any]) -> int:
    with api(s) as c:
        r = c.put(f"/api/v1/gateways/{s['gw']}/config", json={"config": config})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def retained(s: dict[str, Any]) -> bytes:
    """The retained desired config, read by a plain subscriber (the collector's identity)."""
    files = s["h"].broker.files
    watcher = Client(s["h"].broker, cert=files.collector_cert, key=files.collector_key)
    watcher.connect()
    try:
        watcher.c.subscribe(topics.down_config(s["gw"]), qos=1)
        wait_until(lambda: bool(watcher.messages), timeout=10, what="the retained config")
        return watcher.messages[-1][2]
    finally:
        watcher.close()


def publish_retained(s: dict[str, Any], payload: bytes) -> None:
    files = s["h"].broker.files
    sender = Client(s["h"].broker, cert=files.collector_cert, key=files.collector_key)
    sender.connect()
    try:
        sender.c.publish(topics.down_config(s["gw"]), payload, qos=1, retain=True).wait_for_publish(
            5
        )
    finally:
        sender.close()


def status(s: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost_iot.agent.cli",
            "status",
            "--config",
            str(s["config"]),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_a_config_change_is_applied_and_bad_envelopes_are_refused(site: dict[str, Any]) -> None:
    s = site
    wait_until(lambda: "base-1" in devices_seen(s, 0), timeout=30, what="readings before")

    # 1. A change reaches the gateway and is applied: a second simulated source, a device with
    #    a secret (an HTTP device that does not exist: the config is valid, the device is down).
    v1 = put(
        s,
        {
            "sources": [{"type": "simulated", "name": "ota", "interval": 0.5, "devices": 2}],
            "devices": [
                {
                    "name": "fw-rest",
                    "profile": "pfsense-rest",
                    "target": f"http://127.0.0.1:{free_port()}",
                    "api_key": SECRET,
                }
            ],
        },
    )
    report = wait_report(s, version=v1, status="applied")
    assert report["applied_version"] == v1
    # Applied, and the device that does not answer is reported in its own words.
    assert report["reason"] == "device_errors"
    assert any(e.startswith("fw-rest: unreachable: cannot connect") for e in report["errors"])
    since = time.time_ns()
    wait_until(lambda: {"ota-1", "ota-2"} <= devices_seen(s, since), timeout=30, what="new source")
    assert "base-1" not in devices_seen(s, since + 2 * 10**9)  # the managed sources replaced it

    # 2. The secret is sealed: a plain subscriber of the retained message never sees it.
    envelope = retained(s)
    assert SECRET.encode() not in envelope
    assert orjson.loads(envelope)["version"] == v1
    assert SECRET.encode() not in s["log"].read_bytes()

    # 3. A tampered envelope (version bumped, signature kept) is refused and reported.
    doc = orjson.loads(envelope)
    tampered = {**doc, "version": v1 + 10, "config": {**doc["config"], "sources": []}}
    publish_retained(s, orjson.dumps(tampered))
    report = wait_report(s, version=v1 + 10, status="rejected")
    assert report["reason"] == "bad_signature"
    assert report["applied_version"] == v1

    # 4. A replayed older envelope is refused: apply v2 (with the operator's CLI this time),
    #    then publish v1 again.
    managed = s["h"].root / "v2.json"
    managed.write_text(
        json.dumps(
            {"sources": [{"type": "simulated", "name": "ota", "interval": 0.5, "devices": 1}]}
        )
    )
    out = collector(s["h"], "config", "set", s["gw"], "--file", str(managed))
    v2 = v1 + 1
    assert f"desired config {v2} for {s['gw']} signed and published" in out
    wait_report(s, version=v2, status="applied")
    shown = collector(s["h"], "config", "show", s["gw"])
    assert f"reported version {v2} applied, running {v2}" in shown
    assert SECRET not in shown
    publish_retained(s, envelope)
    report = wait_report(s, version=v1, status="rejected")
    assert report["reason"] == "replayed"
    assert report["applied_version"] == v2

    # 5. A patch adds one source to what runs (named items merge by name).
    with api(s) as c:
        r = c.patch(
            f"/api/v1/gateways/{s['gw']}/config",
            json={
                "patch": {"sources": [{"name": "patched", "type": "simulated", "interval": 0.5}]}
            },
        )
    assert r.status_code == 200, r.text
    v3 = int(r.json()["version"])
    assert [x["name"] for x in r.json()["config"]["sources"]] == ["ota", "patched"]
    wait_report(s, version=v3, status="applied")
    since = time.time_ns()
    wait_until(
        lambda: {"ota-1", "patched-1"} <= devices_seen(s, since), timeout=30, what="both sources"
    )


def every_batch_stored(h: Harness, gw: str, config: Path) -> None:
    """Every batch the gateway ever formed is stored at the collector, once: the sequence
    numbers the buffer handed out (1 .. next_seq-1) are all stored (the last ones may still be
    on their way: they are waited for), the collector holds no other, and the readings stored
    match what the batches carried. The agent goes on forming batches meanwhile."""
    state = tomllib.loads(config.read_text()).get("state_dir")
    assert state, config

    def meta() -> dict[str, str]:
        with contextlib.closing(
            sqlite3.connect(f"file:{Path(state) / 'buffer.db'}?mode=ro", uri=True)
        ) as b:
            return dict(b.execute("SELECT key, value FROM meta").fetchall())

    def stored_rows(stream: str) -> list[tuple[int, int]]:
        with contextlib.closing(
            sqlite3.connect(f"file:{h.data / 'documents.db'}?mode=ro", uri=True)
        ) as d:
            return d.execute(
                "SELECT seq, readings FROM stored_batches WHERE gateway_id = ? AND stream_id = ?",
                (gw, stream),
            ).fetchall()

    def points() -> int:
        with contextlib.closing(
            sqlite3.connect(f"file:{h.data / 'timeseries.db'}?mode=ro", uri=True)
        ) as t:
            (n,) = t.execute(
                "SELECT COUNT(*) FROM (SELECT DISTINCT p.series_id, p.ts FROM series s JOIN points"
                " p ON p.series_id = s.id WHERE json_extract(s.tags, '$.gateway') = ?)",
                (gw,),
            ).fetchone()
        return int(n)

    first = meta()
    stream = first["stream_id"]
    formed = set(range(1, int(first["next_seq"])))

    def missing() -> list[int]:
        return sorted(formed - {seq for seq, _ in stored_rows(stream)})

    wait_until(
        lambda: not missing(),
        timeout=30,
        what="every batch formed stored at the collector",
        seen=lambda: f"batches formed but not stored: {missing()}",
    )
    rows = stored_rows(stream)
    assert {seq for seq, _ in rows} <= set(range(1, int(meta()["next_seq"])))
    # Each reading stored, none twice: the points against the batches' counts, read when no
    # batch was stored between two counts of the points (the readings go in before the batch's
    # record, so a count taken while one is being stored is off by that batch).
    counts: list[tuple[int, int]] = []

    def balanced() -> bool:
        before, carried, after = points(), sum(n for _, n in stored_rows(stream)), points()
        counts.append((before, carried))
        return before == after == carried

    wait_until(
        balanced, timeout=30, what="stored points equal to the readings the batches carried",
        seen=lambda: f"(points, readings carried), last reads: {counts[-3:]}",
    )  # fmt: skip


def test_a_config_pointing_at_a_dead_broker_is_rolled_back(site: dict[str, Any]) -> None:
    s = site
    h = s["h"]
    # A second gateway of the same fleet, which gets no change and must not notice.
    result = enroll(h, new_token(h), "bystander")
    assert result.exit_code == 0, result.output
    other = gateway_id_of(h, "bystander")
    other_config = h.root / "bystander" / "agent.toml"
    tune(other_config)
    with other_config.open("a") as f:
        f.write('\n[[sources]]\ntype = "simulated"\nname = "by"\ninterval = 0.5\ndevices = 1\n')
    bystander = spawn(
        ["outpost_iot.agent.cli", "run", "--config", str(other_config)],
        log=h.root / "bystander.log",
    )
    try:
        wait_until(lambda: "base-1" in devices_seen(s, 0), timeout=30, what="readings before")
        v1 = put(
            s, {"sources": [{"type": "simulated", "name": "good", "interval": 0.5, "devices": 1}]}
        )
        wait_report(s, version=v1, status="applied")
        dead = free_port()
        v2 = put(
            s,
            {
                "uplink": {"host": "localhost", "port": dead},
                "sources": [{"type": "simulated", "name": "lost", "interval": 0.5, "devices": 1}],
            },
        )
        cut_off = time.time_ns()
        report = wait_report(s, version=v2, status="rolled_back")
        assert report["reason"] == "no_ack_within_grace"
        assert report["applied_version"] == v1
        # The rest of the fleet streamed all along.
        assert "by-1" in devices_seen({**s, "gw": other}, cut_off + 3 * 10**9)
        # Back on the good config, streaming; what was read meanwhile is delivered.
        since = time.time_ns()
        wait_until(lambda: "good-1" in devices_seen(s, since), timeout=30, what="streaming again")
        wait_until(
            lambda: status(s)["backlog_readings"] == 0, timeout=30, what="the backlog drained"
        )
        assert readings_dropped(status(s)["drops"]) == {}
        assert devices_seen(s, 0) >= {"lost-1"}  # read while cut off, delivered after the rollback
        every_batch_stored(h, s["gw"], s["config"])
        # The retained v2 is not applied again after the rollback.
        time.sleep(3)
        assert reported(s)["status"] == "rolled_back"  # type: ignore[index]
    finally:
        stop(bystander)


def test_a_rollout_over_ten_gateways_stops_when_wave_two_fails(
    harness: Harness, tmp_path: Path
) -> None:
    """Ten enrolled agents. Three of them run an older agent that lacks the new profile the
    config needs: they reject it. They are the second wave, so the third never starts."""
    h = harness
    h.api_port = free_port()
    h.crl_reload_command = f"kill -HUP {h.broker.pid}"
    h.start_collector()
    wait_until(lambda: _api_up(h), timeout=15, what="the collector's API")
    token = new_token(h, uses=10)
    names = [f"gw{i}" for i in range(10)]
    for name in names:
        result = enroll(h, token, name)
        assert result.exit_code == 0, result.output
    ids = {name: gateway_id_of(h, name) for name in names}
    order = sorted(ids.values())  # the rollout takes the gateways in id order
    wave2 = set(order[1:4])
    # An "older agent": its profile folder has no esphome.
    old_profiles = tmp_path / "old-profiles"
    shutil.copytree(Path(__file__).resolve().parents[2] / "firmware-profiles", old_profiles)
    shutil.rmtree(old_profiles / "esphome")
    agents = []
    try:
        for name, gw in ids.items():
            config = h.root / name / "agent.toml"
            tune(config, uplink="config_grace_s = 20")
            with config.open("a") as f:
                f.write('\n[[sources]]\ntype = "simulated"\ninterval = 1\ndevices = 1\n')
            env = {"OUTPOST_PROFILES_DIR": str(old_profiles)} if gw in wave2 else {}
            agents.append(
                spawn(
                    ["outpost_iot.agent.cli", "run", "--config", str(config)],
                    log=h.root / f"{name}.log",
                    env=env,
                )
            )
        operator = collector(
            h, "api-token", "create", "--tenant", "acme", "--role", "operator", "--name", "r"
        ).split()[0]
        s = {"h": h, "token": operator, "gw": ""}
        wait_until(
            lambda: all(devices_seen({**s, "gw": gw}, 0) for gw in ids.values()),
            timeout=60,
            what="every gateway streaming",
        )
        config = {
            "sources": [{"type": "simulated", "name": "v2", "interval": 1, "devices": 1}],
            "devices": [
                {
                    "name": "greenhouse",
                    "profile": "esphome",
                    "target": f"mqtt://127.0.0.1:{free_port()}",
                }
            ],
        }
        with api(s) as c:
            r = c.post(
                "/api/v1/rollouts",
                json={
                    "config": config,
                    "waves": ["1", "3", "100%"],
                    "abort_above_percent": 20,
                    "gateway_timeout_s": 60,
                },
            )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        def state() -> dict[str, Any]:
            with api(s) as c:
                return dict(c.get(f"/api/v1/rollouts/{rid}").json())

        wait_until(lambda: state()["status"] != "running", timeout=90, what="the rollout ends")
        final = state()
        assert final["status"] == "aborted", final
        assert "wave 2: 3 of 3 gateways failed" in final["reason"]
        waves = final["waves"]
        assert (waves[0]["applied"], waves[1]["failed"]) == (1, 3)
        assert waves[2]["started"] is False
        for gw in order[4:]:
            with api(s) as c:
                assert c.get(f"/api/v1/gateways/{gw}/config").json()["desired"] is None
        with api(s) as c:
            report = c.get(f"/api/v1/gateways/{order[1]}/config").json()["reported"]
        assert report["status"] == "rejected"
        assert report["reason"] == "invalid"
        assert any("unknown profile 'esphome'" in e for e in report["errors"])
    finally:
        for agent in agents:
            stop(agent)
