"""SQL for key rotation (README "Rotation"): which keys are due, the
``rotations`` rows and their state machine, and the facts retirement needs.

One row per rotated key (``old_key_id`` is unique), so two daemons can
never both plan — and then both register — a rotation of the same key:
the second ``plan`` finds the row taken and backs off. Every transition
is a compare-and-set on (state, attempt) committed together with its
``events`` row (``rotation.<state>``); a transition whose row moved on
meanwhile changes nothing and reports False. Rows go out as frozen
snapshots; never key material (the new private key is never stored).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keyd.store.alerts import AlertSpec, queue_alert
from keyd.store.keys import KeyRecord, Location, key_records
from keyd.store.models import ALERT_NOW, Event, Key, KeyLocation, Probe, Rotation
from keyd.vocab import KeyKind, KeyStatus, LocationStatus, ProbeOutcome, RotationEvent, RotationState

STATES: Final = tuple(RotationState)
OPEN_STATES: Final = (
    RotationState.PLANNED,
    RotationState.REGISTERED,
    RotationState.PROVEN,
    RotationState.PUBLISHED,
)
NEVER_FROM: Final = datetime(9999, 1, 1, tzinfo=UTC)  # ZITADEL's "no expiry" (docs/zitadel.md §1)
_TEXT_LIMIT: Final = 2000


@dataclass(frozen=True)
class LocationStamp:
    """One place the old key lives, as the inventory last scanned it."""

    source: str
    ref: str
    content_hash: str | None
    version: int | None  # Vault KV version; None for files

    @classmethod
    def of(cls, location: Location) -> LocationStamp:
        """A key file as ``key_records(stamps=True)`` read it."""
        return cls(location.source, location.ref, location.content_hash, location.version)


@dataclass(frozen=True)
class RotationRow:
    id: int
    old_key_id: str
    old_key_pk: int | None
    principal: str
    state: str
    reason: str
    algorithm: str
    attempt: int
    new_key_id: str | None
    new_expires_at: datetime | None
    old_expires_at: datetime | None
    register_started_at: datetime | None
    targets: str | None
    planned_at: datetime
    registered_at: datetime | None
    proven_at: datetime | None
    published_at: datetime | None
    hook_done_at: datetime | None
    retire_after: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    next_attempt_at: datetime | None
    failures: int
    failed_step: str | None
    last_error: str | None

    @classmethod
    def of(cls, row: Rotation) -> RotationRow:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def target_stamps(self) -> list[LocationStamp]:
        return [LocationStamp(**t) for t in json.loads(self.targets or "[]")]


_COLUMNS = {f.name for f in fields(RotationRow)} - {"id"}


def candidates(engine: Engine, *, expiring_before: datetime, seen_before: datetime | None) -> list[KeyRecord]:
    """Active service-user keys with a present key file and no rotation
    row yet, expiring before ``expiring_before`` — or, when
    ``seen_before`` is given, of unknown/never expiry and first seen
    before it. Callers apply the remaining policy (filters, never)."""
    due = Key.expires_at < expiring_before
    if seen_before is not None:
        due = or_(
            due,
            and_(Key.first_seen < seen_before, or_(Key.expires_at.is_(None), Key.expires_at >= NEVER_FROM)),
        )
    taken = select(Rotation.id).where(Rotation.old_key_id == Key.key_id).exists()
    with Session(engine) as session:
        keys = key_records(
            session,
            Key.status == KeyStatus.ACTIVE,
            Key.kind == KeyKind.SERVICE_ACCOUNT,
            due,
            ~taken,
            order_by=(Key.expires_at, Key.id),
            stamps=True,
        )
    return [k for k in keys if k.files]  # never publish to a zitadel listing only


def key_for_rotation(engine: Engine, key_id: str) -> KeyRecord | None:
    """The key ``key_id`` with its locations and their stamps (any status,
    any kind: checks left to the caller; its ``files`` are where a rotation
    publishes), or None when it is not in the inventory."""
    with Session(engine) as session:
        found = key_records(session, Key.key_id == key_id, stamps=True)
    return found[0] if found else None


def key_kind_status(engine: Engine, key_id: str) -> tuple[str, str] | None:
    with Session(engine) as session:
        row = session.execute(select(Key.kind, Key.status).where(Key.key_id == key_id)).first()
    return None if row is None else (row.kind, row.status)


def _event(session: Session, at: datetime, row: Rotation, kind: str, detail: Mapping[str, Any]) -> None:
    body = {"attempt": row.attempt, "new_key_id": row.new_key_id, "state": row.state, **detail}
    session.add(
        Event(
            at=at,
            key_pk=row.old_key_pk,
            key_id=row.old_key_id,
            kind=f"rotation.{kind}",
            source=None,
            detail=json.dumps(body, sort_keys=True, default=str),
        )
    )


def plan(
    engine: Engine, key: KeyRecord, *, now: datetime, reason: str, algorithm: str, new_expires_at: datetime
) -> RotationRow | None:
    """Insert the ``planned`` row for ``key``; None when a row for it
    exists already (another daemon, or an earlier rotation)."""
    row = Rotation(
        old_key_id=key.key_id,
        old_key_pk=key.pk,
        principal=key.principal,
        state=RotationState.PLANNED,
        reason=reason,
        algorithm=algorithm,
        attempt=1,
        new_expires_at=new_expires_at,
        old_expires_at=key.expires_at,
        planned_at=now,
        updated_at=now,
        next_attempt_at=now,
        failures=0,
    )
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
            session.flush()
            _event(
                session,
                now,
                row,
                RotationState.PLANNED,
                {"reason": reason, "algorithm": algorithm, "new_expires_at": new_expires_at.isoformat()},
            )
    except IntegrityError:
        return None
    return RotationRow.of(row)


def transition(
    engine: Engine,
    current: RotationRow,
    *,
    now: datetime,
    event: str | None = None,
    detail: Mapping[str, Any] | None = None,
    alert: AlertSpec | None = None,
    **changes: Any,
) -> RotationRow | None:
    """Compare-and-set ``current`` (same state and attempt) to ``changes``
    with one ``events`` row (``rotation.<event or new state>``) and, if
    given, ``alert`` with its outbox rows, all in one transaction; None
    when the row moved on meanwhile (another daemon, an operator)."""
    unknown = set(changes) - _COLUMNS
    if unknown:
        raise ValueError(f"not rotation columns: {sorted(unknown)}")
    if isinstance(changes.get("last_error"), str):
        changes["last_error"] = changes["last_error"][:_TEXT_LIMIT]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        result = session.execute(
            update(Rotation)
            .where(
                Rotation.id == current.id,
                Rotation.state == current.state,
                Rotation.attempt == current.attempt,
            )
            .values(updated_at=now, **changes)
        )
        if int(getattr(result, "rowcount", 0) or 0) != 1:
            return None
        row = session.get(Rotation, current.id, populate_existing=True)
        assert row is not None
        kind = event or row.state
        if kind != current.state or event is not None:
            _event(session, now, row, kind, dict(detail or {}))
        if row.state != current.state:  # what alerts decide for both keys may change (alert_hold)
            ids = [k for k in (row.old_key_id, row.new_key_id) if k]
            session.execute(update(Key).where(Key.key_id.in_(ids)).values(next_alert_at=ALERT_NOW))
        if alert is not None:
            queue_alert(session, alert, row.old_key_pk, now)
        return RotationRow.of(row)


def get(engine: Engine, old_key_id: str) -> RotationRow | None:
    with Session(engine) as session:
        row = session.execute(select(Rotation).where(Rotation.old_key_id == old_key_id)).scalar()
        return None if row is None else RotationRow.of(row)


def open_rotations(engine: Engine, now: datetime | None = None) -> list[RotationRow]:
    """Rotations not finished (``now``: only those whose next attempt is due)."""
    query = select(Rotation).where(Rotation.state.in_(OPEN_STATES))
    if now is not None:
        query = query.where(Rotation.next_attempt_at <= now)
    with Session(engine) as session:
        return [RotationRow.of(r) for r in session.scalars(query.order_by(Rotation.id))]


def all_rotations(engine: Engine) -> list[RotationRow]:
    with Session(engine) as session:
        return [RotationRow.of(r) for r in session.scalars(select(Rotation).order_by(Rotation.id))]


def history(engine: Engine, old_key_id: str) -> list[tuple[datetime, str, str | None]]:
    """(at, kind, detail) of one rotation's events, oldest first."""
    with Session(engine) as session:
        rows = session.execute(
            select(Event.at, Event.kind, Event.detail)
            .where(Event.key_id == old_key_id, Event.kind.like("rotation.%"))
            .order_by(Event.id)
        )
        return [(r.at, r.kind, r.detail) for r in rows]


def new_key_ids(engine: Engine, key_ids: Sequence[str]) -> set[str]:
    """Which of ``key_ids`` some rotation registered as its new key."""
    if not key_ids:
        return set()
    with Session(engine) as session:
        return set(session.scalars(select(Rotation.new_key_id).where(Rotation.new_key_id.in_(key_ids))))


def in_flight_key_ids(session: Session, key_ids: Sequence[str]) -> set[str]:
    """Which of ``key_ids`` an unfinished rotation is handling: the old key
    (still registered in ZITADEL during the overlap, while no location
    holds it any more) or the new one (registered, not yet published).
    ZITADEL lists both; neither is "unheld" in the sense of forgotten."""
    if not key_ids:
        return set()
    open_rows = select(Rotation.old_key_id, Rotation.new_key_id).where(
        Rotation.state.in_(OPEN_STATES),
        or_(Rotation.old_key_id.in_(key_ids), Rotation.new_key_id.in_(key_ids)),
    )
    wanted = set(key_ids)
    return {k for row in session.execute(open_rows) for k in row if k in wanted}


def known_key_ids(engine: Engine, key_ids: Sequence[str]) -> set[str]:
    """Which of ``key_ids`` the inventory has seen in some location."""
    if not key_ids:
        return set()
    with Session(engine) as session:
        return set(session.scalars(select(Key.key_id).where(Key.key_id.in_(key_ids))))


def present_locations(engine: Engine, key_id: str) -> int:
    """How many locations hold ``key_id`` now (0 for an unknown key)."""
    with Session(engine) as session:
        return int(
            session.scalar(
                select(func.count(KeyLocation.id))
                .join(Key, Key.id == KeyLocation.key_pk)
                .where(Key.key_id == key_id, KeyLocation.status == LocationStatus.PRESENT)
            )
            or 0
        )


def probed_ok_since(engine: Engine, key_id: str, since: datetime) -> bool:
    """Whether ``key_id`` has a successful probe at or after ``since``."""
    with Session(engine) as session:
        found = session.scalar(
            select(Probe.id)
            .join(Key, Key.id == Probe.key_pk)
            .where(Key.key_id == key_id, Probe.outcome == ProbeOutcome.OK, Probe.at >= since)
            .limit(1)
        )
    return found is not None


def state_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.execute(select(Rotation.state, func.count()).group_by(Rotation.state))
        return {state: int(n) for state, n in rows}


#: events counted by ``keyd_rotations_total{outcome}`` (append-only, so monotonic)
OUTCOMES: Final = (
    RotationState.PUBLISHED,
    RotationState.RETIRED,
    RotationState.FAILED,
    RotationEvent.BLOCKED,
    RotationEvent.RESTARTED,
)


def outcome_counts(engine: Engine) -> dict[str, int]:
    """How many rotations reached each of ``OUTCOMES``, from the events."""
    kinds = [f"rotation.{o}" for o in OUTCOMES]
    with Session(engine) as session:
        rows = session.execute(
            select(Event.kind, func.count()).where(Event.kind.in_(kinds)).group_by(Event.kind)
        )
        found = {kind.removeprefix("rotation."): int(n) for kind, n in rows}
    return {o: found.get(o, 0) for o in OUTCOMES}


@dataclass(frozen=True)
class RotationSnapshot:
    old_key_id: str
    principal: str
    state: str
    planned_at: datetime
    updated_at: datetime
    failed_step: str | None
    last_error: str | None
    retire_after: datetime | None
    failures: int


def unfinished(engine: Engine) -> list[RotationSnapshot]:
    """Open and failed rotations (for ``keyd status``/``check`` and metrics)."""
    with Session(engine) as session:
        rows = session.execute(
            select(
                Rotation.old_key_id,
                Rotation.principal,
                Rotation.state,
                Rotation.planned_at,
                Rotation.updated_at,
                Rotation.failed_step,
                Rotation.last_error,
                Rotation.retire_after,
                Rotation.failures,
            )
            .where(Rotation.state.in_((*OPEN_STATES, RotationState.FAILED)))
            .order_by(Rotation.id)
        )
        return [RotationSnapshot(*row) for row in rows]


def rearm_probe(engine: Engine, key_id: str, now: datetime) -> None:
    """Probe ``key_id`` at the next probe tick (a key just published must
    show a probe after publishing before the old one is retired)."""
    with Session(engine) as session, session.begin():
        session.execute(
            update(Key).where(Key.key_id == key_id, Key.status == KeyStatus.ACTIVE).values(next_probe_at=now)
        )
