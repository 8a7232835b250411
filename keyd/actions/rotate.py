"""The rotation stage (README "Rotation"): plan the keys that are due, then
move every open rotation whose next attempt is due (``rotation_steps``).

``rotate_due`` runs each tick of ``keyd run`` and in ``keyd check``;
``rotate_key`` is ``keyd rotate KEY_ID`` (now, ignoring ``before``; a
failed rotation is resumed from where it failed). ``plan_rotations`` is
the dry-run half: it lists what would be done and calls nothing that
changes ZITADEL, a file or Vault.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyd.actions.rotation_services import RotationServices
from keyd.actions.rotation_steps import advance
from keyd.checks.rotation import (
    RotationPolicy,
    candidate_window,
    due_reason,
    new_expiry,
    selected,
)
from keyd.errors import UsageError
from keyd.store import rotations as store
from keyd.store.keys import KeyRecord
from keyd.store.rotations import RotationRow
from keyd.store.snapshot import Engine
from keyd.timeutil import isoformat_z
from keyd.vocab import KeyKind, KeyStatus, RotationEvent, RotationReason, RotationState, RotationStep

log = logging.getLogger(__name__)

APPLICATION_NOT_ROTATED = (
    "application keys are not rotated by keyd (ZITADEL's app-key API); they keep the alert path"
)


@dataclass
class RotationReport:
    at: datetime
    planned: list[str] = field(default_factory=list)
    rows: list[RotationRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.state] = out.get(row.state, 0) + 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts().items()))
        return f"{len(self.planned)} planned, {len(self.rows)} advanced" + (f" ({counts})" if counts else "")


def due_keys(engine: Engine, policy: RotationPolicy, now: datetime) -> list[tuple[KeyRecord, str]]:
    """The keys a rotation would start for at ``now``, with the reason."""
    if not policy.enabled:
        return []
    before, seen = candidate_window(now, policy)
    out: list[tuple[KeyRecord, str]] = []
    for key in store.candidates(engine, expiring_before=before, seen_before=seen):
        reason = due_reason(key, now, policy)
        if reason is not None:
            out.append((key, reason))
    return out


def rotate_due(engine: Engine, services: RotationServices, now: datetime) -> RotationReport:
    """Plan every due key, then advance every open rotation that is due."""
    report = RotationReport(at=now)
    policy = services.policy
    for key, reason in due_keys(engine, policy, now):
        row = store.plan(
            engine,
            key,
            now=now,
            reason=reason,
            algorithm=policy.algorithm,
            new_expires_at=new_expiry(now, policy),
        )
        if row is not None:
            log.info("rotation of %s (%s) planned: %s", key.key_id, key.principal, reason)
            report.planned.append(key.key_id)
    for row in store.open_rotations(engine, now):
        report.rows.append(_advance_one(engine, services, row))
    if report.planned or report.rows:
        log.info("rotation round: %s", report.summary())
    return report


def _advance_one(engine: Engine, services: RotationServices, row: RotationRow) -> RotationRow:
    try:
        return advance(engine, services, row)
    except Exception:  # one rotation's bug must not stop the others
        log.exception("rotation of %s: unexpected error (state %s kept)", row.old_key_id, row.state)
        return row


def rotate_key(engine: Engine, services: RotationServices, key_id: str) -> RotationRow:
    """``keyd rotate KEY_ID``: start (ignoring ``before`` and the filters)
    or continue the rotation of ``key_id`` now. Raises ``UsageError`` for
    a key keyd cannot rotate, naming why."""
    now = services.clock.now()
    row = store.get(engine, key_id)
    if row is None:
        key = _rotatable(engine, key_id)
        row = store.plan(
            engine,
            key,
            now=now,
            reason=RotationReason.MANUAL,
            algorithm=services.policy.algorithm,
            new_expires_at=new_expiry(now, services.policy),
        )
        row = row or store.get(engine, key_id)
        assert row is not None
    elif row.state == RotationState.RETIRED or (
        row.state == RotationState.PUBLISHED and not services.policy.retire
    ):
        raise UsageError(
            "KEY_ID",
            f"key {key_id} was rotated already: key {row.new_key_id} replaces it (rotate that one instead)",
        )
    row = _resume(engine, row, now)
    return advance(engine, services, row)


def _rotatable(engine: Engine, key_id: str) -> KeyRecord:
    kind_status = store.key_kind_status(engine, key_id)
    if kind_status is None:
        raise UsageError("KEY_ID", f"key {key_id} is not in the inventory (run `keyd scan`)")
    kind, status = kind_status
    if kind != KeyKind.SERVICE_ACCOUNT:
        raise UsageError("KEY_ID", f"key {key_id}: {APPLICATION_NOT_ROTATED}")
    key = store.key_for_rotation(engine, key_id)
    if status != KeyStatus.ACTIVE or key is None or not key.files:
        raise UsageError(
            "KEY_ID", f"key {key_id} is {status} with no present location: there is nothing to replace"
        )
    return key


def _resume(engine: Engine, row: RotationRow, now: datetime) -> RotationRow:
    """A failed rotation continues from where it failed; an open one now."""
    if row.state == RotationState.FAILED:
        if row.failed_step in (RotationStep.HOOK, RotationStep.RETIRE):
            changes: dict[str, Any] = {"state": RotationState.PUBLISHED}
            if row.failed_step == RotationStep.HOOK:
                changes["hook_done_at"] = None
        else:
            changes = {
                "state": RotationState.PLANNED,
                "attempt": row.attempt + 1,
                "new_key_id": None,
                "registered_at": None,
                "proven_at": None,
                "targets": None,
            }
        resumed = store.transition(
            engine,
            row,
            now=now,
            event=RotationEvent.RESUMED,
            failed_step=None,
            last_error=None,
            failures=0,
            next_attempt_at=now,
            detail={"from": row.failed_step},
            **changes,
        )
    else:
        resumed = store.transition(engine, row, now=now, next_attempt_at=now)
    if resumed is None:
        raise UsageError(
            "KEY_ID", f"the rotation of {row.old_key_id} is being changed by another keyd; try again"
        )
    return resumed


def plan_rotations(
    engine: Engine, policy: RotationPolicy, now: datetime, *, key_id: str | None = None
) -> list[str]:
    """What ``rotate_due`` (or ``rotate_key(key_id)``) would do at ``now``;
    contacts nothing and writes nothing."""
    lines: list[str] = []
    if key_id is not None:
        row = store.get(engine, key_id)
        if row is None:
            key = _rotatable(engine, key_id)
            return [_would_start(key, RotationReason.MANUAL, policy, now)]
        return [_would_continue(row, now, force=True)]
    for key, reason in due_keys(engine, policy, now):
        lines.append(_would_start(key, reason, policy, now))
    for row in store.open_rotations(engine, now):
        lines.append(_would_continue(row, now))
    return lines


def _would_start(key: KeyRecord, reason: str, policy: RotationPolicy, now: datetime) -> str:
    expiry = "never" if key.expires_at is None or key.expires_at.year >= 9999 else isoformat_z(key.expires_at)
    where = ", ".join(loc.ref for loc in key.files)
    return (
        f"would rotate key {key.key_id} of {key.principal} ({reason}; expires {expiry}): "
        f"new {policy.algorithm} key expiring {isoformat_z(new_expiry(now, policy))}, "
        f"written to {where}"
    )


def _would_continue(row: RotationRow, now: datetime, *, force: bool = False) -> str:
    steps: dict[str, str] = {
        RotationState.PLANNED: "register a new key",
        RotationState.REGISTERED: "prove (or replace) the new key",
        RotationState.PROVEN: "publish the new key",
        RotationState.PUBLISHED: "run hooks / retire the old key",
        RotationState.FAILED: f"resume after the failed {row.failed_step} step",
    }
    step = steps.get(row.state, "nothing (finished)")
    return f"would continue the rotation of key {row.old_key_id} ({row.state}): {step}"


__all__ = [
    "APPLICATION_NOT_ROTATED",
    "RotationReport",
    "due_keys",
    "plan_rotations",
    "rotate_due",
    "rotate_key",
    "selected",
]
