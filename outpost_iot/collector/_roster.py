"""The broker's roster: each gateway's own topics, enforced by the broker itself.

Mosquitto's ACL file cannot restrict subscriptions, so a gateway could join the collectors'
shared subscription (``$share/collectors/…``) and take a share of every gateway's batches. The
generated broker config therefore uses Mosquitto's dynamic-security plugin, where every client
is listed with its role:

- the collector (``outpost-collector``): the gateways' topics and the plugin's control topic;
- each gateway (its certificate's CN): publish on its four ``up/`` topics only, subscribe to and
  receive its own ``down/#``. Nothing else: not another gateway's topics, not a shared
  subscription, not ``#``.

A certificate whose CN is not on the roster may connect (the CA signed it) but may do nothing.
The collector keeps the roster in step with enrollment over its own MQTT session
(``$CONTROL/dynamic-security/v1``): at every connect it adds the enrolled gateways the broker does
not list and removes the decommissioned ones (which also disconnects them); enrollment adds a
gateway at once, a decommission removes it within seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import secrets
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from outpost_iot.wire import topics

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
COLLECTOR_IDENTITY = "outpost-collector"
COLLECTOR_ROLE = "outpost-collector"
_CHUNK = 50  # gateways per control message (each is two commands)
_ANSWER_S = 10.0


def gateway_role(gateway_id: str) -> str:
    return f"outpost-gateway-{gateway_id}"


def gateway_acls(gateway_id: str) -> list[dict[str, Any]]:
    """What one gateway may do: its own up/ topics (literal: no sub-topics to fill with retained
    junk), its own down/#."""
    down = f"{topics.prefix(gateway_id)}/down/#"
    publish = [
        topics.up_batch(gateway_id),
        topics.up_state(gateway_id),
        topics.up_config(gateway_id),
        topics.up_renew(gateway_id),
    ]
    return [
        *({"acltype": "publishClientSend", "topic": t, "allow": True} for t in publish),
        {"acltype": "publishClientReceive", "topic": down, "allow": True},
        {"acltype": "subscribePattern", "topic": down, "allow": True},
    ]


def collector_acls() -> list[dict[str, Any]]:
    return [
        {"acltype": "publishClientSend", "topic": f"{topics.ROOT}/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{topics.ROOT}/#", "allow": True},
        {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "#", "allow": True},  # incl. $share and $CONTROL
    ]


def initial_config() -> dict[str, Any]:
    """The plugin's file as ``broker init`` writes it: nothing allowed unless a role says so."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": COLLECTOR_IDENTITY,
                "textname": "Outpost collector",
                "roles": [{"rolename": COLLECTOR_ROLE}],
            }
        ],
        "groups": [],
        "roles": [{"rolename": COLLECTOR_ROLE, "acls": collector_acls()}],
    }


def add_commands(gateway_ids: Iterable[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for gw in gateway_ids:
        out.append(
            {"command": "createRole", "rolename": gateway_role(gw), "acls": gateway_acls(gw)}
        )
        out.append(
            {
                "command": "createClient",
                "username": gw,
                "textname": "Outpost gateway",
                "roles": [{"rolename": gateway_role(gw)}],
            }
        )
    return out


def remove_commands(gateway_ids: Iterable[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for gw in gateway_ids:
        out.append({"command": "deleteClient", "username": gw})  # also disconnects it
        out.append({"command": "deleteRole", "rolename": gateway_role(gw)})
    return out


def _harmless(error: str) -> bool:
    """Errors that mean the roster already is as asked."""
    text = error.lower()
    return "already exists" in text or "not found" in text


class BrokerRoster:
    """Keeps the broker's roster in step with enrollment, over the collector's MQTT session.

    ``add`` and ``remove`` may be called from any thread; they return a future that is done when
    the broker has answered (or the attempt failed: the next connect's reconciliation repairs
    it).
    """

    def __init__(
        self,
        *,
        enrolled: Callable[[], set[str]],
        revoked: Callable[[], set[str]],
        logger: logging.Logger | None = None,
    ) -> None:
        self._enrolled = enrolled
        self._revoked = revoked
        self._log = logger or logging.getLogger("outpost.collector.roster")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, list[str], concurrent.futures.Future[bool]]] | None
        self._queue = None
        self._answers: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        # Every replica reads the one response topic: answers to ours carry our tag.
        self._tag = secrets.token_hex(4)
        self._removed: set[str] = set()
        self.available = False  # the broker answers the plugin's commands
        self._warned = False

    # -- any thread ---------------------------------------------------------------------------

    def add(self, gateway_id: str) -> concurrent.futures.Future[bool]:
        return self._submit("add", [gateway_id])

    def remove(self, gateway_ids: Iterable[str]) -> concurrent.futures.Future[bool]:
        return self._submit("remove", list(gateway_ids))

    def _submit(self, kind: str, ids: list[str]) -> concurrent.futures.Future[bool]:
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            done.set_result(False)  # not connected: the next connect reconciles
            return done
        loop.call_soon_threadsafe(queue.put_nowait, (kind, ids, done))
        return done

    def sync_revoked(self, revoked: set[str]) -> None:
        """Remove gateways decommissioned elsewhere (the CLI, another replica) once."""
        new = revoked - self._removed
        if new:
            self._removed |= new
            self.remove(sorted(new))

    # -- the collector's event loop ------------------------------------------------------------

    def on_message(self, payload: bytes) -> None:
        """A message on the plugin's response topic."""
        try:
            responses = orjson.loads(payload).get("responses", [])
        except (orjson.JSONDecodeError, AttributeError):
            return
        by_id: dict[str, list[dict[str, Any]]] = {}
        for r in responses if isinstance(responses, list) else []:
            if isinstance(r, dict) and isinstance(r.get("correlationData"), str):
                by_id.setdefault(r["correlationData"].split(":")[0], []).append(r)
        for request_id, answers in by_id.items():
            waiting = self._answers.pop(request_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(answers)

    async def run(self, client: aiomqtt.Client) -> None:
        """One broker session: subscribe to answers, reconcile, then apply changes as they
        come. Ends with the session."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        await client.subscribe(RESPONSE_TOPIC, qos=1)
        await self._reconcile(client)
        while True:
            kind, ids, done = await self._queue.get()
            commands = add_commands(ids) if kind == "add" else remove_commands(ids)
            ok = await self._send(client, commands)
            if kind == "add" and ok:
                self._log.info("broker roster: added gateway(s) %s", ", ".join(ids))
            elif ok:
                self._log.info("broker roster: removed gateway(s) %s", ", ".join(ids))
            if not done.done():
                done.set_result(ok)

    async def _reconcile(self, client: aiomqtt.Client) -> None:
        answers = await self._request(client, [{"command": "listClients", "verbose": False}])
        if answers is None:
            self.available = False
            if not self._warned:
                self._warned = True
                self._log.warning(
                    "the broker does not answer dynamic-security commands on %s: gateways' rights"
                    " rest on its own ACLs, which cannot stop a gateway from subscribing to"
                    " others' topics. Configure it with 'outpost-collector broker init' (see"
                    " docs/collector.md)",
                    CONTROL_TOPIC,
                )
            return
        self.available = True
        listed = set((answers[0].get("data") or {}).get("clients") or [])
        revoked = await asyncio.to_thread(self._revoked)
        enrolled = await asyncio.to_thread(self._enrolled)
        self._removed = set(revoked)
        missing = sorted(enrolled - revoked - listed)
        stale = sorted(revoked & listed)
        for i in range(0, len(missing), _CHUNK):
            await self._send(client, add_commands(missing[i : i + _CHUNK]))
        for i in range(0, len(stale), _CHUNK):
            await self._send(client, remove_commands(stale[i : i + _CHUNK]))
        if missing or stale:
            self._log.info(
                "broker roster: added %d enrolled gateway(s), removed %d decommissioned",
                len(missing),
                len(stale),
            )

    async def _send(self, client: aiomqtt.Client, commands: list[dict[str, Any]]) -> bool:
        answers = await self._request(client, commands)
        if answers is None:
            return False
        errors = [a["error"] for a in answers if a.get("error") and not _harmless(a["error"])]
        if errors:
            self._log.error("broker roster: the broker refused a change: %s", "; ".join(errors))
        return not errors

    async def _request(
        self, client: aiomqtt.Client, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """Send commands in one message; their answers, or None if none came in time."""
        request_id = f"{self._tag}-{next(self._ids)}"
        for i, command in enumerate(commands):
            command["correlationData"] = f"{request_id}:{i}"
        waiting: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = waiting
        try:
            await client.publish(CONTROL_TOPIC, orjson.dumps({"commands": commands}), qos=1)
            async with asyncio.timeout(_ANSWER_S):
                return await waiting
        except TimeoutError:
            return None
        finally:
            self._answers.pop(request_id, None)


def ask_broker(
    *,
    host: str,
    port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    commands: list[dict[str, Any]],
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Send dynamic-security commands with the collector's identity and return the broker's
    answers (for the CLI and tests; the running collector uses its own session). Raises
    :class:`RuntimeError` when the broker does not answer."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    answers: list[dict[str, Any]] = []
    answered = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.tls_set_context(ctx)
    # Everyone with access reads the one response topic: our answers are the ones we tagged.
    tag = f"cli-{secrets.token_hex(6)}"
    commands = [{**c, "correlationData": f"{tag}:{i}"} for i, c in enumerate(commands)]

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        for r in orjson.loads(msg.payload).get("responses", []):
            if str(r.get("correlationData", "")).startswith(tag + ":"):
                answers.append(r)
        if len(answers) >= len(commands):
            answered.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        client.connect(host, port)
    except OSError as exc:
        raise RuntimeError(f"cannot connect to the broker at {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(timeout):
            raise RuntimeError(f"the broker at {host}:{port} did not answer a subscription")
        client.publish(CONTROL_TOPIC, orjson.dumps({"commands": commands}), qos=1).wait_for_publish(
            timeout
        )
        if not answered.wait(timeout):
            raise RuntimeError(
                f"the broker at {host}:{port} does not answer dynamic-security commands; was it"
                " configured by 'outpost-collector broker init'?"
            )
    finally:
        client.loop_stop()
        client.disconnect()
    return answers


def register_now(*, gateway_ids: list[str], **broker: Any) -> None:
    """Add gateways to a running broker's roster and wait for its answer (development
    identities and tests; enrolled gateways are added by the collector)."""
    answers = ask_broker(commands=add_commands(gateway_ids), **broker)
    errors = [str(a["error"]) for a in answers if a.get("error") and not _harmless(a["error"])]
    if errors:
        raise RuntimeError(f"the broker refused: {'; '.join(errors)}")


def list_roster(**broker: Any) -> list[str]:
    """The identities on a running broker's roster."""
    [answer] = ask_broker(commands=[{"command": "listClients", "verbose": False}], **broker)
    if answer.get("error"):
        raise RuntimeError(f"the broker refused: {answer['error']}")
    return sorted((answer.get("data") or {}).get("clients") or [])
