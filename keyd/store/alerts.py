"""All SQL for alerts, the delivery outbox and small persisted facts.

Exactly-once is the database's job, not Python's: ``insert_alert`` relies
on the unique ``(about, kind, threshold, expires_at)`` (two partial indexes,
``models.Alert``) with ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), so a second scan, a
restart or a second daemon racing on the same PostgreSQL inserts nothing
and gets ``None`` back. Deliveries are claimed with a compare-and-set
lease (``claim_delivery``) so two drainers never send the same row at the
same time, and a crash after sending only repeats that one message once
the lease runs out: never lost.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, TypedDict, cast

from sqlalchemy import Select, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine as Engine  # re-exported for typing in actions/
from sqlalchemy.orm import Session as Session  # re-exported for typing in actions/

from keyd.clock import utc
from keyd.store.inventory import latest_diagnoses
from keyd.store.keys import KeyRecord, key_records
from keyd.store.models import ALERT_NEVER as ALERT_NEVER  # re-exported for actions/
from keyd.store.models import (
    ALERT_NOW,
    PLAIN_UNIQUE,
    RUNG_UNIQUE,
    Alert,
    Delivery,
    Event,
    Key,
    Rotation,
    State,
)
from keyd.store.models import threshold_text as threshold_text  # re-exported for actions/
from keyd.timeutil import isoformat_z, parse_rfc3339
from keyd.vocab import DeliveryState

OPEN_STATES: Final = (DeliveryState.PENDING, DeliveryState.FAILED)  # both are still retried

ISSUER_UNAVAILABLE_SINCE: Final = "issuer.unavailable_since"
ISSUER_LAST_RECOVERY: Final = "issuer.last_recovery"


@dataclass(frozen=True)
class AlertRecord:
    """A detached snapshot of an ``alerts`` row, ``context`` decoded: what
    every reader above the store gets (the alert evaluation too)."""

    id: int
    about: str
    fingerprint: str | None
    key_pk: int | None
    kind: str
    threshold: str
    expires_at: datetime | None  # a ladder rung's key expiry
    severity: str
    created_at: datetime
    message_id: str
    subject: str
    context: Mapping[str, Any]
    resolved_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> AlertRecord:
        """From an ``Alert`` or a row of the ``alerts`` table's columns."""
        return cls(
            row.id,
            row.about,
            row.fingerprint,
            row.key_pk,
            row.kind,
            row.threshold,
            row.expires_at,
            row.severity,
            row.created_at,
            row.message_id,
            row.subject,
            json.loads(row.context),
            row.resolved_at,
        )


@dataclass(frozen=True)
class OutboxItem:
    """One due delivery with its alert."""

    delivery_id: int
    channel: str
    recipient: str
    state: str
    attempts: int
    next_attempt_at: datetime
    alert: AlertRecord


_ALERTS: Final = cast(Table, Alert.__table__)
_DELIVERIES: Final = cast(Table, Delivery.__table__)


class OutboxSummary(TypedDict):
    pending: int
    failed: int
    oldest_pending_at: datetime | None


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def _insert(session: Session, table: Any) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def _rowcount(result: object) -> int:
    """Rows matched by an INSERT/UPDATE (a CursorResult attribute)."""
    return int(getattr(result, "rowcount", 0) or 0)


# -- alerts -----------------------------------------------------------------


def key_about(key_id: str) -> str:
    """The ``about`` of a key's alerts: its key id, prefixed so that no key
    id from a file can collide with ``issuer`` or ``token:…``."""
    return "key:" + key_id


def insert_alert(
    session: Session,
    *,
    about: str,
    key_pk: int | None,
    kind: str,
    threshold: str,
    severity: str,
    created_at: datetime,
    message_id: str,
    subject: str,
    context: Mapping[str, Any],
    fingerprint: str | None = None,
    expires_at: datetime | None = None,
) -> AlertRecord | None:
    """Insert one alert unless (about, kind, threshold, expires_at) exists.

    ``about`` is the key id (or ``issuer``, ``token:…``); ``fingerprint``,
    the key's public-key fingerprint, is only an attribute; ``expires_at``
    is a ladder rung's key expiry (None for any other alert).

    Returns the new row, or None when it already existed (fired before, or
    another daemon won the race). Never raises IntegrityError for that.
    """
    unique = PLAIN_UNIQUE if expires_at is None else RUNG_UNIQUE
    values = alert_row(
        about=about,
        key_pk=key_pk,
        kind=kind,
        threshold=threshold,
        severity=severity,
        created_at=created_at,
        message_id=message_id,
        subject=subject,
        context=context,
        fingerprint=fingerprint,
        expires_at=expires_at,
    )
    stmt = (
        _insert(session, Alert)
        .values(**values)
        .on_conflict_do_nothing(index_elements=unique[0], index_where=unique[1])
    )
    row = session.execute(stmt.returning(*_ALERTS.c)).first()
    return None if row is None else AlertRecord.of(row)


def alert_row(
    *,
    about: str,
    key_pk: int | None,
    kind: str,
    threshold: str,
    severity: str,
    created_at: datetime,
    message_id: str,
    subject: str,
    context: Mapping[str, Any],
    fingerprint: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``alerts`` row ``insert_alerts`` takes (``insert_alert``'s arguments)."""
    return {
        "about": about,
        "fingerprint": fingerprint,
        "key_pk": key_pk,
        "kind": kind,
        "threshold": threshold,
        "expires_at": expires_at,
        "severity": severity,
        "created_at": created_at,
        "message_id": message_id,
        "subject": subject,
        "context": json.dumps(dict(context), sort_keys=True, default=str),
    }


def unique_key(about: str, kind: str, threshold: str, expires_at: datetime | None) -> tuple[str, ...]:
    """What the two unique indexes compare, as comparable text (an
    ``expires_at`` read back may differ from the one written in tzinfo)."""
    return (about, kind, threshold, "" if expires_at is None else isoformat_z(utc(expires_at)))


def insert_alerts(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, ...], int]:
    """``insert_alert`` for many rows (``alert_row``) in a few statements:
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` executed for all rows of
    one conflict target (rungs, the rest) at once, which SQLAlchemy sends as
    multi-row VALUES of up to 1,000 rows ("insertmanyvalues"). Returns the
    ids of the rows inserted by their ``unique_key``; a row that already
    existed (or that another daemon inserted first) is not among them.
    Duplicates within ``rows`` are inserted once. Rows go in unique-key
    order, so two daemons racing on the same rows take their index locks in
    the same order (no deadlock on PostgreSQL)."""
    wanted: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for row in rows:
        wanted.setdefault(unique_key(row["about"], row["kind"], row["threshold"], row["expires_at"]), row)
    c = _ALERTS.c
    out: dict[tuple[str, ...], int] = {}
    for unique in (RUNG_UNIQUE, PLAIN_UNIQUE):
        rung = unique is RUNG_UNIQUE
        batch = [dict(wanted[k]) for k in sorted(wanted) if (wanted[k]["expires_at"] is not None) == rung]
        if batch:
            stmt = (
                _insert(session, _ALERTS)
                .on_conflict_do_nothing(index_elements=unique[0], index_where=unique[1])
                .returning(c.id, c.about, c.kind, c.threshold, c.expires_at)
            )
            for id_, about, kind, threshold, expires_at in session.execute(stmt, batch):
                out[unique_key(about, kind, threshold, expires_at)] = id_
    return out


def add_delivery_rows(session: Session, rows: Sequence[tuple[int, str, str]], now: datetime) -> None:
    """``add_deliveries`` for many alerts: ``(alert_id, channel, recipient)``
    outbox rows, due ``now``, in one executemany (multi-row VALUES)."""
    if not rows:
        return
    stmt = _insert(session, _DELIVERIES).on_conflict_do_nothing(
        index_elements=["alert_id", "channel", "recipient"]
    )
    session.execute(
        stmt,
        [
            {
                "alert_id": alert_id,
                "channel": channel,
                "recipient": recipient,
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for alert_id, channel, recipient in sorted(rows)
        ],
    )


@dataclass(frozen=True)
class AlertSpec:
    """An alert to queue with its outbox rows in the same transaction (the
    write-back's and rotation's alerts; the expiry ladder decides its own)."""

    about: str  # what the alert is about: ``token:<hash of the path>``, ``key:<id>``
    kind: str
    threshold: str
    severity: str
    message_id: str
    subject: str
    context: Mapping[str, Any]
    targets: Sequence[tuple[str, str]]


def queue_alert(session: Session, alert: AlertSpec, key_pk: int | None, now: datetime) -> None:
    """Insert ``alert`` (unless it fired before) and queue its deliveries."""
    created = insert_alert(
        session,
        about=alert.about,
        key_pk=key_pk,
        kind=alert.kind,
        threshold=alert.threshold,
        severity=alert.severity,
        created_at=now,
        message_id=alert.message_id,
        subject=alert.subject,
        context=alert.context,
    )
    if created is not None:
        add_deliveries(session, created.id, alert.targets, now)


def add_deliveries(session: Session, alert_id: int, targets: Iterable[tuple[str, str]], now: datetime) -> int:
    """Queue ``(channel, recipient)`` outbox rows for an alert, due ``now``."""
    count = 0
    for channel, recipient in targets:
        stmt = (
            _insert(session, Delivery)
            .values(
                alert_id=alert_id,
                channel=channel,
                recipient=recipient,
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["alert_id", "channel", "recipient"])
        )
        count += _rowcount(session.execute(stmt))
    return count


class AlertIndex:
    """Every alert of the keys under evaluation, loaded in one query, so a
    pass over N keys costs O(1) reads instead of several per key. A snapshot
    inside the caller's transaction: exactly-once still rests on the unique
    constraint at insert time. Resolutions are applied to the snapshot at
    once and written by ``write_resolved``, one UPDATE per 500 alerts."""

    def __init__(self, rows: Iterable[AlertRecord]) -> None:
        self._by_about: dict[str, list[AlertRecord]] = defaultdict(list)
        self._resolved: dict[int, datetime] = {}  # alert id -> resolved_at, not yet written
        for row in rows:
            self.add(row)

    @classmethod
    def load(cls, session: Session, abouts: Iterable[str]) -> AlertIndex:
        wanted = sorted(set(abouts))
        rows: list[AlertRecord] = []
        for start in range(0, len(wanted), 500):
            rows += map(
                AlertRecord.of,
                session.execute(
                    select(_ALERTS)
                    .where(_ALERTS.c.about.in_(wanted[start : start + 500]))
                    .order_by(_ALERTS.c.id)
                ),
            )
        return cls(rows)

    def add(self, alert: AlertRecord) -> None:
        self._by_about[alert.about].append(alert)

    def fired(self, about: str, kinds: Sequence[str], expires_at: datetime | None = None) -> set[str]:
        """The thresholds fired of these kinds for this ``expires_at``."""
        return {
            a.threshold
            for a in self._by_about.get(about, ())
            if a.kind in kinds and a.expires_at == expires_at
        }

    def exists(self, about: str, kind: str, threshold: str) -> bool:
        return any(a.kind == kind and a.threshold == threshold for a in self._by_about.get(about, ()))

    def unresolved(
        self, about: str, kinds: Sequence[str], keep_expiry: datetime | None = None
    ) -> list[AlertRecord]:
        """Open alerts of these kinds, except the rungs of ``keep_expiry``."""
        return [
            a
            for a in self._by_about.get(about, ())
            if a.kind in kinds
            and a.resolved_at is None
            and not (keep_expiry is not None and a.expires_at == keep_expiry)
        ]

    def resolve(self, alerts: Iterable[AlertRecord], now: datetime) -> int:
        """Mark alerts resolved (no longer current) in this index, and for
        ``write_resolved``; their sent mail stays sent. Returns how many
        were open."""
        open_ = {a.id: a.about for a in alerts if a.resolved_at is None}
        if not open_:
            return 0
        for alert_id in open_:
            self._resolved.setdefault(alert_id, now)
        for about in set(open_.values()):
            self._by_about[about] = [
                replace(a, resolved_at=now) if a.id in open_ else a for a in self._by_about[about]
            ]
        return len(open_)

    def write_resolved(self, session: Session) -> int:
        """Write the resolutions made since the last call: one UPDATE per
        500 alerts (per instant); none when nothing was resolved."""
        by_instant: dict[datetime, list[int]] = defaultdict(list)
        for alert_id, at in self._resolved.items():
            by_instant[at].append(alert_id)
        self._resolved = {}
        for at, ids in by_instant.items():
            ids.sort()
            for start in range(0, len(ids), 500):
                session.execute(
                    update(_ALERTS)
                    .where(_ALERTS.c.id.in_(ids[start : start + 500]), _ALERTS.c.resolved_at.is_(None))
                    .values(resolved_at=at)
                )
        return sum(len(ids) for ids in by_instant.values())


def removed_keys(session: Session, pks: Sequence[int]) -> set[int]:
    """Of these rejected keys, those whose latest probe row says ZITADEL
    no longer lists them (diagnosis ``removed``, written by a zitadel source)."""
    return {pk for pk, d in latest_diagnoses(session, pks).items() if d == "removed"}


def rotation_states(session: Session, key_ids: Sequence[str]) -> dict[str, str]:
    """The rotation state of each of these keys that has a rotation row
    (one row per key: ``rotations.old_key_id`` is unique), in one query."""
    out: dict[str, str] = {}
    for start in range(0, len(key_ids), 10_000):  # one query below any bind-parameter limit
        rows = session.execute(
            select(Rotation.old_key_id, Rotation.state).where(
                Rotation.old_key_id.in_(key_ids[start : start + 10_000])
            )
        )
        out.update((key_id, state) for key_id, state in rows)
    return out


def all_keys(session: Session) -> list[KeyRecord]:
    """Every key with its locations (``keyd check``'s zitadel findings)."""
    return key_records(session)


ALERT_SCHEDULE: Final = "alerts.schedule"  # what the stored next_alert_at were computed for


def due_principals_query(now: datetime, limit: int | None = None) -> Select[str]:
    """The principals of due keys, as a walk of ``ix_keys_next_alert_at``:
    due keys' principals in due order, de-duplicated by the caller. Not
    ``DISTINCT``: without statistics SQLite answers that by walking the
    whole principal index (46 ms at 100,000 keys with nothing due) instead
    of the empty range of the due index. ``limit`` bounds the rows, hence
    the principals."""
    query = select(Key.principal).where(Key.next_alert_at <= now).order_by(Key.next_alert_at)
    return query if limit is None else query.limit(limit)


def alert_candidates(session: Session, now: datetime, *, limit: int | None = None) -> list[KeyRecord]:
    """The alert evaluation's input: keys whose ``next_alert_at`` has come
    (one range query on its index; changed keys carry ``ALERT_NOW``), plus
    every other key of their principals (a new key can supersede an old
    one), with their locations. Empty, in one query, when nothing is due.
    ``limit``: at most that many principals (the rest in the next call)."""
    principals = sorted(set(session.scalars(due_principals_query(now, limit))))
    keys: list[KeyRecord] = []
    for start in range(0, len(principals), 500):  # locations: 500 keys per query (key_records)
        keys += key_records(session, Key.principal.in_(principals[start : start + 500]), order_by=())
    return sorted(keys, key=lambda k: k.pk)


def due_count(session: Session, now: datetime) -> int:
    """How many keys are due for evaluation (one COUNT over the range of
    ``ix_keys_next_alert_at``): what a chunked evaluation has still to do."""
    return int(session.scalar(select(func.count()).select_from(Key).where(Key.next_alert_at <= now)) or 0)


def schedule_alerts(session: Session, next_at: Mapping[int, datetime]) -> None:
    """Store each evaluated key's next evaluation instant (batched)."""
    rows = [{"pk": pk, "at": at} for pk, at in next_at.items()]
    if rows:
        table = cast(Table, Key.__table__)
        session.execute(
            update(table).where(table.c.id == bindparam("pk")).values(next_alert_at=bindparam("at")),
            rows,
        )


def rearm_if_schedule_changed(session: Session, schedule: str, now: datetime) -> bool:
    """When the thresholds (``schedule``) differ from those the stored due
    times were computed for, make every key due now; True if it did."""
    if get_state(session, ALERT_SCHEDULE) == schedule:
        return False
    session.execute(update(Key).values(next_alert_at=ALERT_NOW).execution_options(synchronize_session=False))
    set_state(session, ALERT_SCHEDULE, schedule, now)
    return True


# -- outbox -----------------------------------------------------------------


def due_deliveries(session: Session, now: datetime, limit: int = 500) -> list[OutboxItem]:
    """Open deliveries whose ``next_attempt_at`` has come, oldest first."""
    rows = session.execute(
        select(Delivery, Alert)
        .join(Alert, Alert.id == Delivery.alert_id)
        .where(Delivery.state.in_(OPEN_STATES), Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    )
    return [
        OutboxItem(d.id, d.channel, d.recipient, d.state, d.attempts, d.next_attempt_at, AlertRecord.of(a))
        for d, a in rows
    ]


def claim_delivery(
    session: Session, delivery_id: int, attempts_seen: int, now: datetime, lease_until: datetime
) -> bool:
    """Take a delivery for one attempt (compare-and-set on ``attempts``).

    Counts the attempt and pushes ``next_attempt_at`` to ``lease_until``, so
    if this process dies mid-send the row comes due again after the lease.
    False when someone else claimed it first.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.attempts == attempts_seen,
            Delivery.state.in_(OPEN_STATES),
            Delivery.next_attempt_at <= now,
        )
        .values(attempts=Delivery.attempts + 1, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def mark_sent(session: Session, delivery_id: int, now: datetime) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(state=DeliveryState.SENT, sent_at=now, last_error=None)
        .execution_options(synchronize_session=False)
    )


def mark_superseded(session: Session, delivery_id: int) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state != DeliveryState.SENT)
        .values(state=DeliveryState.SUPERSEDED)
        .execution_options(synchronize_session=False)
    )


def mark_retry(
    session: Session, delivery_id: int, *, state: str, next_attempt_at: datetime, error: str
) -> None:
    """Record a failed attempt; the row stays open (``pending`` or ``failed``)."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state != DeliveryState.SENT)
        .values(state=state, next_attempt_at=next_attempt_at, last_error=error)
        .execution_options(synchronize_session=False)
    )


def outbox_summary(session: Session) -> OutboxSummary:
    """Counts for ``keyd status`` and metrics: open deliveries by state, and
    when the oldest still-pending alert was decided (None if none)."""
    counts: dict[str, int] = {
        state: int(n)
        for state, n in session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.state.in_(OPEN_STATES))
            .group_by(Delivery.state)
        )
    }
    oldest = session.scalar(
        select(func.min(Alert.created_at))
        .join(Delivery, Delivery.alert_id == Alert.id)
        .where(Delivery.state.in_(OPEN_STATES))
    )
    return {
        "pending": int(counts.get(DeliveryState.PENDING, 0)),
        "failed": int(counts.get(DeliveryState.FAILED, 0)),
        "oldest_pending_at": None if oldest is None else utc(oldest),
    }


# -- small persisted facts (State) ------------------------------------------


def get_state(session: Session, name: str) -> str | None:
    row = session.get(State, name)
    return None if row is None else row.value


def set_state(session: Session, name: str, value: str, now: datetime) -> None:
    stmt = _insert(session, State).values(name=name, value=value, updated_at=now)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
    )


def delete_state(session: Session, name: str) -> None:
    row = session.get(State, name)
    if row is not None:
        session.delete(row)
        session.flush()


def note_issuer_health(session: Session, ok: bool, now: datetime) -> None:
    """Record the outcome of talking to the issuer, for episode alerts.

    Call it (in the probe's transaction) after every probe or discovery
    whose outcome says something about the *issuer*: ``ok=True`` for any
    answer that proves it is up (a token, or an OAuth rejection of a key),
    ``ok=False`` only for "issuer unavailable" (connection error, timeout,
    502/503/504; docs/zitadel.md §4). Idempotent; cheap.

    State kept: ``issuer.unavailable_since`` = start of the current outage
    (set on the first failure, kept while failures continue); on the first
    success after an outage it is removed and ``issuer.last_recovery`` =
    ``{"since": ..., "until": ...}`` is written. ``evaluate_alerts`` turns
    these into one "unavailable" alert per episode (once it lasted
    ``issuer.unavailable_alert_after``) and one "recovered" notice.
    """
    since = get_state(session, ISSUER_UNAVAILABLE_SINCE)
    if not ok:
        if since is None:
            set_state(session, ISSUER_UNAVAILABLE_SINCE, isoformat_z(now), now)
        return
    if since is not None:
        delete_state(session, ISSUER_UNAVAILABLE_SINCE)
        set_state(session, ISSUER_LAST_RECOVERY, json.dumps({"since": since, "until": isoformat_z(now)}), now)


def issuer_outage(session: Session) -> datetime | None:
    """Start of the current issuer outage, or None."""
    since = get_state(session, ISSUER_UNAVAILABLE_SINCE)
    return None if since is None else parse_rfc3339(since)


def issuer_last_recovery(session: Session) -> tuple[datetime, datetime] | None:
    """(outage start, recovery) of the last finished outage, or None."""
    raw = get_state(session, ISSUER_LAST_RECOVERY)
    if raw is None:
        return None
    data = json.loads(raw)
    return parse_rfc3339(data["since"]), parse_rfc3339(data["until"])


def wake_failed(session: Session, channel: str, now: datetime) -> int:
    """A send on ``channel`` just worked: make its ``failed`` rows due now
    (they wait a day otherwise). The attempt count is kept."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.channel == channel,
            Delivery.state == DeliveryState.FAILED,
            Delivery.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def record_key_error(session: Session, key: KeyRecord, now: datetime, problem: str) -> None:
    """One key could not be judged this time (a bug, or data nothing can
    handle): an ``alert.error`` event on that key with the reason, so it
    shows in the audit trail while the stage goes on with the others."""
    session.add(
        Event(
            at=now,
            key_pk=key.pk,
            key_id=key.key_id,
            kind="alert.error",
            source=None,
            detail=json.dumps({"error": problem}),
        )
    )
