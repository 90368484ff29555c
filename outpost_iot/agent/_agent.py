"""The agent runtime: sources → outbox → batcher → uplink, in one task group."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from outpost_iot import wire
from outpost_iot.agent._buffer import DROP_UNWRITABLE, DROP_UNWRITABLE_EVENT, Outbox
from outpost_iot.agent._clock import Clock
from outpost_iot.agent._config import (
    AgentConfig,
    DeviceConfig,
    HostSourceConfig,
    SimulatedSourceConfig,
)
from outpost_iot.agent._edge_alarms import EdgeAlarms
from outpost_iot.agent._exceptions import BufferError
from outpost_iot.agent._managed import ConfigReceiver
from outpost_iot.agent._uplink import Uplink
from outpost_iot.agent.profiles import Mapper, Profile, find_profile
from outpost_iot.agent.sources import HostSource, SimulatedSource, Source
from outpost_iot.agent.sources._base import PushSource
from outpost_iot.agent.sources._polling import DROP_POLL_SKIPPED, DeviceClient, PolledDevice
from outpost_iot.agent.sources._transports import transport_of
from outpost_iot.systemd import Notifier, ProgressMonitor, feed_watchdog


def agent_version() -> str:
    return wire.installed_version()


def build_push_sources(config: AgentConfig, clock: Clock) -> list[PushSource]:
    """Sources that receive data as it comes (MQTT devices)."""
    out: list[PushSource] = []
    for device in config.devices:
        push = transport_of(device).push
        if push is not None:
            out.append(push(device, find_profile(device.profile), clock))
    return out


def make_device_client(device: DeviceConfig, profile: Profile) -> DeviceClient:
    """The client that asks ``device`` (HTTP, UniFi or SNMP), with its credentials."""
    client = transport_of(device).client
    if client is None:
        raise ValueError(f"device {device.name}: {device.target!r} is not asked, it publishes")
    return client(device, profile)


def build_polled_devices(config: AgentConfig, clock: Clock) -> list[PolledDevice]:
    """Devices that are asked on an interval (HTTP, UniFi, SNMP)."""
    out: list[PolledDevice] = []
    for device in config.devices:
        if transport_of(device).client is None:
            continue
        profile = find_profile(device.profile)
        out.append(
            PolledDevice(
                name=device.name,
                client=make_device_client(device, profile),
                mapper=Mapper(profile, variables=device.variables, device=device.name),
                interval=device.interval or profile.profile.interval,
                clock=clock,
                timeout=device.timeout,
            )
        )
    return out


def build_sources(config: AgentConfig, clock: Clock) -> list[Source]:
    sources: list[Source] = []
    for sc in config.sources:
        if isinstance(sc, HostSourceConfig):
            sources.append(
                HostSource(name=sc.name, interval=sc.interval, clock=clock, profile=sc.profile)
            )
        elif isinstance(sc, SimulatedSourceConfig):
            sources.append(
                SimulatedSource(
                    name=sc.name,
                    interval=sc.interval,
                    devices=sc.devices,
                    clock=clock,
                    events_every=sc.events_every,
                )
            )
    return sources


class _Restart(Exception):
    """Leave the task group and start again with the config just written."""


class Agent:
    """Everything that runs on the gateway. Construct in ``main`` and ``await run()``."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        clock: Clock,
        outbox: Outbox,
        sources: Sequence[Source],
        push_sources: Sequence[PushSource] = (),
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        notifier: Notifier | None = None,
        monitor: ProgressMonitor | None = None,
        receiver: ConfigReceiver | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier or Notifier({})
        self.monitor = monitor or ProgressMonitor()
        self.outbox = outbox
        self._clock = clock
        self._sources = list(sources)
        self._push_sources = list(push_sources)
        self._log = logger or logging.getLogger("outpost.agent")
        self._rng = rng or random.Random()
        self._appended = 0
        self._batch_due = asyncio.Event()
        self._receiver = receiver
        self._deferred: bytes | None = None
        self.restart_requested = False
        self._restart = asyncio.Event()
        self._unrecorded: Counter[str] = Counter()  # drops not yet in the buffer (it failed)
        self.edge_alarms = EdgeAlarms(config.gateway_id, config.alarms)
        self._unwritable_logged = wire.LogThrottle(60.0)
        self.uplink = Uplink(
            gateway_id=config.gateway_id,
            config=config.uplink,
            outbox=outbox,
            clock=clock,
            state=self.state_message,
            logger=self._log.getChild("uplink"),
            rng=self._rng,
            on_progress=lambda: self.monitor.beat("uplink"),
            on_config=self._on_config if receiver is not None else None,
        )

    def state_message(self, state: str) -> wire.GatewayState:
        stats = self.outbox.stats()
        oldest = (
            max(0.0, (self._clock.wall_ns() - stats.oldest_unsent_ns) / 1e9)
            if stats.oldest_unsent_ns is not None
            else None
        )
        return wire.GatewayState(
            state="online" if state == "online" else "offline",
            ts=self._clock.wall_ns(),
            boot_id=self._clock.boot_id,
            agent_version=agent_version(),
            stream=stats.stream_id,
            backlog_batches=stats.batches,
            backlog_readings=stats.backlog_readings,
            oldest_unsent_s=oldest,
            last_ack_ts=stats.last_ack_ns,
            drops=stats.drops,
            buffer_reset=stats.reset[:2048],
        )

    def submit(
        self,
        readings: Sequence[wire.Reading],
        events: Sequence[wire.Event] = (),
        drops: Mapping[str, int] | None = None,
    ) -> None:
        """Hand readings to the buffer (committed on return) and wake the batcher if due;
        ``drops`` counts what a source could not turn into readings, by reason.

        When the buffer cannot be written (its filesystem is full, an I/O error), what was
        handed over is counted as ``buffer_unwritable`` (in memory until a later commit
        succeeds, then recorded with it) and the source goes on: nothing is dropped
        uncounted, and no source stops because the disk is full.
        """
        if readings:  # edge alarm rules: their events go into the same commit
            raised, invalid = self.edge_alarms.check(readings)
            if raised:
                events = [*events, *raised]
            if invalid:
                drops = {**(drops or {}), "invalid_event": (drops or {}).get("invalid_event", 0) + invalid}  # fmt: skip
        owed = self._unrecorded
        counts = Counter(drops or {})
        counts.update(owed)
        try:
            self.outbox.append(readings, events, drops=counts)
        except BufferError as exc:
            owed[DROP_UNWRITABLE] += len(readings)
            owed[DROP_UNWRITABLE_EVENT] += len(events)
            for reason, n in (drops or {}).items():
                owed[reason] += n
            if self._unwritable_logged.ready("submit"):
                self._log.error(
                    "cannot write the buffer (%s): %d readings and %d events dropped and counted"
                    " so far; they are recorded once the buffer can be written again",
                    exc,
                    owed[DROP_UNWRITABLE],
                    owed[DROP_UNWRITABLE_EVENT],
                )
            return
        owed.clear()
        self._appended += len(readings) + len(events)
        if self._appended >= self.config.buffer.batch_max_readings:
            self._batch_due.set()

    async def run(self) -> None:
        self._log.info(
            "agent %s starting: gateway %s, buffer %s, %d source(s)",
            agent_version(),
            self.config.gateway_id,
            self.outbox.path,
            len(self._sources) + len(self._push_sources),
        )
        self.monitor.register("batcher")
        self.monitor.register("uplink")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._batcher(), name="batcher")
                tg.create_task(self.uplink.run(), name="uplink")
                for source in self._sources:
                    tg.create_task(self._poll(source), name=f"source:{source.name}")
                for push in self._push_sources:
                    tg.create_task(push.run(self.submit), name=f"device:{push.name}")
                tg.create_task(
                    feed_watchdog(
                        self._notifier, self.monitor, status=self._status, logger=self._log
                    ),
                    name="watchdog",
                )
                if self._receiver is not None:
                    tg.create_task(self._config_guard(self._receiver), name="config-guard")
                tg.create_task(self._restart_when_asked(), name="restart")
                tg.create_task(self.edge_alarms.run(), name="alarms")
                self._notifier.ready(self._status())
        except* _Restart:
            self.restart_requested = True
            self._log.info("restarting into the new configuration")
        finally:
            self._notifier.stopping()

    async def _restart_when_asked(self) -> None:
        await self._restart.wait()
        raise _Restart()

    async def _on_config(self, payload: bytes) -> None:
        """A desired config arrived: open, validate, apply (and restart) or report why not."""
        assert self._receiver is not None
        if self._receiver.state.pending is not None:
            self._deferred = payload  # looked at once the config on trial is confirmed
            return
        report, restart = await asyncio.to_thread(self._receiver.receive, payload)
        if report is not None:
            self._log.warning(
                "config %d refused: %s: %s", report.version, report.reason, "; ".join(report.errors)
            )
            self.uplink.reports.put_nowait(report)
        if restart:
            self._restart.set()

    async def _config_guard(self, receiver: ConfigReceiver) -> None:
        """Confirm a newly applied config at the first ack, or roll it back after the grace."""
        state = receiver.state
        outcome = state.take_outcome()
        if outcome is not None:
            try:
                self.uplink.reports.put_nowait(wire.ConfigReport(**outcome))
            except (TypeError, ValueError) as exc:  # a damaged file must not stop the agent
                self._log.error("cannot report the last config outcome (%s): %s", outcome, exc)
        pending = state.pending
        if pending is None:
            return
        grace = self.config.uplink.config_grace_s
        left = grace - (self._clock.wall_ns() - int(pending["since_ns"])) / 1e9
        try:
            async with asyncio.timeout(max(left, 1.0)):
                await self._working_uplink()
        except TimeoutError:
            rolled = state.roll_back("no_ack_within_grace", self._clock.wall_ns())
            self._log.error(
                "config %d: no ack from the collector within %.0f s; back to the last good config",
                rolled,
                grace,
            )
            self._restart.set()
            return
        version = state.confirm()
        if version is not None:
            self._log.info("config %d confirmed by the collector's ack", version)
            errors = await self._device_errors()
            self.uplink.reports.put_nowait(
                wire.ConfigReport(
                    version=version,
                    status="applied",
                    applied_version=version,
                    reason="device_errors" if errors else "",
                    errors=wire.ConfigReport.fit_errors(errors),
                    ts=self._clock.wall_ns(),
                )
            )
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            await self._on_config(deferred)  # a newer config that came during the trial

    async def _device_errors(self, wait_s: float = 15.0) -> list[str]:
        """After a config change: each polled device's first answer, and the errors of those
        that refused (credentials, TLS, timeouts), in the device's own words."""
        devices = [d for d in self._push_sources if isinstance(d, PolledDevice)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        # The devices' counters change in their own tasks: look at them a few times a second.
        while loop.time() < deadline and any(d.polls + d.failures == 0 for d in devices):  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        return [f"{d.name}: {d.last_error}" for d in devices if d.last_error]

    async def _working_uplink(self) -> None:
        """Return once the collector acks a batch, or the uplink has been up with nothing to
        send for 10 s (a config with nothing to collect gets no acks)."""
        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self.uplink.acked.is_set():
            idle = self.uplink.connected.is_set() and self.outbox.stats().batches == 0
            if idle:
                quiet_since = quiet_since or loop.time()
                if loop.time() - quiet_since >= 10:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.5)

    def _status(self) -> str:
        stats = self.outbox.stats()
        link = "connected" if self.uplink.connected.is_set() else "not connected"
        return (
            f"{link}; backlog {stats.backlog_readings} readings; drops {sum(stats.drops.values())}"
        )

    async def _batcher(self) -> None:
        delay = self.config.buffer.batch_max_delay
        loop = asyncio.get_running_loop()
        while True:
            deadline = loop.time() + delay
            while not self._batch_due.is_set() and (left := deadline - loop.time()) > 0:
                self.monitor.beat("batcher")  # waiting for readings is not a stall
                try:
                    async with asyncio.timeout(min(left, 0.5)):
                        await self._batch_due.wait()
                except TimeoutError:
                    pass
            self.monitor.beat("batcher")
            self._batch_due.clear()
            self._appended = 0
            formed = 0
            try:
                while self.outbox.form_batch() is not None:
                    formed += 1
                    if formed % 8 == 0:
                        await asyncio.sleep(0)  # let the sender and sources run meanwhile
            except BufferError as exc:  # the disk is full: the readings wait, pending
                if self._unwritable_logged.ready("batch"):
                    self._log.error("cannot form batches now (%s); trying again", exc)
            if formed:
                self.uplink.notify()

    async def _poll(self, source: Source) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(5.0, source.interval)):
                    collection = await asyncio.to_thread(source.collect)
            except TimeoutError:
                self._log.warning("source %s did not answer within its timeout", source.name)
            except Exception as exc:  # a failing source must not stop the others
                self._log.warning("source %s failed: %s", source.name, exc)
            else:
                collected = loop.time()
                self.submit(collection.readings, collection.events, collection.drops)
                # A collection that came late is not followed by one on time: two readings of
                # a series a moment apart say nothing more, and a store that keeps milliseconds
                # (VictoriaMetrics) would keep only one of them.
                next_at = max(next_at, collected - source.interval / 2)
            next_at += source.interval
            now = loop.time()
            if next_at < now:  # overran: skip the missed ticks instead of bursting, and count
                missed = int((now - next_at) // source.interval) + 1
                self.submit([], [], {DROP_POLL_SKIPPED: missed})
                next_at = now + source.interval
            jitter = self._rng.uniform(0, min(0.05 * source.interval, 1.0))
            await asyncio.sleep(next_at - now + jitter)
