"""Rollouts: one config change to many gateways, in waves, stopped when a wave goes wrong.

A rollout is made for the gateways of one tenant picked by site, tag or id. It carries either a
whole managed config or a patch (:func:`collector._configs.apply_patch`) laid over each
gateway's own newest desired config, so one change (an interval, a community, the broker) reaches
gateways whose devices differ. Each gateway's next version is validated, sealed and signed when
the rollout is made (so no secret waits in clear for a later wave); secrets the change does not
give are carried, sealed, from that gateway's previous version. Waves are given as sizes — ``1`` gateway, ``10%`` of them, ``100%`` (the rest) — and run
one after the other:

- a wave starts by storing and publishing each of its gateways' envelopes;
- a gateway's outcome is ``applied`` (it reported that version running), ``failed`` (it
  reported ``rejected`` or ``rolled_back`` for it, or, when the rollout says so, ``applied``
  with devices that refuse the new config), ``timed_out`` (no report within the
  per-gateway timeout: counted as a failure) or ``skipped`` (someone set a newer config for it
  meanwhile);
- when every gateway of the wave has an outcome: more than ``abort_percent`` failures aborts the
  rollout (the next waves never start), otherwise the next wave starts.

Operators can pause (no new wave starts), resume and abort. :meth:`RolloutService.step` does
the work; the collector calls it every few seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from outpost_iot.collector._configs import ConfigInvalid, ConfigRefused, ConfigService
from outpost_iot.collector._exceptions import StoreError
from outpost_iot.collector._stream import Hub
from outpost_iot.collector.stores import (
    ALL_TENANTS,
    AuditEntry,
    DesiredConfigRecord,
    DocumentStore,
    RolloutMember,
    RolloutRecord,
)

_WAVE = re.compile(r"^(\d+)(%?)$")


class RolloutError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def wave_sizes(spec: list[str], total: int) -> list[int]:
    """``["1", "10%", "100%"]`` over ``total`` gateways → sizes; the last wave takes the rest."""
    if not spec:
        raise RolloutError("bad_waves", "give at least one wave, e.g. 1,10%,100%")
    sizes: list[int] = []
    left = total
    for i, item in enumerate(spec):
        m = _WAVE.match(item.strip())
        if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
            raise RolloutError(
                "bad_waves", f"wave {item!r} is not a count (1) or a percentage (10%)"
            )
        n = int(m.group(1))
        size = math.ceil(total * n / 100) if m.group(2) else n
        if i == len(spec) - 1:
            size = left
        size = min(size, left)
        if size > 0:
            sizes.append(size)
        left -= size
        if left == 0:
            break
    if left > 0:
        sizes.append(left)
    return sizes


def wave_progress(rollout: RolloutRecord, members: list[RolloutMember]) -> list[dict[str, Any]]:
    """Per wave: its gateways, whether it started, and how many have each outcome so far."""
    waves = []
    for index in range(rollout.waves):
        ms = [m for m in members if m.wave == index]
        counts = {
            o: sum(1 for m in ms if m.outcome == o)
            for o in ("applied", "failed", "timed_out", "skipped")
        }
        waves.append(
            {
                "index": index,
                "gateways": len(ms),
                "started": any(m.started_ns is not None for m in ms),
                "pending": sum(1 for m in ms if m.outcome is None),
                **counts,
            }
        )
    return waves


def _few(ids: list[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


class RolloutService:
    def __init__(
        self,
        *,
        docs: DocumentStore,
        configs: ConfigService,
        now_ns: Callable[[], int] = time.time_ns,
        logger: logging.Logger | None = None,
        stream: Hub | None = None,
    ) -> None:
        self._docs = docs
        self._stream = stream
        self._configs = configs
        self._now = now_ns
        self._log = logger or logging.getLogger("outpost.collector.rollouts")

    def create(
        self,
        *,
        tenant: str,
        config: dict[str, Any] | None = None,
        patch: dict[str, Any] | None = None,
        actor: str,
        site: str | None = None,
        tag: str | None = None,
        gateway_ids: list[str] | None = None,
        waves: list[str],
        abort_percent: float = 0.0,
        timeout_s: float = 600.0,
        device_errors_fail: bool = False,
    ) -> str:
        """Check, seal for every target gateway, and store a rollout; its first wave starts at
        the next :meth:`step`. Give ``config`` (the whole managed config) or ``patch``."""
        if (config is None) == (patch is None):
            raise RolloutError("bad_change", "give either a config or a patch")
        targets = [
            g
            for g in self._docs.gateways(tenant)
            if not g.revoked_ns
            and (site is None or g.site == site)
            and (tag is None or tag in g.tags)
            and (gateway_ids is None or g.id in gateway_ids)
        ]
        if gateway_ids is not None:
            missing = sorted(set(gateway_ids) - {g.id for g in targets})
            if missing:
                raise RolloutError("unknown_gateway", f"no such gateways: {', '.join(missing)}")
        if not targets:
            raise RolloutError("no_gateways", "no gateway matches the target")
        sizes = wave_sizes(waves, len(targets))
        rollout_id = secrets.token_hex(4)
        members = []
        invalid: dict[tuple[str, str], list[str]] = {}  # (field, problem) → gateways
        index = 0
        for wave, size in enumerate(sizes):
            for g in targets[index : index + size]:
                actor_ = f"rollout:{rollout_id}"
                try:
                    if config is not None:
                        record = self._configs.prepare(g.id, config, actor_)
                    else:
                        assert patch is not None
                        record = self._configs.prepare_patch(g.id, patch, actor_)
                except ConfigRefused as exc:
                    raise RolloutError(exc.reason, f"{g.id}: {exc.detail}") from None
                except ConfigInvalid as exc:
                    for problem in exc.problems:
                        invalid.setdefault(problem, []).append(g.id)
                    continue
                members.append(
                    RolloutMember(
                        gateway_id=g.id,
                        wave=wave,
                        version=record.version,
                        issued_ns=record.issued_ns,
                        envelope=record.envelope,
                    )
                )
            index += size
        if invalid:
            raise ConfigInvalid(
                [
                    (f, p if len(ids) == len(targets) else f"{p} (gateways: {_few(ids)})")
                    for (f, p), ids in invalid.items()
                ]
            )
        self._docs.create_rollout(
            RolloutRecord(
                id=rollout_id,
                tenant=targets[0].tenant,
                actor=actor,
                created_ns=self._now(),
                waves=len(sizes),
                abort_percent=abort_percent,
                timeout_s=timeout_s,
                device_errors_fail=device_errors_fail,
            ),
            members,
        )
        self._log.info(
            "rollout %s: %d gateway(s) in %d wave(s) by %s",
            rollout_id,
            len(targets),
            len(sizes),
            actor,
        )
        self._changed(rollout_id)
        return rollout_id

    def _changed(self, rollout_id: str) -> None:
        """Tell the live stream how the rollout stands now."""
        if self._stream is None:
            return
        found = self._docs.rollouts(ALL_TENANTS, rollout_id=rollout_id)
        if not found:
            return
        r = found[0]
        progress = {
            "id": r.id,
            "status": r.status,
            "reason": r.reason,
            "current_wave": r.current_wave,
            "waves": wave_progress(r, self._docs.rollout_members(r.id)),
        }
        self._stream.publish("rollout", r.tenant, "", progress)

    def step(self) -> None:
        """Start due waves, collect outcomes, advance or abort. Call every few seconds."""
        for rollout in self._docs.rollouts(ALL_TENANTS, status="running"):
            try:
                self._step(rollout)
            except StoreError as exc:
                self._log.warning("rollout %s: %s", rollout.id, exc)

    def _step(self, rollout: RolloutRecord) -> None:
        now = self._now()
        wave = [m for m in self._docs.rollout_members(rollout.id) if m.wave == rollout.current_wave]
        unstarted = [m for m in wave if m.started_ns is None]
        started = [m.gateway_id for m in unstarted if self._start(rollout, m, now)]
        if started:
            self._audit(
                rollout, "rollout.wave_start", wave=rollout.current_wave + 1, gateways=started
            )
        decided = 0
        for m in self._docs.rollout_members(rollout.id):
            if m.wave != rollout.current_wave or m.outcome is not None:
                continue
            outcome = self._outcome(
                m, rollout.timeout_s, now, device_errors_fail=rollout.device_errors_fail
            )
            if outcome is not None:
                self._docs.update_rollout_member(rollout.id, m.gateway_id, outcome=outcome)
                decided += 1
        if self._finish_wave(rollout) or unstarted or decided:
            self._changed(rollout.id)

    def _finish_wave(self, rollout: RolloutRecord) -> bool:
        """Abort, complete or go on to the next wave once every gateway of this one has an
        outcome; True if it did."""
        wave = [m for m in self._docs.rollout_members(rollout.id) if m.wave == rollout.current_wave]
        if any(m.outcome is None for m in wave):
            return False
        failed = [m for m in wave if m.outcome in ("failed", "timed_out")]
        share = 100.0 * len(failed) / len(wave)
        if share > rollout.abort_percent:
            reason = (
                f"wave {rollout.current_wave + 1}: {len(failed)} of {len(wave)} gateways "
                f"failed or timed out ({share:.0f} % > {rollout.abort_percent:g} %)"
            )
            self._docs.update_rollout(rollout.id, status="aborted", reason=reason)
            self._audit(rollout, "rollout.aborted", reason=reason)
            self._log.warning("rollout %s aborted: %s", rollout.id, reason)
        elif rollout.current_wave + 1 >= rollout.waves:
            self._docs.update_rollout(rollout.id, status="completed")
            self._audit(rollout, "rollout.completed")
            self._log.info("rollout %s completed", rollout.id)
        else:
            self._docs.update_rollout(rollout.id, current_wave=rollout.current_wave + 1)
            self._log.info("rollout %s: wave %d starts", rollout.id, rollout.current_wave + 2)
        return True

    def _audit(self, rollout: RolloutRecord, action: str, **detail: object) -> None:
        self._docs.audit(
            AuditEntry(
                self._now(),
                f"rollout:{rollout.id}",
                rollout.tenant,
                action,
                rollout.id,
                "collector",
                detail,
            )
        )

    def _start(self, rollout: RolloutRecord, m: RolloutMember, now: int) -> bool:
        """Publish a member's config; False if another replica had just done it."""
        record = DesiredConfigRecord(
            m.gateway_id, m.version, m.issued_ns, f"rollout:{rollout.id}", m.envelope
        )
        outcome = None
        try:
            self._configs.commit(record)
        except ConfigRefused:
            newest = self._docs.desired_configs(m.gateway_id, limit=1)
            ours = bool(newest) and newest[0].envelope == m.envelope
            # Another replica started this member a moment ago (every replica steps rollouts):
            # it is started, not skipped. Otherwise a newer config was set for it meanwhile.
            if ours:
                self._docs.update_rollout_member(rollout.id, m.gateway_id, started_ns=now)
                return False
            outcome = "skipped"
        self._docs.update_rollout_member(rollout.id, m.gateway_id, started_ns=now, outcome=outcome)
        return True

    def _outcome(
        self, m: RolloutMember, timeout_s: float, now: int, *, device_errors_fail: bool
    ) -> str | None:
        report = self._docs.config_report(m.gateway_id)
        if report is not None and report.version == m.version:
            if report.status == "applied" and report.applied_version == m.version:
                if device_errors_fail and report.reason == "device_errors":
                    return "failed"  # it runs, but a device refuses it (credentials, say)
                return "applied"
            if report.status in ("rejected", "rolled_back"):
                return "failed"
        if report is not None and report.applied_version > m.version:
            return "applied"  # it runs a newer version already
        assert m.started_ns is not None  # _step starts every member of its wave first
        if now - m.started_ns > timeout_s * 1e9:
            return "timed_out"
        return None

    def control(self, tenant: str, rollout_id: str, action: str) -> RolloutRecord:
        """``pause``, ``resume`` or ``abort`` a rollout of the tenant."""
        found = self._docs.rollouts(tenant, rollout_id=rollout_id)
        if not found:
            raise RolloutError("not_found", f"no rollout {rollout_id!r}")
        rollout = found[0]
        allowed = {"pause": ("running",), "resume": ("paused",), "abort": ("running", "paused")}
        if rollout.status not in allowed[action]:
            raise RolloutError(
                "conflict", f"rollout {rollout_id} is {rollout.status}; cannot {action} it"
            )
        status = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
        reason = "aborted by an operator" if action == "abort" else rollout.reason
        self._docs.update_rollout(rollout_id, status=status, reason=reason)
        self._changed(rollout_id)
        return dataclasses.replace(rollout, status=status, reason=reason)
