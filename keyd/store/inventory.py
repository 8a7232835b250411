"""SQL for the inventory: keys, key locations, events, source states.

Two halves:

* the write side, ``inventory_tx(engine)``: one transaction per source scan
  (docs/architecture.md §1). ``InventoryTx`` hands the reconciler live ORM rows of one
  source plus the few queries it needs; ``keyd.inventory.reconcile`` decides,
  this module only reads and writes. Nothing here ever sees key material:
  rows hold fingerprints and hashes, events hold JSON facts.
* the read side: ``source_index``/``known_versions``/``validated_hashes``
  feed the sources' change detection, ``inventory_snapshot`` feeds ``keyd status``
  with frozen rows (never live ORM objects).
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Text, and_, func, insert, or_, select, text, type_coerce, union_all
from sqlalchemy import Engine as Engine  # re-exported: layers above name it without sqlalchemy
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from keyd.errors import StoreError
from keyd.exposure import Exposure
from keyd.redact import scrub
from keyd.store.engine import session_scope
from keyd.store.keys import LOCATION_COLUMNS, KeyRecord, KeyState, Location, key_records, location
from keyd.store.models import Event, Key, KeyLocation, Probe, SourceState, exposures_from_text
from keyd.text import storable
from keyd.timeutil import isoformat_z
from keyd.vocab import KeyStatus, LocationKind, LocationStatus

LISTED = "listed"  # location_status_counts: present in a zitadel source's listing

_CHUNK = 500  # bound IN lists (SQLite's variable limit, PostgreSQL plan size)


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class LocationIndex(NamedTuple):
    """A location as the reconciler first sees it: no ORM object yet."""

    id: int
    key_pk: int | None
    status: str
    warning: tuple[Exposure, ...]


#: A present location holding a key, as ``SourceIndex.held`` has it: the
#: driver's own row ``(size, mtime_ns, inode, key pk, ref)``, its first
#: three items the file stamp a directory source compares.
HeldRow = tuple[int | None, int | None, int | None, int, str]


@dataclass(frozen=True)
class SourceIndex:
    """One source's locations as a warm scan needs them, from three narrow
    queries whose rows are used as the driver returns them (no ORM object,
    no SQLAlchemy row, no tuple built per location): all a scan of an
    unchanged tree reads from the database.

    ``held``: ``{ref: HeldRow}`` of the present locations that hold a key,
    the only ones a scan may skip; ``warned``: ``{ref: warning text}`` of
    the few of them that have a permission warning (``warnings`` reads
    one: the text is not read for every row); ``other``: the refs of every
    other location that is not missing (an invalid one, re-read each scan).
    Missing locations are not read at all: a file that comes back is
    looked up by its ref."""

    held: dict[str, HeldRow]
    other: frozenset[str]
    warned: dict[str, str] = field(default_factory=dict)
    #: the key pks of ``held``'s rows (read anyway, to split off the rows
    #: that hold none): a warm scan that sees every held file unchanged
    #: takes them from here instead of from 10^5 looked-up rows
    keys: set[int] = field(default_factory=set)

    def warnings(self, ref: str) -> tuple[Exposure, ...]:
        """The permission warnings stored on the held location ``ref``."""
        return exposures_from_text(self.warned.get(ref))


#: A partial scan of more directories than this reads the whole index and
#: keeps what it needs (one narrow query instead of a long OR of LIKEs).
_SCOPE_LIKES = 32
_REF = operator.itemgetter(4)
_KEY_PK = operator.itemgetter(3)


def _source_index(conn: Connection, source: str, directories: Collection[str] | None = None) -> SourceIndex:
    loc = KeyLocation.__table__.c
    present = and_(loc.status == LocationStatus.PRESENT, loc.key_pk.is_not(None))
    where = [loc.source == source]
    if directories is not None and len(directories) <= _SCOPE_LIKES:
        # a pre-filter only (SQLite's LIKE ignores ASCII case): _in_scope decides
        where.append(or_(*(loc.ref.like(_like_prefix(d), escape="\\") for d in sorted(directories))))
    # every present location, those holding no key (rare) split off below:
    # one pass over the source's rows instead of a second one for ``other``
    result = conn.execute(
        select(loc.size, loc.mtime_ns, loc.inode, loc.key_pk, loc.ref).where(
            *where, loc.status == LocationStatus.PRESENT
        )
    )
    try:
        rows = result.cursor.fetchall()  # plain driver tuples: ~2x faster than SQLAlchemy rows
    finally:
        result.close()
    keys = set(map(_KEY_PK, rows))
    keyless = []
    if None in keys:
        keys.discard(None)
        keyless = [row[4] for row in rows if row[3] is None]
        rows = [row for row in rows if row[3] is not None]
    # the partial index ix_key_locations_warned: only the rows that have one
    warned: dict[str, str] = {
        ref: warning
        for ref, warning in conn.execute(
            select(loc.ref, type_coerce(loc.warning, Text)).where(*where, present, loc.warning.is_not(None))
        )
    }
    # the partial index ix_key_locations_invalid, the invalid ones only (its
    # condition as a literal: a bound parameter cannot match it in a generic plan)
    invalid = text(f"key_locations.status = '{LocationStatus.INVALID.value}'")
    other = [*conn.scalars(select(loc.ref).where(*where, invalid)), *keyless]
    if directories is None:
        return SourceIndex(dict(zip(map(_REF, rows), rows, strict=True)), frozenset(other), warned, keys)
    scope = frozenset(storable(d) for d in directories)
    held = {row[4]: row for row in rows if _in_scope(row[4], scope)}
    return SourceIndex(
        held,
        frozenset(ref for ref in other if _in_scope(ref, scope)),
        {ref: warning for ref, warning in warned.items() if _in_scope(ref, scope)},
        set(map(_KEY_PK, held.values())),
    )


def _like_prefix(directory: str) -> str:
    escaped = storable(directory).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%"


def _in_scope(ref: str, directories: frozenset[str]) -> bool:
    """``ref`` names a file directly in one of ``directories``."""
    return ref.rpartition("/")[0] in directories


def source_index(engine: Engine, source: str, directories: Collection[str] | None = None) -> SourceIndex:
    """``SourceIndex`` of ``source``, read outside any scan transaction
    (before the source is walked); ``InventoryTx.source_index`` reads it
    inside one. ``directories`` (a partial scan): only the locations of
    files directly in these directories (full paths, not recursive)."""
    with engine.connect() as conn:
        return _source_index(conn, source, directories)


class InventoryTx:
    """The queries and writes one reconcile needs, inside one transaction.

    Built for 10^5 locations per source: unchanged rows are never loaded as
    ORM objects (``source_index``, ``unsettled_key_states`` work on plain
    tuples; rows that change are loaded by ref or pk, in chunks), and ``release`` flushes, writes the queued
    events and empties the session so a cold scan's memory stays bounded.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._events: list[tuple[datetime, str, str | None, Key | None, str | None, str | None]] = []

    def location_index(self, source: str) -> dict[str, LocationIndex]:
        """``{ref: LocationIndex}`` for every location of ``source``."""
        stmt = select(
            KeyLocation.ref, KeyLocation.id, KeyLocation.key_pk, KeyLocation.status, KeyLocation.warning
        ).where(KeyLocation.source == source)
        return {
            ref: LocationIndex(id_, key_pk, status, warning)
            for ref, id_, key_pk, status, warning in self.session.execute(stmt)
        }

    def source_index(self, source: str, directories: Collection[str] | None = None) -> SourceIndex:
        return _source_index(self.session.connection(), source, directories)

    def locations_by_ref(self, source: str, refs: Iterable[str]) -> dict[str, KeyLocation]:
        """ORM locations (with their keys) of ``source`` for the refs that
        will change, missing ones included (a file that came back)."""
        found: dict[str, KeyLocation] = {}
        for chunk in _chunks(sorted(set(refs))):
            stmt = (
                select(KeyLocation)
                .where(KeyLocation.source == source, KeyLocation.ref.in_(chunk))
                .options(selectinload(KeyLocation.key))
            )
            found.update((loc.ref, loc) for loc in self.session.scalars(stmt))
        return found

    def locations_by_id(self, ids: Iterable[int]) -> dict[int, KeyLocation]:
        """ORM locations (with their keys) for the rows that will change."""
        found: dict[int, KeyLocation] = {}
        for chunk in _chunks(sorted(set(ids))):
            stmt = select(KeyLocation).where(KeyLocation.id.in_(chunk)).options(selectinload(KeyLocation.key))
            found.update((loc.id, loc) for loc in self.session.scalars(stmt))
        return found

    def keys_by_key_id(self, key_ids: Iterable[str]) -> dict[str, Key]:
        wanted = sorted(set(key_ids))
        found: dict[str, Key] = {}
        for chunk in _chunks(wanted):
            for key in self.session.scalars(select(Key).where(Key.key_id.in_(chunk))):
                found[key.key_id] = key
        return found

    def keys_by_pk(self, pks: Iterable[int]) -> list[Key]:
        found: list[Key] = []
        for chunk in _chunks(sorted(set(pks))):
            found.extend(self.session.scalars(select(Key).where(Key.id.in_(chunk))))
        return found

    def unsettled_key_states(self, now: datetime, source: str | None = None) -> list[KeyState]:
        """Keys whose status may have to move without any file changing:
        all but the settled ones (rejected; active and not yet expired;
        expired). Few rows, each part one range of ``ix_keys_status_expires_at``
        (not a scan of every key): a warm scan reads no key row it has no
        reason to touch and writes nothing.

        ``source``: of the keys neither active, expired nor rejected
        (missing, invalid, unheld: they pile up), only those with a present
        location in this source (the only ones its scan can settle; normally
        none), instead of every one of them on every scan."""
        k = Key.__table__.c
        states = select(k.id, k.status, k.expires_at, k.last_probe_outcome)
        ruled = (KeyStatus.ACTIVE, KeyStatus.EXPIRED, KeyStatus.REJECTED)  # by expiry, or staying
        odd = [s.value for s in KeyStatus if s not in ruled]
        stray = states.where(k.status.in_(odd))
        if source is not None:
            loc = KeyLocation.__table__.c
            stray = stray.where(
                select(loc.id)
                .where(loc.key_pk == k.id, loc.source == source, loc.status == LocationStatus.PRESENT)
                .exists()
            )
        stmt = union_all(
            states.where(k.status == KeyStatus.ACTIVE, k.expires_at <= now),
            states.where(k.status == KeyStatus.EXPIRED, k.expires_at > now),
            states.where(k.status == KeyStatus.EXPIRED, k.expires_at.is_(None)),
            stray,
        )
        return [KeyState(*row) for row in self.session.execute(stmt)]

    def release(self) -> None:
        """Flush, write queued events, and forget every loaded object."""
        self.session.flush()
        self.write_events()
        self.session.expunge_all()

    def location_status_counts(self, key_pks: Iterable[int]) -> dict[int, dict[str, int]]:
        """``{key pk: {location status: count}}`` over *all* sources, so a
        key still present elsewhere is never called missing. Flushes first."""
        self.session.flush()
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        for chunk in _chunks(sorted(set(key_pks))):
            stmt = (
                select(KeyLocation.key_pk, KeyLocation.status, KeyLocation.kind, func.count())
                .where(KeyLocation.key_pk.in_(chunk))
                .group_by(KeyLocation.key_pk, KeyLocation.status, KeyLocation.kind)
            )
            for pk, status, kind, n in self.session.execute(stmt):
                if pk is None:
                    continue
                if kind == LocationKind.ZITADEL:  # listed by ZITADEL: not a key file
                    status = LISTED if status == LocationStatus.PRESENT else "unlisted"
                counts[pk][status] = counts[pk].get(status, 0) + n
        return counts

    def held_keys_of(self, principals: Iterable[str]) -> list[Key]:
        """Keys of these principals that a key file (not a listing) holds."""
        held = select(KeyLocation.key_pk).where(
            KeyLocation.status == LocationStatus.PRESENT, KeyLocation.kind.is_(None)
        )
        found: list[Key] = []
        for chunk in _chunks(sorted(set(principals))):
            found.extend(self.session.scalars(select(Key).where(Key.principal.in_(chunk), Key.id.in_(held))))
        return found

    def add_probe(self, row: Probe) -> None:
        self.session.add(row)

    def add(self, row: Key | KeyLocation) -> None:
        self.session.add(row)

    def flush(self) -> None:
        self.session.flush()

    def event(
        self,
        at: datetime,
        kind: str,
        *,
        source: str | None,
        key: Key | None = None,
        key_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Queue an audit event (``detail``: JSON facts, never secrets).

        Events are written by ``write_events`` after a flush, so that keys
        created in this transaction already have the pk the event points to.
        """
        text = json.dumps(detail, sort_keys=True, default=_json_value) if detail else None
        self._events.append((at, kind, source, key, key.key_id if key is not None else key_id, text))

    @property
    def pending_events(self) -> int:
        return len(self._events)

    def write_events(self) -> int:
        """Insert the queued events in one statement; returns how many."""
        if not self._events:
            return 0
        self.session.flush()
        rows = [
            {
                "at": at,
                "kind": kind,
                "source": source,
                "key_pk": key.id if key is not None else None,
                "key_id": key_id,
                "detail": detail,
            }
            for at, kind, source, key, key_id, detail in self._events
        ]
        self.session.execute(insert(Event), rows)
        written = len(rows)
        self._events.clear()
        return written

    def source_state(self, name: str) -> SourceState:
        state = self.session.get(SourceState, name)
        if state is None:
            state = SourceState(name=name, consecutive_failures=0, error_count=0)
            self.session.add(state)
        return state


def _json_value(value: object) -> str:
    """Event details: instants as RFC 3339 UTC, anything else as text."""
    if isinstance(value, datetime):
        return isoformat_z(value)
    return str(value)


class InventoryConflict(StoreError):
    """Another writer changed the same rows meanwhile (e.g. ``keyd scan`` run
    by hand while the daemon scans): a unique key id or location was
    inserted twice. The transaction was rolled back; doing it again reads
    the other writer's rows and succeeds."""

    retryable = True


@contextmanager
def inventory_tx(engine: Engine) -> Iterator[InventoryTx]:
    """One transaction: commits when the block ends, rolls back if it raises
    (a unique-constraint race becomes ``InventoryConflict``)."""
    try:
        with session_scope(engine) as session:
            tx = InventoryTx(session)
            yield tx
            tx.write_events()
    except (IntegrityError, OperationalError) as exc:
        if not _is_conflict(exc):
            raise
        detail = scrub(str(exc.orig).strip().splitlines()[0]) if exc.orig else "conflict"
        raise InventoryConflict(f"inventory changed by another writer: {detail}") from None


def _is_conflict(exc: IntegrityError | OperationalError) -> bool:
    """A unique-constraint race (PostgreSQL), or SQLite refusing to write on
    a snapshot another connection has moved past (``SQLITE_BUSY_SNAPSHOT``)."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


def record_source_failure(engine: Engine, name: str, error: str, at: datetime) -> SourceState:
    """A source could not be scanned: only its ``SourceState`` and an event
    change; its keys and locations stay exactly as they were."""
    message = scrub(error)
    with inventory_tx(engine) as tx:
        state = tx.source_state(name)
        state.last_attempt_at = at
        state.last_error = message
        state.consecutive_failures = (state.consecutive_failures or 0) + 1
        state.error_count = (state.error_count or 0) + 1
        tx.event(
            at,
            "source.failed",
            source=name,
            detail={"error": message, "consecutive_failures": state.consecutive_failures},
        )
        tx.write_events()
        return _detached_state(state)


def _detached_state(state: SourceState) -> SourceState:
    return SourceState(
        name=state.name,
        last_attempt_at=state.last_attempt_at,
        last_success_at=state.last_success_at,
        last_error=state.last_error,
        consecutive_failures=state.consecutive_failures,
        error_count=state.error_count,
    )


# --- read side: change detection -------------------------------------------


def known_versions(engine: Engine, source: str) -> dict[str, int]:
    """``{mount/path: KV version}`` of the present Vault locations holding a key."""
    stmt = select(KeyLocation.ref, KeyLocation.version).where(
        KeyLocation.source == source,
        KeyLocation.status == LocationStatus.PRESENT,
        KeyLocation.key_pk.is_not(None),
        KeyLocation.version.is_not(None),
    )
    with session_scope(engine) as session:
        return {ref: int(version) for ref, version in session.execute(stmt) if version is not None}


def validated_hashes(engine: Engine) -> frozenset[str]:
    """Content hashes the inventory has accepted (each was fully validated
    when first seen: see ``keyd.sources.directory``)."""
    with session_scope(engine) as session:
        keys = session.scalars(select(Key.content_hash).distinct())
        locs = session.scalars(
            select(KeyLocation.content_hash).distinct().where(KeyLocation.content_hash.is_not(None))
        )
        return frozenset(h for h in [*keys, *locs] if h)


def last_attempts(engine: Engine) -> dict[str, datetime]:
    """``{source name: last scan attempt}`` (a source's own interval)."""
    with session_scope(engine) as session:
        stmt = select(SourceState.name, SourceState.last_attempt_at)
        return {name: at for name, at in session.execute(stmt) if at is not None}


def next_active_expiry(engine: Engine) -> datetime | None:
    """The earliest ``expires_at`` of an active key (one index seek on
    ``ix_keys_status_expires_at``): until then no key of a source nothing
    happened to has to turn expired."""
    with engine.connect() as conn:
        stmt = select(func.min(Key.expires_at)).where(
            Key.status == KeyStatus.ACTIVE, Key.expires_at.is_not(None)
        )
        found: datetime | None = conn.scalar(stmt)
        return found


def expired_active_refs(engine: Engine, sources: Iterable[str], now: datetime) -> dict[str, set[str]]:
    """``{source: refs}``: the present locations, in ``sources``, of the
    active keys whose expiry has passed (their status must move)."""
    names = sorted(set(sources))
    if not names:
        return {}
    stmt = (
        select(KeyLocation.source, KeyLocation.ref)
        .join(Key, Key.id == KeyLocation.key_pk)
        .where(
            Key.status == KeyStatus.ACTIVE,
            Key.expires_at <= now,
            KeyLocation.status == LocationStatus.PRESENT,
            KeyLocation.source.in_(names),
        )
    )
    found: dict[str, set[str]] = defaultdict(set)
    with engine.connect() as conn:
        for source, ref in conn.execute(stmt):
            found[source].add(ref)
    return dict(found)


def key_counts(engine: Engine) -> dict[str, int]:
    """``{status: number of keys}``."""
    with session_scope(engine) as session:
        stmt = select(Key.status, func.count()).group_by(Key.status)
        return {status: n for status, n in session.execute(stmt)}


# --- read side: the inventory for reports ----------------------------------


@dataclass(frozen=True)
class InventorySnapshot:
    keys: tuple[KeyRecord, ...]
    orphans: tuple[Location, ...]  # invalid locations holding no key
    sources: tuple[SourceState, ...]


def inventory_snapshot(engine: Engine) -> InventorySnapshot:
    """Everything ``keyd status`` shows, as frozen records, in one read."""
    with session_scope(engine) as session:
        states = list(session.scalars(select(SourceState).order_by(SourceState.name)))
        seen = {s.name: s.last_success_at for s in states if s.last_success_at is not None}
        keys = key_records(session, order_by=(Key.principal, Key.key_id), seen=seen)
        diagnoses = latest_diagnoses(session, [k.pk for k in keys if k.status == KeyStatus.REJECTED])
        records = tuple(replace(k, diagnosis=diagnoses[k.pk]) if diagnoses.get(k.pk) else k for k in keys)
        orphans = session.execute(
            select(*LOCATION_COLUMNS)
            .where(KeyLocation.key_pk.is_(None), KeyLocation.status == LocationStatus.INVALID)
            .order_by(KeyLocation.source, KeyLocation.ref)
        )
        return InventorySnapshot(
            records, tuple(location(loc, None) for loc in orphans), tuple(_detached_state(s) for s in states)
        )


def latest_diagnoses(session: Session, pks: Iterable[int]) -> dict[int, str | None]:
    """The diagnosis of each key's latest probe row (keys without one: absent)."""
    out: dict[int, str | None] = {}
    for chunk in _chunks(sorted(set(pks))):
        stmt = (
            select(Probe.key_pk, Probe.diagnosis)
            .where(Probe.key_pk.in_(chunk))
            .order_by(Probe.key_pk, Probe.at.desc(), Probe.id.desc())
        )
        for pk, diagnosis in session.execute(stmt):
            out.setdefault(pk, diagnosis)
    return out
