"""The uplink: MQTT 5 over mutual TLS to the cloud broker.

Publishes batches from the outbox (QoS 1, fresh first), deletes them on ack, keeps them on
nack and waits the collector's ``retry_after``, retransmits what was not acked in time, and
reconnects with :class:`mqtt.Backoff` (full jitter, a low cap, fast after a brief
failure, longer when the broker is busy). A publish the broker answers with "no matching
subscribers" (no collector is subscribed, e.g. just after a broker restart) is sent again within
seconds rather than after ``ack_timeout``. TLS always verifies the broker and there is no
plaintext fallback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from outpost_iot import mqtt, wire
from outpost_iot.agent._buffer import Outbox
from outpost_iot.agent._clock import Clock
from outpost_iot.agent._config import UplinkConfig
from outpost_iot.agent._exceptions import BufferError, UplinkError
from outpost_iot.agent._renewal import CertificateRenewer
from outpost_iot.wire import topics


def tls_context(*, ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A client TLS context that verifies the broker (certificate and host name)."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"uplink.ca_file {ca_file}: not a usable CA certificate: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(
            f"uplink.cert_file {cert_file} / uplink.key_file {key_file}: the gateway "
            f"certificate and key do not load together: {exc}"
        ) from exc
    return ctx


class AckTracker:
    """Batches sent and not yet acknowledged, with the time they were sent."""

    def __init__(self) -> None:
        self._sent: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def seqs(self) -> frozenset[int]:
        return frozenset(self._sent)

    def add(self, seq: int, now: float) -> None:
        self._sent[seq] = now

    def discard(self, seq: int) -> bool:
        return self._sent.pop(seq, None) is not None

    def expire(self, now: float, timeout: float) -> list[int]:
        """Forget batches unacked for ``timeout`` seconds so they are sent again."""
        late = [seq for seq, t in self._sent.items() if now - t >= timeout]
        for seq in late:
            del self._sent[seq]
        return late

    def next_deadline(self, timeout: float) -> float | None:
        return min(self._sent.values()) + timeout if self._sent else None

    def clear(self) -> None:
        self._sent.clear()


# Certificate renewal: how long to wait for the collector's answer before giving up on a
# request, and how often to look whether the certificate is due (and to ask again).
RENEWAL_ANSWER_S = 60.0
RENEWAL_CHECK_S = 600.0


class _Reconnect(Exception):
    """Leave the current connection and connect again at once (new certificate)."""


class Uplink:
    """Sends the outbox to the collector. Run with :meth:`run` inside the agent's task group."""

    def __init__(
        self,
        *,
        gateway_id: str,
        config: UplinkConfig,
        outbox: Outbox,
        clock: Clock,
        state: Callable[[str], wire.GatewayState],
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        on_progress: Callable[[], None] = lambda: None,
        on_config: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self._on_config = on_config
        self.reports: asyncio.Queue[wire.ConfigReport] = asyncio.Queue()
        self.acked = asyncio.Event()  # set at the first ack from the collector
        self._progress = on_progress
        self._cfg = config
        self._outbox = outbox
        self._clock = clock
        self._state = state
        self._log = logger or logging.getLogger("outpost.agent.uplink")
        self._rng = rng or random.Random()
        self._tracker = AckTracker()
        self._wake = asyncio.Event()
        self._hold_until = 0.0
        # Congestion window: halves on a nack, grows by one per ack, up to max_inflight.
        self._window = config.max_inflight
        self.connected = asyncio.Event()
        self.renewer = CertificateRenewer(
            gateway_id=gateway_id,
            cert_file=config.cert_file,
            key_file=config.key_file,
            renew_at=config.renew_at,
            min_interval_s=config.renew_min_interval,
            logger=self._log.getChild("renewal"),
        )
        self.acks = 0
        self.nacks = 0
        self.retransmits = 0
        self.unrouted = 0  # publishes answered "no matching subscribers"
        self.refused = 0  # publishes the broker refused (PUBACK 0x80 and up)
        # Resending after "no matching subscribers": soon, and less often while it lasts.
        self._unrouted_backoff = mqtt.Backoff(
            base=config.reconnect_min, cap=config.reconnect_max, rng=self._rng
        )
        self._attempt: mqtt.Client | None = None  # the last connection attempt

    def notify(self) -> None:
        """A batch was formed: wake the sender."""
        self._wake.set()

    async def run(self) -> None:
        backoff = mqtt.Backoff(
            base=self._cfg.reconnect_min,
            cap=self._cfg.reconnect_max,
            busy_cap=self._cfg.reconnect_busy_max,
            rng=self._rng,
        )
        while True:
            ctx = tls_context(
                ca_file=self._cfg.ca_file,
                cert_file=self._cfg.cert_file,
                key_file=self._cfg.key_file,
            )
            reconnect_now = False
            try:
                await mqtt.run_session(self._connected_session(ctx, backoff), name="uplink-session")
            except* _Reconnect:
                reconnect_now = True
            except* aiomqtt.MqttError as group:
                self._log.warning(
                    "uplink to %s:%d lost or refused: %s",
                    self._cfg.host,
                    self._cfg.port,
                    _describe(group),
                )
            self.connected.clear()
            self._tracker.clear()
            if reconnect_now:
                self._log.info("reconnecting with the renewed certificate")
                continue
            self._uplink_state("disconnected")
            busy = self._attempt is not None and self._attempt.costly_failure
            delay = backoff.next_delay(busy=busy)
            self._log.info(
                "reconnecting in %.1f s%s",
                delay,
                " (the broker took the connection but did not answer in time: it may be busy)"
                if busy
                else "",
            )
            # Waiting to reconnect is progress too: sleep in slices and say so.
            end = asyncio.get_running_loop().time() + delay
            while (left := end - asyncio.get_running_loop().time()) > 0:
                self._progress()
                await asyncio.sleep(min(1.0, left))
            self._progress()

    async def _connected_session(self, ctx: ssl.SSLContext, backoff: mqtt.Backoff) -> None:
        will = aiomqtt.Will(
            topics.up_state(self.gateway_id),
            wire.encode_message(self._state("offline")),
            qos=1,
            retain=True,
        )
        client = mqtt.Client(
            self._cfg.host,
            self._cfg.port,
            identifier=self.gateway_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            tls_context=ctx,
            keepalive=self._cfg.keepalive,
            clean_start=True,
            timeout=max(10.0, self._cfg.keepalive),
            connect_timeout=self._cfg.connect_timeout,
            logger=self._log.getChild("mqtt"),
        )
        self._attempt = client
        async with client:
            backoff.connected()
            await _subscribe(client, topics.down_ack(self.gateway_id))
            await _subscribe(client, topics.down_renew(self.gateway_id))
            if self._on_config is not None:
                await _subscribe(client, topics.down_config(self.gateway_id))
            await self._publish_state(client)
            self._uplink_state("connected")
            self._log.info("uplink connected to %s:%d", self._cfg.host, self._cfg.port)
            self.connected.set()
            self._window = self._cfg.max_inflight
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client), name="uplink-receive")
                    tg.create_task(self._send(client), name="uplink-send")
                    tg.create_task(self._report_state(client), name="uplink-state")
                    tg.create_task(self._renew(client), name="uplink-renew")
                    tg.create_task(self._send_reports(client), name="uplink-reports")
            except asyncio.CancelledError:
                # Shutting down: say so instead of letting the broker fire the will later.
                try:
                    async with asyncio.timeout(2):
                        await client.publish(
                            topics.up_state(self.gateway_id),
                            wire.encode_message(self._state("offline")),
                            qos=1,
                            retain=True,
                        )
                except (aiomqtt.MqttError, TimeoutError):
                    pass
                raise

    def _uplink_state(self, state: str) -> None:
        try:
            self._outbox.set_uplink_state(state)
        except BufferError as exc:  # for `outpost-agent status` only: not worth stopping for
            self._log.debug("cannot record the uplink state: %s", exc)

    async def _renew(self, client: aiomqtt.Client) -> None:
        """Check the certificate now and every ``RENEWAL_CHECK_S``; renew it when it is due."""
        while True:
            if self.renewer.due():
                request = self.renewer.request()
                try:
                    await client.publish(
                        topics.up_renew(self.gateway_id),
                        wire.encode_message(
                            wire.RenewRequest(request_id=request.request_id, csr=request.csr_pem)
                        ),
                        qos=1,
                    )
                    async with asyncio.timeout(RENEWAL_ANSWER_S):
                        answer: wire.RenewResponse | None = await request.answer
                except TimeoutError:
                    answer = None
                finally:
                    self.renewer.forget(request)
                if answer is None:
                    self._log.warning("no answer to the certificate renewal; trying again later")
                elif answer.status == "issued":
                    self.renewer.install(answer.certificate, request.key_pem)
                    raise _Reconnect
                else:
                    self._log.error(
                        "certificate renewal refused (%s): %s", answer.reason, answer.detail
                    )
            await asyncio.sleep(RENEWAL_CHECK_S)

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        await client.publish(
            topics.up_state(self.gateway_id),
            wire.encode_message(self._state("online")),
            qos=1,
            retain=True,
        )

    async def _report_state(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self._cfg.state_interval)
            await self._publish_state(client)

    async def _send(self, client: mqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        topic = topics.up_batch(self.gateway_id)
        timeout = self._cfg.ack_timeout
        while True:
            self._progress()
            now = loop.time()
            if self._hold_until > now:
                await asyncio.sleep(min(1.0, self._hold_until - now))
                continue
            late = self._tracker.expire(now, timeout)
            if late:
                self.retransmits += len(late)
                self._log.info("no ack within %.0f s for batches %s: sending again", timeout, late)
            self._wake.clear()
            free = self._window - len(self._tracker)
            batches = self._outbox.pick(free, exclude=self._tracker.seqs()) if free > 0 else []
            for batch in batches:
                if self._hold_until > loop.time():
                    break
                self._tracker.add(batch.seq, loop.time())
                code = await client.publish_answered(
                    topic, batch.payload, qos=1, properties=self._properties(batch.seq)
                )
                if code != 0:
                    self._not_taken(batch.seq, code)
                    break
            if batches:
                continue
            deadline = self._tracker.next_deadline(timeout)
            wait = 1.0 if deadline is None else max(0.01, min(1.0, deadline - loop.time()))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _not_taken(self, seq: int, code: int) -> None:
        """The broker answered a batch with something other than success: nobody will ack it.
        Keep it (it stays in the outbox), hold the sender a moment and send it again; the
        pause grows while the answer stays the same, and the window closes to one batch."""
        loop = asyncio.get_running_loop()
        self._tracker.discard(seq)
        self._window = 1
        delay = self._unrouted_backoff.next_delay()
        self._hold_until = max(self._hold_until, loop.time() + delay)
        if code == mqtt.NO_MATCHING_SUBSCRIBERS:
            self.unrouted += 1
            what = "no collector is subscribed (the broker just restarted?)"
            level = logging.INFO
        else:
            self.refused += 1
            what = f"the broker refused it (reason code 0x{code:02x})"
            level = logging.WARNING
        failures = self._unrouted_backoff.failures
        if failures <= 1 or failures % 20 == 0:
            self._log.log(
                level,
                "batch %d: %s; keeping it, sending again in %.1f s (%d time(s) in a row)",
                seq,
                what,
                delay,
                failures,
            )

    def _properties(self, seq: int) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [
            (wire.PROP_STREAM, self._outbox.stream_id),
            (wire.PROP_SEQ, str(seq)),
            (wire.PROP_BOOT, self._clock.boot_id),
            (wire.PROP_SENT_MONO, str(self._clock.mono_ns())),
            (wire.PROP_SENT_WALL, str(self._clock.wall_ns())),
        ]
        return props

    async def _send_reports(self, client: aiomqtt.Client) -> None:
        """Config reports (applied, rejected, rolled back) to ``P/up/config``."""
        while True:
            report = await self.reports.get()
            try:
                await client.publish(
                    topics.up_config(self.gateway_id), wire.encode_message(report), qos=1
                )
            except aiomqtt.MqttError:
                self.reports.put_nowait(report)  # again when connected
                raise

    async def _receive(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            if message.topic.matches(topics.down_config(self.gateway_id)):
                if self._on_config is not None and payload:
                    await self._on_config(bytes(payload))
                continue
            if message.topic.matches(topics.down_renew(self.gateway_id)):
                try:
                    self.renewer.deliver(wire.decode_renew_response(bytes(payload)))
                except wire.MessageRejected as exc:
                    self._log.warning("ignoring a message on %s: %s", message.topic, exc)
                continue
            try:
                msg = wire.decode_ack(bytes(payload))
            except wire.MessageRejected as exc:
                self._log.warning("ignoring a message on %s: %s", message.topic, exc)
                continue
            if msg.stream != self._outbox.stream_id:
                continue  # about a stream this buffer no longer holds
            in_flight = self._tracker.discard(msg.seq)
            if isinstance(msg, wire.Ack):
                self.acks += 1
                self.acked.set()
                rejected = msg.status == "quarantined"
                if rejected:
                    self._log.error(
                        "collector quarantined batch %d (%s): its readings are counted as dropped",
                        msg.seq,
                        msg.reason,
                    )
                try:
                    self._outbox.acknowledge(msg.seq, rejected=rejected)
                except BufferError as exc:
                    # The disk is full: the batch stays and is sent again; the collector acks
                    # it as a duplicate, and it is deleted then.
                    self._log.warning("cannot delete acked batch %d now: %s", msg.seq, exc)
                self._window = min(self._cfg.max_inflight, self._window + 1)
                self._unrouted_backoff.reset()
            else:
                self.nacks += 1
                delay = msg.retry_after_ms / 1000 * self._rng.uniform(1.0, 1.2)
                if msg.reason == "in_progress":
                    # Another collector replica is storing this batch: not congestion. Only this
                    # batch waits (kept in flight until its resend is due); the rest flows on.
                    if in_flight:
                        self._tracker.add(msg.seq, loop.time() + delay - self._cfg.ack_timeout)
                    self._log.info(
                        "batch %d is being stored by another collector replica; asking again"
                        " in %.1f s",
                        msg.seq,
                        delay,
                    )
                else:
                    self._hold_until = max(self._hold_until, loop.time() + delay)
                    self._window = max(1, self._window // 2)
                    self._log.log(
                        # Decommissioned: nothing will be accepted until a technician re-enrolls.
                        logging.ERROR if msg.reason == "revoked" else logging.INFO,
                        "collector nacked batch %d: %s%s%s; keeping it, next send in %.1f s",
                        msg.seq,
                        msg.reason,
                        f" ({msg.limit})" if msg.limit else "",
                        f": {msg.detail}" if msg.detail else "",
                        delay,
                    )
            self._wake.set()


async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
    """Subscribe, or end the session (to retry with backoff) when the broker refuses: a gateway
    enrolled a moment ago may not be on the broker's roster yet."""
    granted = await client.subscribe(topic, qos=1)
    codes = [c.value if isinstance(c, ReasonCode) else int(c) for c in granted]
    if any(c >= 0x80 for c in codes):
        raise aiomqtt.MqttError(
            f"the broker refused the subscription to {topic} (not authorized): this gateway is"
            " not on its roster yet; the collector adds enrolled gateways, retrying"
        )


def _describe(group: BaseExceptionGroup[aiomqtt.MqttError]) -> str:
    texts = []
    for exc in group.exceptions:
        text = str(exc)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            text = (
                f"TLS: the broker certificate does not verify against uplink.ca_file "
                f"({cause.verify_message})"
            )
        texts.append(text)
    return "; ".join(texts)
