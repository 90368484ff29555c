"""The command lines: help, bad input, and the commands a user runs first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from outpost_iot import wire
from outpost_iot.agent import Outbox, SystemClock
from outpost_iot.agent.cli import main as agent_cli
from outpost_iot.collector.cli import main as collector_cli


def test_broker_init_and_dev_issue_cert(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        collector_cli, ["broker", "init", "--dir", str(tmp_path / "b"), "--port", "18883"]
    )
    assert r.exit_code == 0, r.output
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "listener 18883",
        "allow_anonymous false",
        "tls_version tlsv1.2",
        "plugin_opt_config_file",
        "max_packet_size",
    ):
        assert line in conf
    roster = json.loads((tmp_path / "b" / "mosquitto" / "dynamic-security.json").read_text())
    assert roster["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert [c["username"] for c in roster["clients"]] == ["outpost-collector"]
    assert (tmp_path / "b" / "mosquitto" / "dynamic-security.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b" / "ca.key").stat().st_mode & 0o777 == 0o600
    r = CliRunner().invoke(
        collector_cli,
        [
            "dev-issue-cert",
            "--broker-dir",
            str(tmp_path / "b"),
            "--gateway-id",
            "gw-7",
            "--out",
            str(tmp_path / "id"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "id" / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert "BEGIN" not in r.output  # keys are never printed
    assert "--broker-port" in r.output  # it says how to put the gateway on the roster


def test_broker_init_says_what_to_do_without_the_dynamic_security_plugin(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        collector_cli,
        ["broker", "init", "--dir", str(tmp_path / "b"), "--dynsec-plugin", str(tmp_path)],
    )
    assert r.exit_code != 0  # a directory is not the plugin
    from outpost_iot.collector._broker import init_broker

    with pytest.raises(ValueError, match=r"install mosquitto 2\.0 or newer"):
        init_broker(tmp_path / "c", dynsec_plugin=tmp_path / "nowhere.so")
    assert not (tmp_path / "c" / "mosquitto.conf").exists(), "nothing half-written"


def test_dev_issue_cert_refuses_a_bad_gateway_id(tmp_path: Path) -> None:
    CliRunner().invoke(collector_cli, ["broker", "init", "--dir", str(tmp_path / "b")])
    r = CliRunner().invoke(
        collector_cli,
        [
            "dev-issue-cert",
            "--broker-dir",
            str(tmp_path / "b"),
            "--gateway-id",
            "gw/+",
            "--out",
            str(tmp_path / "id"),
        ],
    )
    assert r.exit_code == 2
    assert "--gateway-id" in r.output
    assert "letters, digits" in r.output


def test_agent_run_with_a_bad_config_says_what_to_change(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('gateway_id = "gw-1"\n')
    r = CliRunner().invoke(agent_cli, ["run", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "uplink: required key is missing" in r.output
    r = CliRunner().invoke(agent_cli, ["run", "--config", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1
    assert "no such file" in r.output


def _agent_config(tmp_path: Path) -> Path:
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / name).write_text("x")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
gateway_id = "gw-1"
state_dir = "{tmp_path / "state"}"
[uplink]
host = "broker"
ca_file = "{tmp_path / "ca.pem"}"
cert_file = "{tmp_path / "gw.pem"}"
key_file = "{tmp_path / "gw.key"}"
""")
    return cfg


def test_agent_status_reports_backlog_and_drops(tmp_path: Path) -> None:
    cfg = _agent_config(tmp_path)
    r = CliRunner().invoke(agent_cli, ["status", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "no buffer here yet" in r.output
    with Outbox(
        path=tmp_path / "state" / "buffer.db",
        gateway_id="gw-1",
        clock=SystemClock(),
        max_bytes=1 << 20,
    ) as ob:
        ob.append(
            [
                wire.Reading(measurement="m", fields={"v": i}, ts=time.time_ns() - 60 * 10**9)
                for i in range(30)
            ]
        )
        ob.form_batch(max_readings=10)
        ob.form_batch(max_readings=10)
        ob.acknowledge(1, rejected=True)
    r = CliRunner().invoke(agent_cli, ["status", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["backlog_readings"] == 20
    assert report["backlog_batches"] == 1
    assert report["drops"] == {"rejected_by_collector": 10}
    assert 55 <= report["oldest_unsent_age_s"] <= 120
    text = CliRunner().invoke(agent_cli, ["status", "--config", str(cfg)]).output
    assert "20 readings (1 batches, 10 not yet batched)" in text
    assert "rejected_by_collector: 10" in text


@pytest.mark.parametrize("cli", [agent_cli, collector_cli])
def test_help_lists_the_commands(cli: object) -> None:
    r = CliRunner().invoke(cli, ["--help"])  # type: ignore[arg-type]
    assert r.exit_code == 0
    assert "Usage" in r.output


def test_collector_readings_rejects_a_bad_tag_filter(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        collector_cli,
        [
            "readings",
            "--config",
            str(tmp_path / "c.toml"),
            "--measurement",
            "m",
            "--tag",
            "novalue",
        ],
    )
    assert r.exit_code == 2
    assert "KEY=VALUE" in r.output


@pytest.mark.parametrize(
    ("stores", "words"),
    [
        ('documents = "postgres"', 'documents = "postgres" needs a [stores.postgres] section'),
        ('timeseries = "victoriametrics"', "needs a [stores.influx] section with url"),
        ('timeseries = "influx"', "stores.timeseries: Input should be 'sqlite', 'victoriametrics'"),
        ('timeseries = "victoriametrics"\n[stores.influx]\nurl = "vm:8428"', "stores.influx.url"),
        (
            'documents = "postgres"\n[stores.postgres]\ndsn = "postgresql://o:hunter2@127.0.0.1:1/db"'
            "\nconnect_timeout_s = 1",
            "PostgreSQL 127.0.0.1:1/db: cannot connect within 1 s",
        ),
    ],
    ids=["no-postgres-section", "no-influx-section", "unknown-backend", "bad-url", "unreachable"],
)
def test_collector_with_bad_stores_says_what_to_change(
    tmp_path: Path, stores: str, words: str
) -> None:
    CliRunner().invoke(collector_cli, ["broker", "init", "--dir", str(tmp_path / "b")])
    b = tmp_path / "b"
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[broker]\nca_file = "{b / "ca.pem"}"\ncert_file = "{b / "collector.pem"}"\n'
        f'key_file = "{b / "collector.key"}"\n\n[stores]\n{stores}\n'
    )
    r = CliRunner().invoke(collector_cli, ["serve", "--config", str(config)])
    assert r.exit_code == 1, r.output
    assert words in r.output
    assert "hunter2" not in r.output
