"""A key and where it lives, as one frozen value: what every reader above
the store gets instead of ORM objects (probe, write-back, status, check).

``key_record`` is the one builder (from a ``keys`` row and its location
rows); ``key_records`` is the one query behind it: plain column rows, no ORM
objects, locations fetched 500 keys at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from keyd.exposure import Exposure
from keyd.store.models import Key, KeyLocation
from keyd.vocab import LocationStatus

_CHUNK = 500  # bound IN lists (SQLite's variable limit, PostgreSQL plan size)


@dataclass(frozen=True)
class Location:
    """One place a key file (or a zitadel listing) was found."""

    source: str  # configured source name
    ref: str  # file path or Vault mount/path
    status: str = LocationStatus.PRESENT  # vocab.LocationStatus
    kind: str | None = None  # None: a key file; "zitadel": a zitadel source's listing
    error: str | None = None
    warnings: tuple[Exposure, ...] = ()
    last_seen: datetime | None = None
    key_id: str | None = None  # None: an invalid file that holds no key
    # what a rotation publishes over and compares (``rotations.LocationStamp``),
    # where the reader asked for it (``key_records(stamps=True)``)
    content_hash: str | None = None
    version: int | None = None  # Vault KV version; None for files

    @property
    def holds_file(self) -> bool:
        """A key file that is there now: what probes and write-back read."""
        return self.status == LocationStatus.PRESENT and self.kind is None


@dataclass(frozen=True)
class KeyRecord:
    """One ``keys`` row with its locations (sorted by source, ref). Never key
    material: the file is read again, through ``files``, when needed."""

    pk: int
    key_id: str
    kind: str  # vocab.KeyKind
    principal: str
    status: str  # vocab.KeyStatus
    fingerprint: str = ""
    algorithm: str = ""
    content_hash: str = ""
    expires_at: datetime | None = None
    expiry_source: str | None = None  # None: the key file; "zitadel": a zitadel listing
    zitadel_created_at: datetime | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    next_probe_at: datetime | None = None
    probe_failures: int = 0
    last_probe_at: datetime | None = None
    last_probe_outcome: str | None = None  # vocab.ProbeOutcome
    last_ok_at: datetime | None = None
    last_error: str | None = None
    locations: tuple[Location, ...] = ()
    diagnosis: str | None = None  # of the last rejection, where the reader asked for it

    @property
    def files(self) -> tuple[Location, ...]:
        """The present key files, in order: where the key can be read from."""
        return tuple(loc for loc in self.locations if loc.holds_file)

    @property
    def held(self) -> bool:
        """A key file (directory or Vault) holds it, as opposed to a listing only."""
        return any(loc.holds_file for loc in self.locations)

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(loc.ref for loc in self.locations)


class KeyState(NamedTuple):
    """The four columns that decide whether a key's status must move
    (``inventory.reconcile`` settling keys no file change touched): the one
    narrower projection of a ``keys`` row. A scan reads it for the keys it
    may have to settle (``InventoryTx.unsettled_key_states``: those whose
    status could move, and the missing, invalid and unheld ones with a
    present location in the scanned source); a ``KeyRecord`` there would add
    location queries and objects for keys that, almost always, have nothing
    to move."""

    id: int
    status: str  # vocab.KeyStatus
    expires_at: datetime | None
    last_probe_outcome: str | None  # vocab.ProbeOutcome


KEY_COLUMNS: tuple[Any, ...] = (
    Key.id,
    Key.key_id,
    Key.kind,
    Key.principal,
    Key.status,
    Key.fingerprint,
    Key.algorithm,
    Key.content_hash,
    Key.expires_at,
    Key.expiry_source,
    Key.zitadel_created_at,
    Key.first_seen,
    Key.last_seen,
    Key.next_probe_at,
    Key.probe_failures,
    Key.last_probe_at,
    Key.last_probe_outcome,
    Key.last_ok_at,
    Key.last_error,
)
LOCATION_COLUMNS: tuple[Any, ...] = (
    KeyLocation.key_pk,
    KeyLocation.source,
    KeyLocation.ref,
    KeyLocation.status,
    KeyLocation.kind,
    KeyLocation.last_error,
    KeyLocation.warning,
    KeyLocation.last_seen,
)
STAMP_COLUMNS: tuple[Any, ...] = (KeyLocation.content_hash, KeyLocation.version)


def key_record(
    row: Any,
    locations: Iterable[Any] = (),
    seen: Mapping[str, datetime] | None = None,
    *,
    stamped: bool | None = None,
) -> KeyRecord:
    """The record of a row of ``KEY_COLUMNS`` (or a ``Key``) and rows of
    ``LOCATION_COLUMNS`` (or ``KeyLocation``s). ``seen``: each source's last
    successful scan (see ``location``); the key was last seen when its
    latest present location was. ``stamped``: see ``location``."""
    places = tuple(
        sorted(
            (location(loc, row.key_id, seen, stamped=stamped) for loc in locations),
            key=lambda loc: (loc.source, loc.ref),
        )
    )
    last_seen = row.last_seen
    if last_seen is not None:
        last_seen = max(
            [
                last_seen,
                *(loc.last_seen for loc in places if loc.status == LocationStatus.PRESENT and loc.last_seen),
            ]
        )
    return KeyRecord(
        pk=row.id,
        key_id=row.key_id,
        kind=row.kind,
        principal=row.principal,
        status=row.status,
        fingerprint=row.fingerprint,
        algorithm=row.algorithm,
        content_hash=row.content_hash,
        expires_at=row.expires_at,
        expiry_source=row.expiry_source,
        zitadel_created_at=row.zitadel_created_at,
        first_seen=row.first_seen,
        last_seen=last_seen,
        next_probe_at=row.next_probe_at,
        probe_failures=row.probe_failures or 0,
        last_probe_at=row.last_probe_at,
        last_probe_outcome=row.last_probe_outcome,
        last_ok_at=row.last_ok_at,
        last_error=row.last_error,
        locations=places,
    )


def location(
    row: Any, key_id: str | None, seen: Mapping[str, datetime] | None = None, *, stamped: bool | None = None
) -> Location:
    """A row of ``LOCATION_COLUMNS`` or a ``KeyLocation``. A present (or
    invalid) location was seen at its source's last successful scan in
    ``seen``: the scan does not rewrite unchanged rows. ``stamped``: the
    row has ``STAMP_COLUMNS`` (True) or not (False); None: look (a missed
    attribute of a row costs an exception, twice per location)."""
    last_seen = row.last_seen
    scanned = (seen or {}).get(row.source)
    if (
        row.status in (LocationStatus.PRESENT, LocationStatus.INVALID)
        and scanned is not None
        and (last_seen is None or scanned > last_seen)
    ):
        last_seen = scanned
    return Location(
        source=row.source,
        ref=row.ref,
        status=row.status,
        kind=row.kind,
        error=row.last_error,
        warnings=row.warning or (),
        last_seen=last_seen,
        key_id=key_id,
        content_hash=_stamp(row, "content_hash", stamped),  # a row of STAMP_COLUMNS too, or a KeyLocation
        version=_stamp(row, "version", stamped),
    )


def _stamp(row: Any, name: str, stamped: bool | None) -> Any:
    if stamped is None:
        return getattr(row, name, None)
    return getattr(row, name) if stamped else None


def key_records(
    session: Session,
    *where: ColumnElement[bool],
    order_by: Sequence[Any] = (Key.id,),
    limit: int | None = None,
    seen: Mapping[str, datetime] | None = None,
    stamps: bool = False,
) -> list[KeyRecord]:
    """The keys matching ``where``, in ``order_by`` order, at most ``limit``
    (``seen``: see ``key_record``; ``stamps``: locations with their
    ``content_hash`` and ``version``, for rotation)."""
    stmt = select(*KEY_COLUMNS).where(*where).order_by(*order_by)
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = list(session.execute(stmt))
    locations = locations_of(session, [r.id for r in rows], stamps=stamps)
    return [key_record(r, locations.get(r.id, ()), seen, stamped=stamps) for r in rows]


def locations_of(session: Session, pks: Sequence[int], *, stamps: bool = False) -> dict[int, list[Any]]:
    """Location rows by key pk, ``_CHUNK`` keys per query (``stamps``: with
    ``STAMP_COLUMNS``)."""
    columns = LOCATION_COLUMNS + STAMP_COLUMNS if stamps else LOCATION_COLUMNS
    out: dict[int, list[Any]] = {}
    for start in range(0, len(pks), _CHUNK):
        stmt = select(*columns).where(KeyLocation.key_pk.in_(pks[start : start + _CHUNK]))
        for loc in session.execute(stmt):
            out.setdefault(loc.key_pk, []).append(loc)
    return out
