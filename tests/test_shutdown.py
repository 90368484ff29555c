"""A stop request stops every reconnect loop, even when the MQTT client fails on the way out.

On Python 3.11 a task group re-raises its children's errors in place of the cancellation, and
aiomqtt's ``__aexit__`` can raise ``MqttError`` while disconnecting. A reconnect loop that
catches ``MqttError`` then reconnects instead of stopping: the service never stops (CI once hung
five minutes on this in the collector). Each loop is given a session that fails like that when
cancelled; the loop must still end with ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from outpost_iot import mqtt
from outpost_iot.agent import Outbox, SystemClock, load_config
from outpost_iot.agent._uplink import Uplink
from outpost_iot.agent.profiles import find_profile
from outpost_iot.agent.sources._mqtt import MqttDeviceSource, MqttTarget
from outpost_iot.collector import CollectorService
from outpost_iot.dev._processes import Mosquitto, agent_config
from outpost_iot.mqtt import run_session
from outpost_iot.wire import GatewayState
from tests.collector.test_ingest import Env


class _Abandoned(BaseException):
    """Ends a loop that failed the test: no ``except`` in the product catches it."""


def failing_session(started: asyncio.Event, *, in_task_group: bool) -> Callable[..., object]:
    """A session that raises ``MqttError`` when cancelled: from a child of its task group (as
    the collector's and the uplink's sessions have) or from the client's ``__aexit__``."""

    async def wait_then_fail() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise aiomqtt.MqttError("Disconnected during message iteration") from None

    async def session(*_args: object, **_kwargs: object) -> None:
        if started.is_set():  # called again: the loop reconnected instead of stopping
            raise _Abandoned()
        started.set()
        if not in_task_group:
            await wait_then_fail()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(wait_then_fail())

    return session


async def stops_when_cancelled(run: Callable[[], object], started: asyncio.Event) -> None:
    task = asyncio.ensure_future(run())  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the loop neither stopped nor reconnected"
    if not task.cancelled():
        pytest.fail(f"the loop swallowed the cancellation and went on: {task.exception()!r}")


async def test_run_session_turns_a_stop_into_cancelled_error() -> None:
    started = asyncio.Event()
    session = failing_session(started, in_task_group=True)

    async def loop() -> None:
        while True:
            try:
                await run_session(session())  # type: ignore[arg-type]
            except* aiomqtt.MqttError:
                pass
            await asyncio.sleep(0.05)

    await stops_when_cancelled(loop, started)


async def test_run_session_lets_a_loop_reconnect_after_a_session_error() -> None:
    """The other half: a session that fails on its own is retried, not taken for a stop.

    On 3.11 a task group whose child fails while the group is already exiting leaves the
    parent's ``cancelling()`` at 1 for good, so a loop that checked it would stop for no reason
    (the uplink did, after a certificate renewal).
    """
    sessions = 0

    async def fail_soon() -> None:
        await asyncio.sleep(0.01)
        raise aiomqtt.MqttError("Disconnected")

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fail_soon())

    async def loop() -> None:
        while sessions < 3:
            try:
                await run_session(session())
            except* aiomqtt.MqttError:
                pass

    await asyncio.wait_for(loop(), 5)
    assert sessions == 3


async def test_the_collector_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()
    monkeypatch.setattr(CollectorService, "_session", failing_session(started, in_task_group=True))
    env = Env(tmp_path)
    try:
        service = CollectorService(
            broker=env.cfg.broker, ingestor=env.ingestor, documents=env.docs, dedup_window_s=3600
        )
        await stops_when_cancelled(service.run, started)
    finally:
        env.close()


async def test_the_agent_uplink_stops(
    broker: Mosquitto, identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    monkeypatch.setattr(Uplink, "_connected_session", failing_session(started, in_task_group=True))
    cfg = load_config(
        agent_config(
            tmp_path / "agent.toml",
            gateway_id="gw-1",
            port=broker.port,
            identity=identity("gw-1"),
            state_dir=tmp_path / "state",
        )
    )
    clock = SystemClock()
    with Outbox(path=cfg.buffer_path, gateway_id="gw-1", clock=clock, max_bytes=1 << 20) as ob:
        uplink = Uplink(
            gateway_id="gw-1",
            config=cfg.uplink,
            outbox=ob,
            clock=clock,
            state=lambda _status: GatewayState(state="online", ts=clock.wall_ns(), boot_id="b"),
        )
        await stops_when_cancelled(uplink.run, started)


async def test_a_site_broker_source_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()
    monkeypatch.setattr(MqttDeviceSource, "session", failing_session(started, in_task_group=False))
    src = MqttDeviceSource(
        name="site",
        profile=find_profile("tasmota"),
        target=MqttTarget("127.0.0.1", 1),
        clock=SystemClock(),
    )
    await stops_when_cancelled(lambda: src.run(lambda readings, events, drops: None), started)


@pytest.mark.parametrize("client_class", [mqtt.Client, aiomqtt.Client])
async def test_a_reply_arriving_with_a_stop_request_does_not_swallow_it(
    client_class: type[aiomqtt.Client],
) -> None:
    """The PUBACK (or SUBACK, CONNACK) and the stop request land in one loop iteration.

    aiomqtt's own wait (``asyncio.wait_for`` on 3.11) returns the reply and forgets the stop,
    which is how an agent once went on sending for 10 s after SIGTERM. It is kept in the
    parameters to show the test sees the difference; on Python 3.12+ both stop.
    """
    client = client_class("127.0.0.1", 1, timeout=10)
    reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    went_on = False

    async def sender() -> None:
        nonlocal went_on
        await client._wait_for(reply, timeout=None)
        went_on = True

    task = asyncio.create_task(sender())
    await asyncio.sleep(0)  # the sender is waiting for the reply
    reply.set_result(None)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    if client_class is aiomqtt.Client and sys.version_info < (3, 12):
        assert went_on, "aiomqtt's wait no longer drops the stop: mqtt.Client may go"
    else:
        assert task.cancelled()
        assert not went_on


def test_aiomqtt_still_waits_through_the_method_the_client_replaces() -> None:
    for method in (aiomqtt.Client.publish, aiomqtt.Client.subscribe, aiomqtt.Client.__aenter__):
        assert "self._wait_for(" in inspect.getsource(method), method.__qualname__
