"""The steps of one rotation, crash-safe at every point (README "Rotation").

``advance(row)`` moves one ``rotations`` row as far as it can go now:

1. ``planned`` → generate a pair in memory, mark ``register_started_at``,
   AddKey(user, public key, expiry) → ``registered`` with the new key id;
2. mint a token with the new key through the probe code (with backoff)
   → ``proven``; a key that never proves is removed again → ``failed``;
3. write the new key file to every location of the old key (checked all
   first; a location changed since the scan is a conflict: nothing is
   overwritten) → ``published``; then each location's ``after_publish``;
4. after the overlap, once the new key had a successful probe since it
   was published and the old key is in no location: RemoveKey(old) →
   ``retired``.

The private key exists only in this process and at its destinations. A
row found in a middle state without it (keyd was killed, or a step failed
and a later tick continues) is recovered, never guessed at:

* ``planned`` with ``register_started_at`` set: AddKey may have happened
  unrecorded. Keys of the user unknown to the inventory and to every
  rotation, with the planned expiry, created since the mark, are keyd's
  orphans: removed before registering again;
* ``registered``: the key was never published, its private key is lost:
  RemoveKey(new), start over (``attempt`` + 1);
* ``proven``: a location that already holds the new key gives the private
  key back (publishing continues); none does → as ``registered``.

Failures: a transient one (API, Vault or disk) keeps the state and
retries on a later tick with backoff; a permanent one ends in ``failed``
with the step and an alert ("rotation blocked" for a conflict or a
missing permission, "rotation failed" otherwise). The old key is only ever
removed from ``published``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from keyd.actions.alerts import email_recipients, message_id
from keyd.actions.hooks import HookFailed, run_hook
from keyd.actions.keygen import KeyDocument, NewKey, generate
from keyd.actions.publish import PublishConflict
from keyd.actions.rotation_services import RotationServices
from keyd.checks.rotation import new_expiry, retire_after
from keyd.errors import KeydError, ZitadelApiDenied, ZitadelApiError
from keyd.redact import scrub
from keyd.retry import backoff_delay
from keyd.store import rotations as store
from keyd.store.alerts import AlertSpec
from keyd.store.rotations import LocationStamp, RotationRow
from keyd.store.snapshot import Engine
from keyd.timeutil import isoformat_z
from keyd.vocab import (
    AlertKind,
    Channel,
    KeyKind,
    LocationStatus,
    ProbeOutcome,
    RotationEvent,
    RotationState,
    RotationStep,
    Severity,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 5  # starts over (crash, lost key) before the rotation fails
ORPHAN_SLACK: Final = timedelta(minutes=5)  # clock difference keyd ↔ ZITADEL tolerated


class _Stop(Exception):
    """Ends one ``advance`` with the row as recorded."""

    def __init__(self, row: RotationRow | None) -> None:
        self.row = row


@dataclass
class _Run:
    engine: Engine
    services: RotationServices
    doc: KeyDocument | None = None

    @property
    def now(self) -> datetime:
        return self.services.clock.now()

    # -- the state machine ------------------------------------------------------

    def advance(self, row: RotationRow) -> RotationRow:
        current: RotationRow | None = row
        try:
            for _ in range(2 * MAX_ATTEMPTS + 6):  # every pass moves the state on or stops
                assert current is not None
                steps: dict[str, Callable[[RotationRow], RotationRow]] = {
                    RotationState.PLANNED: self.register,
                    RotationState.REGISTERED: self.prove,
                    RotationState.PROVEN: self.publish,
                    RotationState.PUBLISHED: self.finish,
                }
                step = steps.get(current.state)
                if step is None:
                    return current
                nxt = step(current)
                if nxt is None or (nxt.state, nxt.attempt) == (current.state, current.attempt):
                    current = nxt
                    break
                current = nxt
        except _Stop as stop:
            current = stop.row
        return current if current is not None else _reload(self.engine, row)

    def _move(self, row: RotationRow, **changes: Any) -> RotationRow:
        moved = store.transition(self.engine, row, now=self.now, **changes)
        if moved is None:  # another daemon or an operator moved it meanwhile
            log.warning("rotation of %s changed under us; leaving it", row.old_key_id)
            raise _Stop(None)
        return moved

    # -- 1. register --------------------------------------------------------------

    def register(self, row: RotationRow) -> RotationRow:
        api = self.services.api
        if row.register_started_at is not None:
            row = self._remove_orphans(row)
        expires = new_expiry(self.now, self.services.policy)
        row = self._move(
            row,
            register_started_at=self.now,
            new_expires_at=expires,
            algorithm=self.services.policy.algorithm,
        )
        pair = generate(self.services.policy.algorithm)
        try:
            added = api.add_key(row.principal, pair.public_pem(), expires)
        except ZitadelApiError as exc:
            if exc.retryable:  # AddKey may have happened: the mark stays for the cleanup
                raise _Stop(self._retry(row, RotationStep.REGISTER, exc)) from None
            raise _Stop(self._fail(row, RotationStep.REGISTER, exc, register_started_at=None)) from None
        self.doc = KeyDocument(added.key_id, row.principal, expires, pair)
        log.info(
            "rotation of %s: registered new key %s (expires %s)",
            row.old_key_id,
            added.key_id,
            isoformat_z(expires),
        )
        return self._move(
            row,
            state=RotationState.REGISTERED,
            new_key_id=added.key_id,
            registered_at=self.now,
            register_started_at=None,
            failures=0,
            last_error=None,
        )

    def _remove_orphans(self, row: RotationRow) -> RotationRow:
        assert row.register_started_at is not None
        api, since = self.services.api, row.register_started_at - ORPHAN_SLACK
        try:
            listed = list(api.list_keys(user_id=row.principal))
            ids = [k.key_id for k in listed]
            known = store.known_key_ids(self.engine, ids) | store.new_key_ids(self.engine, ids)
            orphans = [
                k.key_id
                for k in listed
                if k.key_id != row.old_key_id
                and k.key_id not in known
                and k.expires_at == row.new_expires_at
                and k.created_at >= since
            ]
            for key_id in orphans:
                api.remove_key(row.principal, key_id)
        except ZitadelApiError as exc:
            raise _Stop(
                self._retry(row, RotationStep.CLEANUP, exc)
                if exc.retryable
                else self._fail(row, RotationStep.CLEANUP, exc)
            ) from None
        if orphans:
            log.warning(
                "rotation of %s: removed %d unrecorded key(s) keyd registered before it stopped: %s",
                row.old_key_id,
                len(orphans),
                ", ".join(orphans),
            )
        return self._move(
            row,
            register_started_at=None,
            event=RotationEvent.ORPHANS_REMOVED if orphans else None,
            detail={"removed": orphans},
        )

    # -- 2. prove -------------------------------------------------------------------

    def prove(self, row: RotationRow) -> RotationRow:
        if self.doc is None:  # the private key is gone with the process that made it
            return self._start_over(row, "keyd stopped before the new key was proven")
        result = self.services.prove(self.doc.keyfile())
        if result.outcome == ProbeOutcome.OK:
            log.info("rotation of %s: new key %s mints", row.old_key_id, row.new_key_id)
            return self._move(row, state=RotationState.PROVEN, proven_at=self.now)
        problem = (
            f"the new key {row.new_key_id} never minted a token ({result.outcome}: "
            f"{result.message or 'no detail'})"
        )
        row = self._remove_new(row, RotationStep.PROOF, problem)
        raise _Stop(self._fail(row, RotationStep.PROOF, KeydError(problem), new_key_removed=True))

    # -- 3. publish ---------------------------------------------------------------

    def publish(self, row: RotationRow) -> RotationRow:
        targets = row.target_stamps()
        if not targets:
            key = store.key_for_rotation(self.engine, row.old_key_id)
            targets = [LocationStamp.of(loc) for loc in key.files] if key is not None else []
            if not targets:
                row = self._remove_new(row, RotationStep.PUBLISH, "the old key is in no location any more")
                raise _Stop(
                    self._fail(
                        row,
                        RotationStep.CONFLICT,
                        KeydError(f"key {row.old_key_id} is in no location any more; nothing to replace"),
                        new_key_removed=True,
                    )
                )
            row = self._move(row, targets=json.dumps([t.__dict__ for t in targets]))
        if self.doc is None:
            self.doc = self._recover(row, targets)
            if self.doc is None:
                return self._start_over(row, "keyd stopped before the new key was written")
        return self._publish_all(row, targets, self.doc)

    def _publish_all(self, row: RotationRow, targets: list[LocationStamp], doc: KeyDocument) -> RotationRow:
        publisher, written, done = self.services.publisher, 0, 0
        pending: list[LocationStamp] = []
        try:
            for target in targets:  # all checked before any is written
                if publisher.check(target, doc, row.old_key_id):
                    pending.append(target)
                else:
                    done += 1
            for target in pending:
                publisher.publish(target, doc, row.old_key_id)
                written += 1
                log.info("rotation of %s: wrote key %s to %s", row.old_key_id, doc.key_id, target.ref)
        except PublishConflict as exc:
            if done + written == 0:
                row = self._remove_new(row, RotationStep.PUBLISH, str(exc))
            raise _Stop(
                self._fail(
                    row,
                    RotationStep.CONFLICT,
                    exc,
                    new_key_removed=done + written == 0,
                    written=done + written,
                )
            ) from None
        except KeydError as exc:
            raise _Stop(self._retry(row, RotationStep.PUBLISH, exc)) from None
        policy = self.services.policy
        retire_at = retire_after(self.now, row.old_expires_at, policy)
        rotated = None if policy.retire else self._alert(row, AlertKind.ROTATED, Severity.INFO, None)
        row = self._move(
            row,
            state=RotationState.PUBLISHED,
            published_at=self.now,
            retire_after=retire_at,
            next_attempt_at=self.now,
            failures=0,
            last_error=None,
            alert=rotated,
            detail={"locations": [t.ref for t in targets]},
        )
        store.rearm_probe(self.engine, doc.key_id, self.now)  # known already after a crash
        return row

    def _recover(self, row: RotationRow, targets: list[LocationStamp]) -> KeyDocument | None:
        for target in targets:
            found = self.services.publisher.read_location(target)
            if found is not None and found.key_id == row.new_key_id:
                log.info(
                    "rotation of %s: new key %s found at %s; publishing continues",
                    row.old_key_id,
                    found.key_id,
                    target.ref,
                )
                key = NewKey(found.signing_key.unwrap(), row.algorithm)
                expires = found.expires_at or row.new_expires_at
                assert expires is not None
                return KeyDocument(found.key_id, row.principal, expires, key)
        return None

    # -- 4. after publishing: hook, retire -------------------------------------------

    def finish(self, row: RotationRow) -> RotationRow:
        if row.hook_done_at is None:
            row = self._hooks(row)
        policy = self.services.policy
        if not policy.retire:  # published is where this rotation ends
            return self._move(row, next_attempt_at=None) if row.next_attempt_at else row
        assert row.retire_after is not None and row.new_key_id is not None
        waiting = self._retire_blocker(row)
        if waiting is not None:
            again = max(row.retire_after, self.now + policy.recheck)
            if waiting != row.last_error or row.next_attempt_at != again:
                row = self._move(row, next_attempt_at=again, last_error=waiting)
            return row
        try:
            self.services.api.remove_key(row.principal, row.old_key_id)
        except ZitadelApiError as exc:
            return (
                self._retry(row, RotationStep.RETIRE, exc)
                if exc.retryable
                else self._fail(row, RotationStep.RETIRE, exc)
            )
        log.info("rotation of %s: retired; %s replaces it", row.old_key_id, row.new_key_id)
        return self._move(
            row,
            state=RotationState.RETIRED,
            finished_at=self.now,
            last_error=None,
            next_attempt_at=None,
            alert=self._alert(row, AlertKind.ROTATED, Severity.INFO, None),
        )

    def _retire_blocker(self, row: RotationRow) -> str | None:
        assert row.retire_after is not None and row.new_key_id is not None
        if self.now < row.retire_after:
            return f"overlap: the old key stays registered until {isoformat_z(row.retire_after)}"
        left = store.present_locations(self.engine, row.old_key_id)
        if left:
            return f"the old key is still in {left} location(s)"
        assert row.published_at is not None
        if not store.probed_ok_since(self.engine, row.new_key_id, row.published_at):
            return "waiting for a successful probe of the new key"
        return None

    def _hooks(self, row: RotationRow) -> RotationRow:
        ran: list[str] = []
        for target in row.target_stamps():
            hook = self.services.hooks.get(target.source)
            if hook is None:
                continue
            env = {
                "KEYD_KEY_ID": row.new_key_id or "",
                "KEYD_OLD_KEY_ID": row.old_key_id,
                "KEYD_PRINCIPAL": row.principal,
                "KEYD_LOCATION": target.ref,
            }
            try:
                run_hook(hook, env)
            except HookFailed as exc:
                raise _Stop(self._fail(row, RotationStep.HOOK, exc)) from None
            ran.append(target.ref)
        return self._move(
            row,
            hook_done_at=self.now,
            event=RotationEvent.HOOK_DONE if ran else None,
            detail={"locations": ran},
        )

    # -- failure paths ----------------------------------------------------------------

    def _start_over(self, row: RotationRow, why: str) -> RotationRow:
        row = self._remove_new(row, RotationStep.RESTART, why)
        if row.attempt >= MAX_ATTEMPTS:
            raise _Stop(
                self._fail(
                    row,
                    RotationStep.RESTART,
                    KeydError(f"gave up after {row.attempt} attempts; last: {why}"),
                    new_key_removed=True,
                )
            )
        log.warning(
            "rotation of %s: %s; removed the unpublished key %s, starting over",
            row.old_key_id,
            why,
            row.new_key_id,
        )
        return self._move(
            row,
            state=RotationState.PLANNED,
            attempt=row.attempt + 1,
            new_key_id=None,
            registered_at=None,
            proven_at=None,
            targets=None,
            event=RotationEvent.RESTARTED,
            detail={"why": why, "removed": row.new_key_id},
        )

    def _remove_new(self, row: RotationRow, step: RotationStep, why: str) -> RotationRow:
        """RemoveKey(new): a key that is not published must not stay registered."""
        if row.new_key_id is None:
            return row
        try:
            self.services.api.remove_key(row.principal, row.new_key_id)
        except ZitadelApiError as exc:
            raise _Stop(self._retry(row, step, exc, note=why)) from None
        return row

    def _retry(self, row: RotationRow, step: RotationStep, exc: KeydError, note: str = "") -> RotationRow:
        policy, failures = self.services.policy, row.failures + 1
        if isinstance(exc, ZitadelApiDenied) or not exc.retryable:
            return self._fail(row, step, exc)
        delay = max(
            policy.retry_base.total_seconds() / 2,
            backoff_delay(failures, policy.retry_base, policy.retry_cap, self.services.rng),
        )
        message = scrub(f"{step}: {exc}" + (f" ({note})" if note else ""))
        log.warning("rotation of %s: %s; retrying in %.0fs", row.old_key_id, message, delay)
        return self._move(
            row,
            failures=failures,
            last_error=message,
            event=RotationEvent.RETRY,
            next_attempt_at=self.now + timedelta(seconds=delay),
            detail={"step": step, "error": message},
        )

    def _fail(
        self,
        row: RotationRow,
        step: RotationStep,
        exc: KeydError,
        *,
        new_key_removed: bool = False,
        written: int = 0,
        **changes: Any,
    ) -> RotationRow:
        blocked = isinstance(exc, PublishConflict | ZitadelApiDenied) or step == RotationStep.CONFLICT
        named = (
            RotationStep.CONFLICT
            if isinstance(exc, PublishConflict)
            else RotationStep.PERMISSION
            if isinstance(exc, ZitadelApiDenied)
            else step
        )
        message = scrub(str(exc))
        log.error(
            "rotation of %s %s at %s: %s", row.old_key_id, "blocked" if blocked else "failed", named, message
        )
        alert = self._alert(
            row,
            AlertKind.ROTATION_BLOCKED if blocked else AlertKind.ROTATION_FAILED,
            Severity.CRITICAL,
            {
                "step": named,
                "problem": message,
                "new_key_removed": new_key_removed,
                "locations_written": written,
            },
        )
        return self._move(
            row,
            state=RotationState.FAILED,
            failed_step=named,
            last_error=message,
            next_attempt_at=None,
            alert=alert,
            event=RotationEvent.BLOCKED if blocked else None,
            **changes,
            detail={"step": named, "error": message},
        )

    def _alert(
        self, row: RotationRow, kind: AlertKind, severity: Severity, extra: dict[str, Any] | None
    ) -> AlertSpec | None:
        return rotation_alert(self.services, row, kind, severity, self.now, extra)


def rotation_alert(
    services: RotationServices,
    row: RotationRow,
    kind: AlertKind,
    severity: Severity,
    now: datetime,
    extra: dict[str, Any] | None,
) -> AlertSpec:
    """The alert for a rotation event, with its outbox targets (the row is
    recorded without a channel too: ``keyd check`` and the status page see it)."""
    alerts = services.alerts
    about = f"rotation:{row.old_key_id}"
    threshold = (
        row.new_key_id or "-"
        if kind == AlertKind.ROTATED
        else f"{row.attempt}:{(extra or {}).get('step', '?')}:{isoformat_z(now)}"
    )
    targets = row.target_stamps()
    sources = [t.source for t in targets]
    to: list[tuple[str, str]] = []
    if alerts is not None and alerts.email is not None:
        to += [(Channel.EMAIL, a) for a in email_recipients(alerts.email, row.principal, sources)]
    if alerts is not None and alerts.webhook is not None:
        to.append((Channel.WEBHOOK, alerts.webhook.url))
    what = {
        AlertKind.ROTATED: f"was rotated: key {row.new_key_id} replaces it",
        AlertKind.ROTATION_FAILED: "could not be rotated",
        AlertKind.ROTATION_BLOCKED: "rotation is blocked",
    }[kind]
    subject = f"[keyd {severity.upper()}] key {row.old_key_id} of user {row.principal} {what}"
    context = {
        "key_id": row.old_key_id,
        "principal": row.principal,
        "key_kind": KeyKind.SERVICE_ACCOUNT,
        "new_key_id": row.new_key_id,
        "attempt": row.attempt,
        "expires_at": isoformat_z(row.old_expires_at) if row.old_expires_at else None,
        "new_expires_at": isoformat_z(row.new_expires_at) if row.new_expires_at else None,
        "locations": [{"source": t.source, "ref": t.ref, "status": LocationStatus.PRESENT} for t in targets],
        "decided_at": isoformat_z(now),
        "kind": kind,
        "severity": severity,
        "threshold": threshold,
        **(extra or {}),
    }
    return AlertSpec(
        about=about,
        kind=kind,
        threshold=threshold[:64],
        severity=severity,
        message_id=message_id(about, kind, threshold),
        subject=subject,
        context=context,
        targets=to,
    )


def advance(engine: Engine, services: RotationServices, row: RotationRow) -> RotationRow:
    """Move ``row`` as far as it can go now (module docstring)."""
    return _Run(engine, services).advance(row)


def _reload(engine: Engine, row: RotationRow) -> RotationRow:
    return store.get(engine, row.old_key_id) or row


__all__ = ["MAX_ATTEMPTS", "advance", "rotation_alert"]
