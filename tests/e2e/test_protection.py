"""Backpressure, bad input, identity and the disk bound, against a real Mosquitto."""

from __future__ import annotations

import signal
import ssl
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost_iot import wire
from outpost_iot.dev._processes import Mosquitto
from outpost_iot.wire import topics
from tests._wait import wait_until
from tests.e2e._harness import Harness, assert_exactly_once
from tests.e2e.test_pipeline import drain

pytestmark = [pytest.mark.broker]


class Client:
    """A plain MQTT 5 client (paho) for playing a gateway or watching the broker."""

    def __init__(
        self,
        broker: Mosquitto,
        *,
        cert: Path | None,
        key: Path | None,
        ca: Path | None = None,
        client_id: str = "",
    ) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self.suback: list[int] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        ctx = ssl.create_default_context(cafile=str(ca or broker.files.ca_cert))
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
        self.c.tls_set_context(ctx)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.extend(
            int(rc.value) for rc in codes
        )
        self.port = broker.port

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, msg.payload))

    def connect(self) -> None:
        self.c.connect("localhost", self.port)
        self.c.loop_start()
        wait_until(self.c.is_connected, timeout=10, what="MQTT connect")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()

    def subscribe(self, topic: str) -> None:
        before = len(self.suback)
        self.c.subscribe(topic, qos=1)
        wait_until(lambda: len(self.suback) > before, timeout=5, what="SUBACK")

    def publish_batch(
        self, gateway_id: str, payload: bytes, *, seq: int, stream: str = "s1"
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [(wire.PROP_STREAM, stream), (wire.PROP_SEQ, str(seq))]
        self.c.publish(
            topics.up_batch(gateway_id), payload, qos=1, properties=props
        ).wait_for_publish(5)

    def received(self, topic_part: str) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [m for m in self.messages if topic_part in m[1]]


def collector_watcher(broker: Mosquitto) -> Client:
    """A client with the collector's identity, which may read every gateway's topics."""
    w = Client(
        broker,
        cert=broker.files.collector_cert,
        key=broker.files.collector_key,
        client_id="watcher",
    )
    w.connect()
    return w


def test_rate_limited_gateway_is_nacked_slows_down_and_loses_nothing(
    harness: Harness, identity
) -> None:
    h = harness
    h.collector_extra = (
        "[limits]\nreadings_per_s = 400\nreadings_burst = 400\nstore_retry_after_ms = 1000\n"
    )
    h.start_collector()
    watcher = collector_watcher(h.broker)
    watcher.subscribe("outpost/v1/gw/gw-rl/#")
    # One batch in flight at a time, so "the next publish after a nack" is well defined.
    cfg = h.agent_config(
        "gw-rl", identity("gw-rl"), uplink_extra="max_inflight = 1\nack_timeout = 5"
    )
    # 2,000 readings/s offered against a limit of 400/s.
    proc = h.start_producer(cfg, "gw-rl", run="rl", per_poll=100, interval=0.05, limit=4000)
    wait_until(lambda: len(h.read_journal("gw-rl")) == 4000, timeout=30, what="4000 readings")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    drain(h, cfg, "gw-rl", timeout=60)
    assert_exactly_once(h, "gw-rl", h.read_journal("gw-rl"))

    acks = [(t, wire.decode_ack(p)) for t, _, p in watcher.received("/down/ack")]
    nacks = [(t, m) for t, m in acks if isinstance(m, wire.Nack)]
    assert nacks, "the collector nacked"
    assert all(
        m.reason == "rate_limited" and m.limit == "readings_per_s" and m.retry_after_ms > 0
        for _, m in nacks
    )
    # After each nack the gateway waits the retry-after before it publishes a batch again.
    sends = [t for t, _, _ in watcher.received("/up/batch")]
    for t_nack, nack in nacks:
        later = [t for t in sends if t > t_nack]
        if later:
            assert later[0] - t_nack >= nack.retry_after_ms / 1000 * 0.9, "sent before retry-after"
    watcher.close()


def test_bad_batches_are_quarantined_and_acked_and_the_collector_keeps_running(
    harness: Harness, identity
) -> None:
    h = harness
    h.collector_extra = "[limits]\nmax_frame_bytes = 65536\n"
    h.start_collector()
    ca, cert, key = identity("gw-bad")
    gw = Client(h.broker, cert=cert, key=key, ca=ca, client_id="gw-bad")
    gw.connect()
    gw.subscribe(topics.down_ack("gw-bad"))
    good_body = orjson.dumps(
        {
            "gw": "gw-bad",
            "stream": "s1",
            "boot": "b",
            "seq": 4,
            "created": 1,
            "clock": {"offset_ns": 0, "synced": True},
            "series": [{"m": "x", "t": {}, "p": [[1, {"v": "not-a-list"}]]}],
        }
    )
    gw.publish_batch("gw-bad", b"this is not a batch", seq=1)
    gw.publish_batch("gw-bad", wire.frame(good_body, version=99), seq=2)
    gw.publish_batch("gw-bad", wire.frame(bytes(100_000), compress=False), seq=3)
    gw.publish_batch("gw-bad", wire.frame(good_body.replace(b'"p":[[1,', b'"p":[["1",')), seq=4)
    wait_until(lambda: len(gw.received("/down/ack")) == 4, timeout=10, what="4 acks")
    acks = {m.seq: m for m in (wire.decode_ack(p) for _, _, p in gw.received("/down/ack"))}
    assert {s: (a.status, getattr(a, "reason", "")) for s, a in acks.items()} == {
        1: ("quarantined", "malformed"),
        2: ("quarantined", "unsupported_version"),
        3: ("quarantined", "oversized"),
        4: ("quarantined", "invalid_schema"),
    }
    q = h.quarantine()
    assert [r[1] for r in q] == ["malformed", "unsupported_version", "oversized", "invalid_schema"]
    assert "version 99" in q[1][2]
    gw.close()
    # The collector is still alive and storing.
    assert h.collector is not None
    assert h.collector.poll() is None
    cfg = h.agent_config("gw-ok", identity("gw-ok"))
    proc = h.start_producer(cfg, "gw-ok", run="ok", per_poll=10, limit=50)
    wait_until(lambda: len(h.stored("gw-ok")) == 50, timeout=20, what="readings after bad input")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_a_gateway_can_only_use_its_own_topics(broker: Mosquitto, identity) -> None:
    watcher = collector_watcher(broker)
    watcher.subscribe("outpost/v1/gw/#")
    ca, cert, key = identity("gw-a")
    identity("gw-b")
    a = Client(broker, cert=cert, key=key, ca=ca, client_id="gw-a")
    a.connect()
    a.publish_batch("gw-b", b"pretending to be b", seq=1)
    a.publish_batch("gw-a", b"own topic", seq=1)
    # a's own publish is the marker: the broker delivers one client's publishes in order, so
    # had the first one been let through, it would have arrived before this one.
    wait_until(lambda: watcher.received("gw-a/up/batch"), timeout=5, what="a's own publish")
    assert watcher.received("gw-b/") == [], (
        "a publish as another gateway reached the broker's readers"
    )
    # Mosquitto may grant the SUBACK; what matters is that nothing addressed to b reaches a.
    a.subscribe(topics.down_ack("gw-b"))
    a.subscribe(topics.down_ack("gw-a"))
    watcher.c.publish(topics.down_ack("gw-b"), b"for b", qos=1).wait_for_publish(5)
    watcher.c.publish(topics.down_ack("gw-a"), b"for a", qos=1).wait_for_publish(5)
    wait_until(lambda: a.received("gw-a/down/ack"), timeout=5, what="a's own ack")  # the marker
    assert [m[2] for m in a.received("/down/ack")] == [b"for a"]
    a.close()
    watcher.close()


def connects(client: Client) -> bool:
    """True if the broker accepts the client's MQTT connection within 2 s."""
    try:
        client.c.connect("localhost", client.port)
    except (ssl.SSLError, OSError):
        return False  # refused during the TLS handshake
    client.c.loop_start()
    try:
        # With TLS 1.3 the broker checks the client certificate after the handshake and then
        # closes the connection: no CONNACK ever arrives.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if client.c.is_connected():
                return True
            time.sleep(0.05)
        return False
    finally:
        client.c.disconnect()
        client.c.loop_stop()


# paho leaves the socket of a refused TLS connection for the garbage collector to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_clients_without_a_valid_certificate_cannot_connect(
    broker: Mosquitto, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from outpost_iot.provisioning import CertificateAuthority

    assert connects(
        Client(broker, cert=broker.files.collector_cert, key=broker.files.collector_key)
    )
    assert not connects(Client(broker, cert=None, key=None)), "no client certificate"
    other = CertificateAuthority.create("Someone else's CA")
    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    other.issue_to_files("gw-a", cert, key)
    assert not connects(Client(broker, cert=cert, key=key)), "certificate from another CA"
    # The other direction: a client that does not trust the broker's CA refuses the broker.
    stranger_ca = tmp_path / "stranger-ca.pem"
    stranger_ca.write_bytes(other.cert.public_bytes(Encoding.PEM))
    wary = Client(
        broker, cert=broker.files.collector_cert, key=broker.files.collector_key, ca=stranger_ca
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        wary.c.connect("localhost", broker.port)


def test_disk_bound_is_respected_and_every_drop_is_counted(harness: Harness, identity) -> None:
    h = harness
    bound = 256 * 1024
    cfg = h.agent_config(
        "gw-disk",
        identity("gw-disk"),
        buffer_extra=f'max_bytes = {bound}\nbatch_max_delay = 0.2\ndurability = "normal"',
    )
    # No collector: everything stays in the buffer until the bound forces drops.
    proc = h.start_producer(cfg, "gw-disk", run="d", per_poll=200, interval=0.02, limit=30_000)
    wait_until(lambda: len(h.read_journal("gw-disk")) == 30_000, timeout=60, what="30k readings")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    status = h.status(cfg)
    dropped = status["drops"].get("disk_full", 0)  # type: ignore[union-attr]
    assert dropped > 0
    db = Path(str(status["buffer"]))
    assert db.stat().st_size <= bound * 1.05, f"buffer file is {db.stat().st_size} bytes"
    # Once the collector is back, what was not dropped arrives: stored + dropped = produced.
    h.start_collector()
    drain(h, cfg, "gw-disk")
    stored = h.stored("gw-disk")
    journal = h.read_journal("gw-disk")
    assert len(stored) + dropped == len(journal)
    # The oldest were dropped, the newest kept.
    assert max(n for _, n in stored) == 29_999
    assert all(len(v) == 1 for v in stored.values())


def test_a_batch_another_replica_is_storing_is_resent_alone_and_the_stream_flows_on(
    harness: Harness, identity
) -> None:
    """The test plays a collector replica that answers batch 2 ``in_progress`` once (another
    replica holds its claim) and acks everything else: a real agent must resend batch 2 after
    the retry-after and keep sending the others meanwhile, unlike after ``overloaded``."""
    h = harness
    sends: list[tuple[float, int]] = []
    nacked_at: list[float] = []
    lock = threading.Lock()
    replica = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="fake-replica", protocol=mqtt.MQTTv5
    )
    ctx = ssl.create_default_context(cafile=str(h.broker.files.ca_cert))
    ctx.load_cert_chain(str(h.broker.files.collector_cert), str(h.broker.files.collector_key))
    replica.tls_set_context(ctx)

    def answer(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        props = dict(msg.properties.UserProperty)  # type: ignore[union-attr]
        stream, seq = props[wire.PROP_STREAM], int(props[wire.PROP_SEQ])
        reply: wire.Ack | wire.Nack
        with lock:
            sends.append((time.monotonic(), seq))
            if seq == 2 and not nacked_at:
                nacked_at.append(time.monotonic())
                reply = wire.Nack(stream=stream, seq=seq, reason="in_progress", retry_after_ms=1500)
            else:
                reply = wire.Ack(
                    stream=stream, seq=seq, status="duplicate" if seq == 2 else "stored"
                )
        client.publish(topics.down_ack("gw-ip"), wire.encode_message(reply), qos=1)

    replica.on_message = answer
    replica.connect("localhost", h.broker.port)
    replica.loop_start()
    try:
        wait_until(replica.is_connected, timeout=10, what="MQTT connect")
        subacked = threading.Event()
        replica.on_subscribe = lambda *_: subacked.set()
        replica.subscribe(topics.up_batch("gw-ip"), qos=1)
        wait_until(subacked.is_set, timeout=10, what="the SUBACK, before the agent publishes")
        cfg = h.agent_config("gw-ip", identity("gw-ip"))  # ack_timeout = 3 s
        proc = h.start_producer(cfg, "gw-ip", run="ip", per_poll=20, interval=0.05)
        wait_until(lambda: len([s for _, s in sends if s == 2]) == 2, timeout=20, what="resend")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        replica.loop_stop()
        replica.disconnect()
    with lock:
        t_nack = nacked_at[0]
        resend = [t for t, s in sends if s == 2][1]
        others = [(t, s) for t, s in sends if s != 2]
    assert resend - t_nack >= 1.5 * 0.9, "resent before the retry-after"
    assert resend - t_nack < 3.0, "resent only when the ack timeout ran out"
    during = [s for t, s in others if t_nack < t < resend]
    assert len(during) >= 3, f"the stream waited with batch 2 (sent meanwhile: {during})"
    seqs = [s for _, s in others]
    assert len(seqs) == len(set(seqs)), "no other batch was sent twice"
    assert "being stored by another collector replica" in (h.root / "gw-ip.log").read_text()
