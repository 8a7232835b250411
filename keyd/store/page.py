"""Bounded reads for the status page and ``keyd status`` (README "Status page").

At 100,000 keys a page that reads every key takes seconds and shows rows
nobody reads. What these functions read grows with what needs attention,
never with the size of the inventory:

* ``status_counts``/``expiry_windows``: aggregates (counts by status; by
  expiry window: expired, within each alert threshold, later, never,
  unknown), each an indexed range count (``ix_keys_status_expires_at``);
* ``attention``: every key that needs a look, as full records: expired,
  rejected, invalid or unheld, expiring within the largest alert threshold
  (or past its expiry with the status not moved yet), a failing last probe
  (``ix_keys_failing``), a failing or refused token sink, a rotation in
  flight or failed. One ``UNION`` of index lookups;
* ``listing``: one page of keys in key id order (keyset pagination after a
  key id, at most ``limit`` rows; filtered by exact principal or key id
  prefix), for the healthy rest;
* ``location_problems``: invalid and group/other-readable locations, at
  most ``limit`` of each (partial indexes ``ix_key_locations_invalid``,
  ``ix_key_locations_warned``) and how many there are;
* ``tokens_for``/``rotations_for``: the write-back and rotation rows of the
  keys shown.

Every function returns detached, frozen rows (``KeyRecord`` & co.).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, func, or_, select, text, union
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.store.inventory import latest_diagnoses
from keyd.store.keys import LOCATION_COLUMNS, KeyRecord, Location, key_records, location
from keyd.store.models import Key, KeyLocation, Rotation, SourceState, TokenSink
from keyd.store.rotations import NEVER_FROM, OPEN_STATES, RotationRow
from keyd.store.snapshot import TOKEN_COLUMNS, TokenSnapshot, not_quiet, token_snapshot
from keyd.timeutil import format_duration
from keyd.vocab import KeyKind, KeyStatus, LocationStatus, RotationState, SinkState

#: Statuses that need attention whatever the expiry.
ATTENTION_STATUSES: Final = (KeyStatus.EXPIRED, KeyStatus.REJECTED, KeyStatus.INVALID, KeyStatus.UNHELD)
#: Every status but ``missing`` (a key no longer found: what a finished rotation leaves).
PRESENT_STATUSES: Final = (KeyStatus.ACTIVE, *ATTENTION_STATUSES)
FAILING_SINKS: Final = (SinkState.FAILED, SinkState.CONFLICT, SinkState.UNMANAGED)
ROTATION_STATES: Final = (*OPEN_STATES, RotationState.FAILED)
_CHUNK: Final = 500


@dataclass(frozen=True)
class ExpiryWindow:
    label: str  # "expired", "≤ 7d", "≤ 30d", "later", "never", "unknown"
    count: int


@dataclass(frozen=True)
class ProblemLocations:
    """Invalid and warned locations, at most ``limit`` of each, and totals."""

    invalid: tuple[Location, ...]
    invalid_total: int
    warned: tuple[Location, ...]
    warned_total: int


def status_counts(engine: Engine) -> dict[str, int]:
    """``{status: keys}`` (one ``GROUP BY`` on ``ix_keys_status``)."""
    with engine.connect() as conn:
        return {
            str(s): int(n) for s, n in conn.execute(select(Key.status, func.count()).group_by(Key.status))
        }


def expiry_windows(
    engine: Engine, at: datetime, thresholds: Sequence[timedelta], by_status: Mapping[str, int] | None = None
) -> list[ExpiryWindow]:
    """Keys not missing by expiry window at ``at``: expired, within each
    threshold (nearest first, each window from the previous one), later,
    never, unknown. Range counts on ``ix_keys_status_expires_at``; "later"
    is the rest, not counted (``by_status``: ``status_counts`` when the
    caller has it, saving the count of every key)."""
    present = Key.status.in_(PRESENT_STATUSES)
    bands = sorted({t for t in thresholds if t > timedelta(0)})

    def count(conn: Any, *where: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(Key).where(present, *where)).scalar_one())

    out: list[ExpiryWindow] = []
    with engine.connect() as conn:
        total = sum(by_status.get(s, 0) for s in PRESENT_STATUSES) if by_status is not None else count(conn)
        out.append(ExpiryWindow("expired", count(conn, Key.expires_at <= at)))
        start = at
        for band in bands:
            end = at + band
            out.append(
                ExpiryWindow(
                    f"≤ {format_duration(band)}", count(conn, Key.expires_at > start, Key.expires_at <= end)
                )
            )
            start = end
        never_n = count(conn, Key.expires_at >= NEVER_FROM)
        unknown = count(conn, Key.expires_at.is_(None))
    later = total - sum(w.count for w in out) - never_n - unknown
    return [
        *out,
        ExpiryWindow("later", later),
        ExpiryWindow("never", never_n),
        ExpiryWindow("unknown", unknown),
    ]


def attention(engine: Engine, at: datetime, warn_before: timedelta) -> list[KeyRecord]:
    """Every key that needs attention (module docstring), in key id order,
    with its locations and, when rejected, the latest probe's diagnosis."""
    rotating = select(Rotation.old_key_id).where(Rotation.state.in_(ROTATION_STATES))
    replacing = select(Rotation.new_key_id).where(
        Rotation.state.in_(ROTATION_STATES), Rotation.new_key_id.is_not(None)
    )
    wanted = union(
        *not_quiet(at + warn_before, ATTENTION_STATUSES),
        select(Key.id).where(Key.last_error.is_not(None), Key.status != KeyStatus.MISSING),
        select(TokenSink.key_pk).where(TokenSink.state.in_(FAILING_SINKS)),
        select(Key.id).where(Key.key_id.in_(rotating)),
        select(Key.id).where(Key.key_id.in_(replacing)),
    )
    with Session(engine) as session:
        pks = sorted(int(pk) for pk in session.scalars(wanted) if pk is not None)
        records: list[KeyRecord] = []
        for start in range(0, len(pks), _CHUNK):
            records.extend(_records(session, Key.id.in_(pks[start : start + _CHUNK])))
    return sorted(records, key=lambda r: r.key_id)


def listing(
    engine: Engine,
    *,
    after: str | None = None,
    principal: str | None = None,
    key_prefix: str | None = None,
    limit: int = 100,
) -> tuple[list[KeyRecord], str | None]:
    """Up to ``limit`` keys in key id order after ``after`` (any status),
    only ``principal``'s or those whose id starts with ``key_prefix`` when
    given; and the key id to continue after (None: this was the last page).
    A range on the unique key id index (or the principal's few keys)."""
    where: list[Any] = []
    if after:
        where.append(Key.key_id > after)
    if principal:
        where.append(Key.principal == principal)
    if key_prefix:
        # the range lets the index serve the prefix; startswith keeps it exact
        where += [Key.key_id >= key_prefix, Key.key_id.startswith(key_prefix, autoescape=True)]
    with Session(engine) as session:
        rows = _records(session, *where, order_by=(Key.key_id,), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].key_id if more and rows else None)


def _records(
    session: Session, *where: Any, order_by: Sequence[Any] = (Key.id,), limit: int | None = None
) -> list[KeyRecord]:
    seen = {
        name: last
        for name, last in session.execute(select(SourceState.name, SourceState.last_success_at))
        if last is not None
    }
    keys = key_records(session, *where, order_by=order_by, limit=limit, seen=seen)
    diagnoses = latest_diagnoses(session, [k.pk for k in keys if k.status == KeyStatus.REJECTED])
    return [replace(k, diagnosis=diagnoses[k.pk]) if diagnoses.get(k.pk) else k for k in keys]


def location_problems(engine: Engine, limit: int) -> ProblemLocations:
    """Invalid locations (of a key or of none) and present locations with a
    permission warning: at most ``limit`` of each, by source and ref, and
    how many there are in all."""
    # literal conditions, the partial indexes' own (a bound parameter would not match them)
    invalid_where = text(f"key_locations.status = '{LocationStatus.INVALID}'")
    warned_where = (text("key_locations.warning IS NOT NULL"), KeyLocation.status == LocationStatus.PRESENT)
    columns = (*LOCATION_COLUMNS, Key.key_id)
    with engine.connect() as conn:

        def rows(*where: Any) -> tuple[Location, ...]:
            stmt = (
                select(*columns)
                .outerjoin(Key, Key.id == KeyLocation.key_pk)
                .where(*where)
                .order_by(KeyLocation.source, KeyLocation.ref)
                .limit(limit)
            )
            return tuple(location(r, r.key_id) for r in conn.execute(stmt))

        def total(*where: Any) -> int:
            return int(conn.execute(select(func.count()).select_from(KeyLocation).where(*where)).scalar_one())

        return ProblemLocations(
            rows(invalid_where), total(invalid_where), rows(*warned_where), total(*warned_where)
        )


def tokens_for(engine: Engine, pks: Iterable[int]) -> list[TokenSnapshot]:
    """The token sinks of these keys, and every failing or refused one."""
    wanted = sorted(set(pks))
    found: dict[str, TokenSnapshot] = {}
    with engine.connect() as conn:
        wheres: list[Any] = [TokenSink.state.in_(FAILING_SINKS)]
        wheres += [TokenSink.key_pk.in_(wanted[i : i + _CHUNK]) for i in range(0, len(wanted), _CHUNK)]
        for where in wheres:
            stmt = select(*TOKEN_COLUMNS).join(Key, Key.id == TokenSink.key_pk).where(where)
            for r in conn.execute(stmt):
                found[r[0]] = token_snapshot(r)
    return [found[k] for k in sorted(found)]


def token_problems(engine: Engine, at: datetime) -> list[TokenSnapshot]:
    """The token sinks a verdict can find a problem in at ``at``: failing
    or refused ones, and ones whose token in place has expired (their
    refresh was due before, so ``next_refresh_at``'s index finds them)."""
    problem = or_(
        TokenSink.state.in_(FAILING_SINKS),
        and_(TokenSink.next_refresh_at <= at, TokenSink.expires_at <= at),
    )
    stmt = select(*TOKEN_COLUMNS).join(Key, Key.id == TokenSink.key_pk).where(problem).order_by(Key.key_id)
    with engine.connect() as conn:
        return [token_snapshot(r) for r in conn.execute(stmt)]


def rotations_for(engine: Engine, key_ids: Iterable[str]) -> list[RotationRow]:
    """The rotations of these keys (as the old key or the new one)."""
    wanted = sorted(set(key_ids))
    found: dict[int, RotationRow] = {}
    with Session(engine) as session:
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            stmt = select(Rotation).where(or_(Rotation.old_key_id.in_(chunk), Rotation.new_key_id.in_(chunk)))
            for row in session.scalars(stmt):
                found[row.id] = RotationRow.of(row)
    return [found[i] for i in sorted(found)]


def application_keys(engine: Engine, limit: int = 5) -> tuple[list[str], int]:
    """Up to ``limit`` ids of application keys still found (keyd never
    rotates them) and how many there are, for ``keyd status``'s rotation line."""
    where = (Key.kind == KeyKind.APPLICATION, Key.status != KeyStatus.MISSING)
    with engine.connect() as conn:
        ids = [
            str(k) for k in conn.scalars(select(Key.key_id).where(*where).order_by(Key.key_id).limit(limit))
        ]
        total = int(conn.execute(select(func.count()).select_from(Key).where(*where)).scalar_one())
    return ids, total
