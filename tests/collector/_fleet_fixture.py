"""A fleet of ten enrolled gateways with rollouts over real stores: shared by the rollout
and stream tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from outpost_iot.collector._config import load_config
from outpost_iot.collector._configs import ConfigService
from outpost_iot.collector._enrollment import EnrollmentService
from outpost_iot.collector._rollouts import RolloutService
from outpost_iot.collector.stores import SqliteDocumentStore
from outpost_iot.dev._processes import Mosquitto, collector_config, find_mosquitto, free_port
from outpost_iot.provisioning._ca import make_csr, new_key
from outpost_iot.wire import ConfigReport, open_config
from tests.conftest import require_service

CONFIG: dict[str, Any] = {"sources": [{"type": "simulated", "interval": 5, "devices": 2}]}
MINUTE = 60 * 10**9


@dataclass
class Fleet:
    docs: SqliteDocumentStore
    rollouts: RolloutService
    gateways: list[str]
    published: list[str]
    clock: list[int]
    config_path: Path
    configs: ConfigService
    keys: dict[str, Any]  # gateway id → its private key

    def opened(self, gw: str) -> dict[str, Any]:
        """The gateway's newest desired config, opened as the gateway opens it."""
        (record,) = self.docs.desired_configs(gw, limit=1)
        signing = serialization.load_pem_private_key(
            load_config(self.config_path).pki.signing_key.read_bytes(),  # type: ignore[union-attr]
            password=None,
        )
        verify = signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _, config = open_config(
            record.envelope,
            gateway_id=gw,
            applied_version=0,
            verify_key_pem=verify,
            private_keys=[self.keys[gw]],
        )
        return config

    def report(self, gw: str, version: int, status: str) -> None:
        applied = version if status == "applied" else 0
        self.docs.save_config_report(
            gw,
            ConfigReport(
                version=version,
                status=status,
                applied_version=applied,
                reason="",
                ts=1,  # type: ignore[arg-type]
            ),
        )

    def desired(self, gw: str) -> int:
        found = self.docs.desired_configs(gw, limit=1)
        return found[0].version if found else 0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    broker = Mosquitto(tmp_path / "broker")
    config = load_config(
        collector_config(tmp_path / "c.toml", broker, tmp_path / "data", api_port=free_port())
    )
    assert config.pki is not None
    assert config.enrollment is not None
    docs = SqliteDocumentStore(config.stores.documents_path)
    enrollment = EnrollmentService(docs=docs, pki=config.pki, enrollment=config.enrollment)
    gateways = []
    keys = {}
    for _ in range(10):
        token, _ = enrollment.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
        key = new_key()
        csr = make_csr(key).public_bytes(serialization.Encoding.PEM).decode()
        gateways.append(enrollment.enroll(token=token, csr_pem=csr, hardware={}).gateway_id)
        keys[gateways[-1]] = key
    published: list[str] = []
    clock = [10**18]
    configs = ConfigService(
        docs=docs,
        signing_key=config.pki.signing_key,
        publish=lambda topic, _payload: published.append(topic),
    )
    rollouts = RolloutService(docs=docs, configs=configs, now_ns=lambda: clock[0])
    yield Fleet(
        docs, rollouts, sorted(gateways), published, clock, tmp_path / "c.toml", configs, keys
    )
    docs.close()
