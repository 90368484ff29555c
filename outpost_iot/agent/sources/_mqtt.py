"""Devices on the site's local MQTT broker (Tasmota, Zigbee2MQTT, Shelly, ESPHome, Frigate).

Subscribes to the topics the profile's rules name, maps every message with the profile, and
hands readings and events to the buffer in small groups (a quarter second, or 256 readings,
whichever comes first), so a busy sensor network does not cost one disk sync per message and a
burst does not pile up in memory. If the local broker goes away, the device
entry becomes unavailable (an event) and the source reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from outpost_iot import mqtt
from outpost_iot.agent._clock import Clock
from outpost_iot.agent.profiles import Mapper, Profile, decode_mqtt_payload
from outpost_iot.agent.sources._base import Submit
from outpost_iot.wire import Event, LogThrottle, Reading, printable

_FLUSH_S = 0.25
# ... or as soon as this many readings and events wait: what sits in memory between the site
# broker and the buffer stays this small however fast a burst comes (measured: 20,000
# messages handed over 2,500 at a time cost 13 MiB at the peak, 256 at a time under 1 MiB).
# While the buffer commits, the event loop does not read the socket: the burst waits in the
# kernel's socket buffer and then at the site broker (TCP flow control), not in the agent.
FLUSH_AT = 256
# A site-broker message past this is not parsed: counted as a drop (no device sends a
# reading this large; Frigate's stats, the largest we read, are a few kilobytes).
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_TOPIC_CHARS = 1024
DROP_TOO_LARGE = "message_too_large"


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int

    @classmethod
    def parse(cls, target: str) -> MqttTarget:
        parts = urlsplit(target)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"{target!r}: use mqtt://host[:port] for MQTT devices")
        if parts.username or parts.password:
            raise ValueError(f"{target!r}: put credentials in username/password, not in the URL")
        return cls(parts.hostname, parts.port or 1883)

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


class MqttDeviceSource:
    """One profile on one local broker; every device the profile recognizes there."""

    def __init__(
        self,
        *,
        name: str,
        profile: Profile,
        target: MqttTarget,
        clock: Clock,
        username: str | None = None,
        password: str | None = None,
        variables: dict[str, str] | None = None,
        logger: logging.Logger | None = None,
        observe: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self._profile = profile
        self._clock = clock
        self._username = username
        self._password = password
        self.mapper = Mapper(profile, variables=variables, device=name)
        self._log = logger or logging.getLogger(f"outpost.agent.source.{name}")
        self.connected = asyncio.Event()
        self.messages = 0
        self._observe = observe  # sees every message as the rules do (the probe's diagnosis)
        self._was_unavailable = False
        self._too_large_logged = LogThrottle(60.0)
        # A site broker is on the local network: tried again within a second at first, and
        # never more than half a minute apart.
        self._backoff = mqtt.Backoff(base=1.0, cap=30.0)

    async def run(self, submit: Submit) -> None:
        """Run until cancelled, reconnecting to the local broker when it goes away."""
        while True:
            try:
                await mqtt.run_session(self.session(submit), name=f"session:{self.name}")
            except aiomqtt.MqttError as exc:
                self._unavailable(submit, str(exc))
            await asyncio.sleep(self._backoff.next_delay())

    def _unavailable(self, submit: Submit, why: str) -> None:
        self.connected.clear()
        self._was_unavailable = True
        event = self.mapper.availability_event(self.name, "offline", self._clock.wall_ns())
        if event is not None:
            self._log.warning("%s: local broker %s unavailable: %s", self.name, self.target, why)
            submit([], [event], {})

    def _too_large(self, topic: str, size: int) -> None:
        if self._too_large_logged.ready("too_large"):
            self._log.warning(
                "%s: dropped a message of %d bytes on a topic of %d characters (%s); the limits"
                " are %d bytes and %d characters",
                self.name,
                size,
                len(topic),
                printable(topic, 80),
                MAX_PAYLOAD_BYTES,
                MAX_TOPIC_CHARS,
            )

    async def session(self, submit: Submit) -> None:
        """One connection to the local broker, until it ends (``MqttError``) or is cancelled."""
        async with mqtt.Client(
            self.target.host,
            self.target.port,
            username=self._username,
            password=self._password,
            identifier=f"outpost-{self.name}-{random.getrandbits(32):08x}",
            keepalive=30,
            max_buffered_messages=FLUSH_AT,  # past that, the site broker holds the burst
            logger=self._log.getChild("mqtt"),
        ) as client:
            for topic in self.mapper.mqtt_filters():
                await client.subscribe(topic, qos=1)
            self.connected.set()
            self._backoff.connected()
            back = self.mapper.availability_event(self.name, "online", self._clock.wall_ns())
            if back is not None and self._was_unavailable:  # back after an outage
                self._log.info("%s: local broker %s is back", self.name, self.target)
                submit([], [back], {})
            self._log.info("%s: listening on %s for %s", self.name, self.target, self._profile.name)
            pending_r: list[Reading] = []
            pending_e: list[Event] = []
            drops: Counter[str] = Counter()

            def flush() -> None:
                if pending_r or pending_e or drops:
                    submit(list(pending_r), list(pending_e), dict(drops))
                    pending_r.clear()
                    pending_e.clear()
                    drops.clear()

            async def flush_loop() -> None:
                while True:
                    await asyncio.sleep(_FLUSH_S)
                    flush()

            flusher = asyncio.create_task(flush_loop(), name=f"flush:{self.name}")
            try:
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes | bytearray | str):
                        continue
                    self.messages += 1
                    topic = str(message.topic)
                    if len(payload) > MAX_PAYLOAD_BYTES or len(topic) > MAX_TOPIC_CHARS:
                        drops[DROP_TOO_LARGE] += 1
                        self._too_large(topic, len(payload))
                        continue
                    decoded = decode_mqtt_payload(
                        self._profile,
                        bytes(payload) if not isinstance(payload, str) else payload,
                    )
                    if self._observe is not None:
                        self._observe(topic, decoded)
                    out = self.mapper.apply(topic, decoded, self._clock.wall_ns())
                    pending_r.extend(out.readings)
                    pending_e.extend(out.events)
                    drops.update(out.drops)
                    if len(pending_r) + len(pending_e) >= FLUSH_AT:
                        flush()
            finally:
                flusher.cancel()
                flush()
