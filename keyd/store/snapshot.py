"""Read-only snapshots of the inventory for ``/metrics``, ``/readyz`` and
``keyd check`` (all SQL stays in ``store/``, docs/architecture.md rule 1).

Every function returns detached, plain dataclasses. Rows are read one at a
time and a row that cannot be decoded (a corrupt timestamp, a value a
newer keyd wrote) is logged and skipped: one bad row must never take
``/metrics`` or ``keyd check`` down with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select, text
from sqlalchemy.engine import Connection, Result, Row
from sqlalchemy.engine import Engine as Engine  # re-exported: layers above store/ type with it
from sqlalchemy.exc import SQLAlchemyError

from keyd.store.alerts import OPEN_STATES
from keyd.store.keys import KEY_COLUMNS, LOCATION_COLUMNS, KeyRecord, key_record
from keyd.store.models import Delivery, Key, KeyLocation, Rotation, SourceState, TokenSink
from keyd.vocab import KeyStatus, LocationStatus

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_BAD_ROWS: Final = 1000  # give up on a table that is entirely unreadable
CHUNK: Final = 500  # keys per query in ``keys`` (also bounds its IN lists)


@dataclass(frozen=True)
class LocationProblem:
    """A location that holds no usable key (``invalid``) with its reason."""

    source: str
    ref: str
    status: str
    error: str | None


@dataclass(frozen=True)
class SourceSnapshot:
    name: str
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    error_count: int


@dataclass(frozen=True)
class TokenSnapshot:
    key_id: str
    principal: str
    sink: str
    state: str
    expires_at: datetime | None
    last_error: str | None = None


def ping(engine: Engine) -> bool:
    """True if the database answers ``SELECT 1`` (``/readyz``)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()
    except SQLAlchemyError as exc:
        log.warning("database ping failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return False
    return True


def keys(engine: Engine, *, unless_quiet_after: datetime | None = None) -> Iterator[KeyRecord]:
    """Every key with its locations, in key id order (unreadable rows
    skipped, see ``_rows``), ``CHUNK`` keys at a time: at most one chunk of
    rows and records is held, whatever the size of the inventory (``keyd
    check`` reads every key). ``unless_quiet_after``: all but the keys
    ``quiet_keys`` counts (the daemon's status line reads only those)."""
    after: str | None = None
    while True:
        with engine.connect() as conn:
            page = select(Key.id, Key.key_id).order_by(Key.key_id).limit(CHUNK)
            if unless_quiet_after is not None:
                page = page.where(not_(quiet(unless_quiet_after)))
            ids = list(conn.execute(page if after is None else page.where(Key.key_id > after)))
            if not ids:
                return
            chunk = _key_chunk(conn, [pk for pk, _ in ids])
        yield from chunk
        if len(ids) < CHUNK:
            return
        after = ids[-1][1]


def quiet_keys(engine: Engine, after: datetime) -> int:
    """The keys ``quiet(after)`` holds, counted in SQL instead of read. On
    an idle inventory that is nearly every key. (A row too corrupt to read
    is counted here, where ``keys`` would skip it.)"""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Key).where(quiet(after))).scalar_one())


def quiet(after: datetime) -> ColumnElement[bool]:
    """The one rule for a key that cannot be a problem before ``after`` (the
    end of the warning window): active, and expiring after ``after`` or not
    saying when. A verdict only counts such a key (``keyd.runtime.check``);
    the status line counts them in SQL and judges the rest, the status page
    and ``keyd status`` read the rest (``not_quiet``, ``page.attention``)."""
    return and_(Key.status == KeyStatus.ACTIVE, or_(Key.expires_at.is_(None), Key.expires_at > after))


def not_quiet(after: datetime, statuses: Sequence[str]) -> list[Select[int]]:
    """The pks of the keys ``quiet(after)`` does not hold, as index lookups
    to ``UNION``: every key in ``statuses`` (non-active statuses; a caller
    leaves out the ones it only counts, such as ``missing``) and every
    active key expiring by ``after``."""
    if KeyStatus.ACTIVE in statuses:
        raise ValueError("not_quiet: statuses are the non-active ones")
    return [
        select(Key.id).where(Key.status.in_(statuses)),
        select(Key.id).where(Key.status == KeyStatus.ACTIVE, Key.expires_at <= after),
    ]


def _key_chunk(conn: Connection, pks: list[int]) -> list[KeyRecord]:
    locations: dict[int, list[Any]] = {}
    stmt = select(*LOCATION_COLUMNS).where(KeyLocation.key_pk.in_(pks))
    for loc in _rows(conn.execute(stmt), "key_locations", lambda row: row):
        locations.setdefault(loc.key_pk, []).append(loc)
    result = conn.execute(select(*KEY_COLUMNS).where(Key.id.in_(pks)).order_by(Key.key_id))
    return list(_rows(result, "keys", lambda r: key_record(r, locations.get(r.id, ()))))


@dataclass(frozen=True)
class Aggregates:
    """Inventory-wide figures for ``/metrics``, each one SQL aggregate."""

    keys_by_status: dict[str, int]
    oldest_probe_ok: datetime | None  # min last_ok_at over active keys that have one
    never_probe_ok: int  # active keys without any successful probe
    tokens_by_state: dict[str, int]
    earliest_token_expiry: datetime | None
    open_deliveries: int
    locations: dict[tuple[str, str], int]  # (source, status) -> locations


def key_series(engine: Engine) -> Iterator[Row[tuple[str, str, str, datetime | None]]]:
    """What ``/metrics`` exports per key by default: each key's ``key_id``,
    ``principal``, ``status`` and ``expires_at`` (``KeyRecord``'s names),
    streamed in key id order: four columns, no join, nothing held (the
    caller turns each row into its samples at once)."""
    with engine.connect().execution_options(yield_per=CHUNK) as conn:
        result = conn.execute(
            select(Key.key_id, Key.principal, Key.status, Key.expires_at).order_by(Key.key_id)
        )
        yield from _rows(result, "keys", lambda row: row)


def aggregates(engine: Engine) -> Aggregates:
    with engine.connect() as conn:
        by_status = {
            str(s): int(n) for s, n in conn.execute(select(Key.status, func.count()).group_by(Key.status))
        }
        active = Key.status == KeyStatus.ACTIVE
        oldest_ok = conn.execute(select(func.min(Key.last_ok_at)).where(active)).scalar()
        never_ok = conn.execute(
            select(func.count()).select_from(Key).where(active, Key.last_ok_at.is_(None))
        ).scalar_one()
        by_state = {
            str(s): int(n)
            for s, n in conn.execute(select(TokenSink.state, func.count()).group_by(TokenSink.state))
        }
        earliest = conn.execute(select(func.min(TokenSink.expires_at))).scalar()
        locations = {
            (str(src), str(st)): int(n)
            for src, st, n in conn.execute(
                select(KeyLocation.source, KeyLocation.status, func.count()).group_by(
                    KeyLocation.source, KeyLocation.status
                )
            )
        }
    return Aggregates(
        by_status,
        _utc(oldest_ok),
        int(never_ok),
        by_state,
        _utc(earliest),
        open_deliveries(engine),
        locations,
    )


def change_marker(engine: Engine) -> tuple[object, ...]:
    """A cheap fingerprint of everything ``/metrics`` shows: it differs
    whenever a key, token sink or open delivery changed (every writer stamps
    ``updated_at``; rows are never deleted, so counts only grow) or a source
    appeared or failed (its error count, the one source figure ``/metrics``
    shows). Not a source's attempt time: a scan of an unchanged tree writes
    its source's heartbeat every 15 min (``SOURCE_HEARTBEAT``), and that
    must not rebuild a snapshot of 10^5 keys (5-6 s of CPU) that it left
    as it was."""
    with engine.connect() as conn:
        return tuple(conn.execute(change_marker_query()).one())


def change_marker_query() -> Select[Any]:
    """One statement of scalar subqueries, so each ``max(updated_at)`` is its
    own aggregate, answered by one entry of its index (migration 0004); a
    ``count(), max()`` pair in one SELECT walks the whole table instead
    (42 ms at 100,000 keys on SQLite, every 15 s)."""
    parts: list[Any] = []
    for model in (Key, TokenSink, Rotation):
        parts.append(select(func.count()).select_from(model).scalar_subquery())
        parts.append(select(func.max(model.updated_at)).scalar_subquery())
    parts.append(select(func.count()).select_from(SourceState).scalar_subquery())
    parts.append(select(func.sum(SourceState.error_count)).scalar_subquery())
    parts.append(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.state.in_(("pending", "failed")))
        .scalar_subquery()
    )
    return select(*parts)


def _utc(value: Any) -> datetime | None:
    """Aggregates bypass the column type on SQLite (a naive value or text)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def location_problems(engine: Engine) -> list[LocationProblem]:
    """Locations without a usable key: ``invalid`` files/secrets."""
    with engine.connect() as conn:
        result = conn.execute(
            select(KeyLocation.source, KeyLocation.ref, KeyLocation.status, KeyLocation.last_error)
            .where(KeyLocation.key_pk.is_(None), KeyLocation.status == LocationStatus.INVALID)
            .order_by(KeyLocation.source, KeyLocation.ref)
        )
        return [LocationProblem(*row) for row in _rows(result, "key_locations", tuple)]


def sources(engine: Engine) -> list[SourceSnapshot]:
    with engine.connect() as conn:
        result = conn.execute(
            select(
                SourceState.name,
                SourceState.last_attempt_at,
                SourceState.last_success_at,
                SourceState.last_error,
                SourceState.consecutive_failures,
                SourceState.error_count,
            ).order_by(SourceState.name)
        )
        return [
            SourceSnapshot(r[0], r[1], r[2], r[3], r[4] or 0, r[5] or 0)
            for r in _rows(result, "source_states", tuple)
        ]


#: What a ``TokenSnapshot`` is made of (``token_snapshot``), joined to its key.
TOKEN_COLUMNS: Final = (
    Key.key_id,
    Key.principal,
    TokenSink.mount,
    TokenSink.path,
    TokenSink.state,
    TokenSink.expires_at,
    TokenSink.last_error,
)


def token_snapshot(r: Any) -> TokenSnapshot:
    """A ``TOKEN_COLUMNS`` row as a ``TokenSnapshot``."""
    return TokenSnapshot(r[0], r[1], f"{r[2]}/{r[3]}", r[4], _utc(r[5]), r[6])


def tokens(engine: Engine) -> list[TokenSnapshot]:
    with engine.connect() as conn:
        result = conn.execute(
            select(*TOKEN_COLUMNS).join(Key, Key.id == TokenSink.key_pk).order_by(Key.key_id)
        )
        return [token_snapshot(r) for r in _rows(result, "tokens", tuple)]


def open_deliveries(engine: Engine) -> int:
    """Outbox rows not yet sent (pending or failed-and-retrying)."""
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(Delivery).where(Delivery.state.in_(OPEN_STATES))
        ).scalar_one()
    return int(count)


def _rows(result: Result[*tuple[Any, ...]], table: str, make: Callable[[Any], T]) -> Iterator[T]:
    """Rows of ``result`` one by one; undecodable rows are logged and skipped
    (the cursor has already moved past them, so the next fetch continues)."""
    bad = 0
    while bad < _MAX_BAD_ROWS:
        try:
            row = result.fetchone()
        except (ValueError, TypeError, OverflowError) as exc:
            bad += 1
            log.error("skipping an unreadable %s row: %s", table, exc)
            continue
        if row is None:
            return
        yield make(row)
    log.error("giving up on table %s after %d unreadable rows", table, bad)
