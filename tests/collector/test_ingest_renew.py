"""Certificate renewal over MQTT, in the collector's ingest, with a real CA: each answer a
gateway can get on its own `down/renew` topic (the end-to-end renewal is in
tests/provisioning/test_enrollment.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from outpost_iot import wire
from outpost_iot.collector import Incoming, Ingestor
from outpost_iot.collector._config import CollectorConfig, load_config
from outpost_iot.collector._enrollment import EnrollmentService
from outpost_iot.collector._exceptions import StoreError
from outpost_iot.collector.stores import SqliteDocumentStore, SqliteTimeSeriesStore
from outpost_iot.dev._processes import Mosquitto, collector_config, free_port
from outpost_iot.provisioning._ca import make_csr, new_key
from outpost_iot.wire import topics

NOW = 1_700_000_000 * 10**9


@dataclass
class Site:
    cfg: CollectorConfig
    docs: SqliteDocumentStore
    ts: SqliteTimeSeriesStore
    enrollment: EnrollmentService
    ingestor: Ingestor
    gateway: str

    def renew(self, payload: bytes, gateway: str | None = None) -> list[wire.RenewResponse]:
        gw = gateway or self.gateway
        replies = self.ingestor.handle([Incoming(topics.up_renew(gw), payload, {}, NOW)])
        assert all(r.topic == topics.down_renew(gw) for r in replies), "only its own topic"
        return [r.message for r in replies]  # type: ignore[misc]


def csr_pem(key: object | None = None) -> str:
    return make_csr(key or new_key()).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


def request(csr: str, request_id: str = "r-1") -> bytes:
    return wire.encode_message(wire.RenewRequest(request_id=request_id, csr=csr))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    broker = Mosquitto(tmp_path / "broker")  # its files only (the CA lives beside them)
    cfg = load_config(
        collector_config(tmp_path / "c.toml", broker, tmp_path / "data", api_port=free_port())
    )
    assert cfg.pki is not None
    assert cfg.enrollment is not None
    docs = SqliteDocumentStore(cfg.stores.documents_path)
    ts = SqliteTimeSeriesStore(cfg.stores.timeseries_path)
    enrollment = EnrollmentService(docs=docs, pki=cfg.pki, enrollment=cfg.enrollment)
    token, _ = enrollment.create_token(tenant="acme", site="hq", expires_s=60, uses=1)
    gateway = enrollment.enroll(token=token, csr_pem=csr_pem(), hardware={}).gateway_id
    ingestor = Ingestor(config=cfg, timeseries=ts, documents=docs, enrollment=enrollment)
    yield Site(cfg, docs, ts, enrollment, ingestor, gateway)
    ts.close()
    docs.close()


def test_an_enrolled_gateway_gets_a_certificate_for_its_new_key(site: Site) -> None:
    key = new_key()
    [answer] = site.renew(request(csr_pem(key), "renew-42"))
    assert (answer.request_id, answer.status, answer.reason) == ("renew-42", "issued", "")
    cert = x509.load_pem_x509_certificate(answer.certificate.encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == site.gateway  # whatever the CSR asked for, the gateway's own id
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.PEM, spki) == (
        key.public_key().public_bytes(serialization.Encoding.PEM, spki)
    )
    record = site.docs.certificate(format(cert.serial_number, "x"))
    assert record is not None
    assert record.gateway_id == site.gateway


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        ("unknown", "unknown_gateway", "is not enrolled"),
        ("bad csr", "bad_csr", ""),
    ],
)
def test_a_renewal_that_cannot_be_granted_is_refused_with_the_reason(
    site: Site, case: str, reason: str, words: str
) -> None:
    gateway = site.gateway
    csr = csr_pem()
    if case == "unknown":
        gateway = "gw-never-enrolled"
    else:
        csr = "-----BEGIN CERTIFICATE REQUEST-----\nnot one\n-----END CERTIFICATE REQUEST-----\n"
    [answer] = site.renew(request(csr, "r-7"), gateway)
    assert (answer.request_id, answer.status, answer.reason) == ("r-7", "refused", reason)
    assert answer.certificate == ""
    assert words in answer.detail
    assert answer.detail


def test_a_decommissioned_gateway_gets_no_certificate_and_its_batches_are_nacked(
    site: Site,
) -> None:
    site.enrollment.decommission(site.gateway)
    assert site.renew(request(csr_pem())) == []
    assert site.ingestor.metrics.nacks["revoked"] == 1
    # A batch names its stream and seq in the MQTT user properties.
    props = {wire.PROP_STREAM: "s-1", wire.PROP_SEQ: "3"}
    batch = Incoming(topics.up_batch(site.gateway), b"{}", props, NOW)
    [reply] = site.ingestor.handle([batch])
    nack = reply.message
    assert reply.topic == topics.down_ack(site.gateway)
    assert isinstance(nack, wire.Nack)
    assert (nack.stream, nack.seq, nack.reason) == ("s-1", 3, "revoked")
    assert nack.retry_after_ms == 3_600_000  # an hour: it stays decommissioned
    assert "re-enroll" in nack.detail
    assert site.ingestor.metrics.nacks["revoked"] == 2
    assert site.docs.quarantined() == []  # refused, not kept
    # Its state and config reports are refused too, and not answered (nothing to nack).
    state = wire.GatewayState(state="online", ts=NOW, boot_id="b", agent_version="0.1.0")
    report = wire.ConfigReport(version=2, status="applied", applied_version=2, ts=NOW)
    others = [
        Incoming(topics.up_state(site.gateway), wire.encode_message(state), props, NOW),
        Incoming(topics.up_config(site.gateway), wire.encode_message(report), props, NOW),
    ]
    assert site.ingestor.handle(others) == []
    assert site.ingestor.metrics.nacks["revoked"] == 4
    gw = site.docs.gateway(site.gateway)
    assert gw is not None
    assert gw.state != "online"
    assert site.docs.config_report(site.gateway) is None


def test_a_malformed_renewal_request_is_quarantined_and_not_answered(site: Site) -> None:
    assert site.renew(b'{"v": 1, "request_id": "r", "csr": 5}') == []
    [entry] = site.docs.quarantined()
    assert (entry.reason, entry.gateway_id) == ("invalid_schema", site.gateway)


def test_a_collector_without_a_ca_says_so(site: Site) -> None:
    plain = Ingestor(config=site.cfg, timeseries=site.ts, documents=site.docs)
    [reply] = plain.handle([Incoming(topics.up_renew(site.gateway), request(csr_pem()), {}, NOW)])
    answer = reply.message
    assert reply.topic == topics.down_renew(site.gateway)
    assert (answer.status, answer.reason, answer.request_id) == ("refused", "unavailable", "r-1")  # type: ignore[union-attr]
    assert "[pki]" in answer.detail  # type: ignore[union-attr]


def test_a_store_failure_leaves_the_gateway_to_ask_again(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_: object) -> None:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(site.docs, "record_certificate", failing)
    assert site.renew(request(csr_pem())) == []  # no certificate it could not record
    monkeypatch.undo()
    [answer] = site.renew(request(csr_pem()))
    assert answer.status == "issued"


def test_readings_are_stored_under_the_gateways_tenant(site: Site) -> None:
    from tests.collector.test_ingest import frame, msg

    [reply] = site.ingestor.handle([msg(frame(1, gw=site.gateway), 1, gw=site.gateway)])
    assert reply.message.status == "stored"  # type: ignore[union-attr]
    assert len(site.ts.query("env", tenant="acme")) == 3
    assert site.ts.query("env", tenant="globex") == []
    assert site.ingestor.metrics.write_latency.count == 1
    assert site.ingestor.metrics.write_latency.counts[-1] == 1  # well within 5 s


def test_a_decommission_by_another_process_reaches_ingest_at_its_next_refresh(
    site: Site,
) -> None:
    """The CLI or another replica decommissions the gateway: the running collector's ingest
    refuses it once it refreshes its revocations (the collector does so on a timer)."""
    docs = SqliteDocumentStore(site.cfg.stores.documents_path)
    assert site.cfg.pki is not None
    assert site.cfg.enrollment is not None
    try:
        EnrollmentService(docs=docs, pki=site.cfg.pki, enrollment=site.cfg.enrollment).decommission(
            site.gateway
        )
    finally:
        docs.close()
    [answer] = site.renew(request(csr_pem()))
    assert answer.status == "issued"  # not known here yet
    site.ingestor.refresh_revocations()
    assert site.renew(request(csr_pem())) == []
    assert site.ingestor.metrics.nacks["revoked"] == 1
