"""The schema (docs/architecture.md §3). Never a private key, an assertion or a token.

Every timestamp column is ``UTCDateTime``: stored as UTC, returned aware
(SQLite hands back naive values; they are normalised here, at the edge).
Changing a model means adding a migration revision (README: "Database and schema changes").
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    inspect,
    text,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from keyd.exposure import Exposure
from keyd.timeutil import isoformat_z

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime passed to the database; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class Exposures(TypeDecorator[tuple[Exposure, ...]]):
    """``key_locations.warning``: a location's permission warnings, stored
    in the text column they always had (no migration) as a JSON list, NULL
    when there are none. The one place they become text and back.

    Rows written before this were the warnings' messages joined with
    ``"; "``; they are read as such until the next scan rewrites them."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: tuple[Exposure, ...] | None, dialect: Dialect) -> str | None:
        if not value:
            return None
        return json.dumps([{"path": e.path, "readers": e.readers, "directory": e.directory} for e in value])

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[Exposure, ...]:
        return exposures_from_text(value)


def exposures_from_text(value: str | None) -> tuple[Exposure, ...]:
    """``key_locations.warning`` as stored (``Exposures``) back to records."""
    if not value:
        return ()
    if not value.startswith("["):
        return tuple(_legacy_exposure(part) for part in value.split("; "))
    return tuple(Exposure(str(e["path"]), str(e["readers"]), bool(e["directory"])) for e in json.loads(value))


def _legacy_exposure(message: str) -> Exposure:
    """One ``"; "``-joined part of a warning stored before ``Exposures``."""
    directory = message.startswith("its directory ")
    rest = message.removeprefix("its directory ").removeprefix("key file ")
    path, sep, readers = rest.rpartition(" is readable by ")
    if not sep:
        return Exposure("", message)
    return Exposure(path, f"readable by {readers}", directory)


#: ``keys.next_alert_at``: evaluate at the next tick / nothing scheduled.
ALERT_NOW: Final = datetime(1970, 1, 1, tzinfo=UTC)
ALERT_NEVER: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Key(Base):
    """One ZITADEL key, identified by its key id, wherever it is stored."""

    __tablename__ = "keys"
    __table_args__ = (
        # the status page's bounded reads (keyd.store.page): keys by state and
        # expiry window, and the few keys whose last probe failed
        Index("ix_keys_status_expires_at", "status", "expires_at"),
        # the probe schedule (keyd.store.probes.due_targets): the active keys
        # never probed, by id, then the due ones, most overdue first, read
        # off the index instead of sorting every active key per chunk
        Index("ix_keys_probe_due", "status", "next_probe_at", "id"),
        Index(
            "ix_keys_failing",
            "id",
            sqlite_where=text("last_error IS NOT NULL"),
            postgresql_where=text("last_error IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # vocab.KeyKind
    principal: Mapped[str] = mapped_column(String(255), index=True)  # userId or clientId
    algorithm: Mapped[str] = mapped_column(String(8))  # RS256 | ES256
    key_size: Mapped[int | None] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 of public key
    # NULL = unknown (pre-2024 file); 9999-12-31T23:59:59Z = never (docs/zitadel.md §1)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # where expires_at came from: NULL = the key file, "zitadel" = a zitadel source's
    # listing (a file without expirationDate, or a key only ZITADEL knows)
    expiry_source: Mapped[str | None] = mapped_column(String(16))
    zitadel_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # ListKeys creationDate
    # SHA-256 of the parsed key-file content; changes re-arm probes and alerts.
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # vocab.KeyStatus
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # change_marker's max()
    # probe state
    next_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    probe_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_probe_outcome: Mapped[str | None] = mapped_column(String(16))  # vocab.ProbeOutcome
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # When the alert evaluation must look at this key next: the due time of
    # its next rung (computed by the evaluation), ALERT_NOW when something
    # alert-relevant changed (new key, status, expiry, principal, content:
    # set by the ORM hook below; Core writers set it themselves), NEVER when
    # nothing will be due. Evaluation reads only ``next_alert_at <= now``.
    next_alert_at: Mapped[datetime] = mapped_column(
        UTCDateTime, index=True, default=lambda: ALERT_NOW, server_default=text("'1970-01-01 00:00:00'")
    )

    locations: Mapped[list[KeyLocation]] = relationship(back_populates="key")


#: Changes to these make a key due for alert evaluation at once.
ALERT_FIELDS: Final = ("status", "expires_at", "principal", "content_hash", "kind")


@event.listens_for(Key, "before_update")
def _alert_rearm(_mapper: object, _connection: object, key: Key) -> None:
    state = inspect(key)
    if any(state.attrs[name].history.has_changes() for name in ALERT_FIELDS):
        key.next_alert_at = ALERT_NOW


class KeyLocation(Base):
    """Where a key file was found: a file path or a Vault secret.

    A location that cannot be parsed has no key (``key_pk`` NULL) and status
    ``invalid`` with ``last_error``; one no longer found is ``missing``.
    """

    __tablename__ = "key_locations"
    __table_args__ = (
        UniqueConstraint("source", "ref"),
        # the status page's problems (keyd.store.page): invalid and
        # group/other-readable locations, few among many
        Index(
            "ix_key_locations_invalid",
            "source",
            "ref",
            sqlite_where=text("status = 'invalid'"),
            postgresql_where=text("status = 'invalid'"),
        ),
        Index(
            "ix_key_locations_warned",
            "source",
            "ref",
            sqlite_where=text("warning IS NOT NULL"),
            postgresql_where=text("warning IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(255), index=True)  # configured source name
    ref: Mapped[str] = mapped_column(String(1024))  # file path or mount/path in Vault
    key_pk: Mapped[int | None] = mapped_column(ForeignKey("keys.id", ondelete="SET NULL"), index=True)
    # NULL = a key file (directory or Vault); "zitadel" = a key a zitadel source lists
    # (metadata only: never key material, never read for signing or published to)
    kind: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # vocab.LocationStatus
    # change detection: files (size, mtime_ns, inode), Vault (KV version)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    # permission warnings (group/other-readable): never NULL in Python, () when none
    warning: Mapped[tuple[Exposure, ...]] = mapped_column(Exposures, nullable=True, default=())
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    key: Mapped[Key | None] = relationship(back_populates="locations")


@event.listens_for(KeyLocation, "after_insert")
@event.listens_for(KeyLocation, "after_update")
def _location_rearm(_mapper: object, connection: Connection, loc: KeyLocation) -> None:
    """A location that appears, moves or changes status can change what is
    alerted (rotation, zitadel findings, routes): its keys are due now."""
    state = inspect(loc)
    changed = [state.attrs[name].history for name in ("status", "key_pk")]
    if not any(h.has_changes() for h in changed):
        return
    pks = {loc.key_pk, *state.attrs["key_pk"].history.deleted} - {None}
    if pks:
        table = cast(Table, Key.__table__)
        connection.execute(update(table).where(table.c.id.in_(pks)).values(next_alert_at=ALERT_NOW))


class SourceState(Base):
    """The outcome of the last scan of each configured source."""

    __tablename__ = "source_states"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)  # monotonic, for metrics


class Probe(Base):
    """History of mint attempts."""

    __tablename__ = "probes"
    __table_args__ = (Index("ix_probes_key_pk_at", "key_pk", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_pk: Mapped[int] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # vocab.ProbeOutcome (never UNREADABLE)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    diagnosis: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)  # scrubbed, operator-readable
    latency_ms: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(Integer, default=1)


class Alert(Base):
    """One decided alert, at most once per (about, kind, threshold, expires_at)
    so that no restart, reload or second daemon can send it twice.

    ``about`` is what the alert is about: a key's *key id* (one key pair
    may back several key ids, ZITADEL accepting a caller-supplied public
    key, and each key id has its own ladder), ``issuer``, or ``token:…``
    for a token path. The key's public-key fingerprint is an attribute.

    ``threshold`` names the rung or episode: ``30d`` or ``expired`` (the
    expiry ladder), an episode id, ... ``expires_at`` is, for a ladder rung,
    the key expiry (whole seconds) the rung counts down to, so a changed
    expiry gets a fresh ladder; NULL for every other alert. Uniqueness is two
    partial indexes, because SQL unique constraints treat NULLs as distinct:
    (about, kind, threshold, expires_at) where expires_at is set, and
    (about, kind, threshold) where it is NULL (``RUNG_UNIQUE``/``PLAIN_UNIQUE``).
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "uq_alerts_about_kind_threshold_expires_at",
            "about",
            "kind",
            "threshold",
            "expires_at",
            unique=True,
            sqlite_where=text("expires_at IS NOT NULL"),
            postgresql_where=text("expires_at IS NOT NULL"),
        ),
        Index(
            "uq_alerts_about_kind_threshold",
            "about",
            "kind",
            "threshold",
            unique=True,
            sqlite_where=text("expires_at IS NULL"),
            postgresql_where=text("expires_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    about: Mapped[str] = mapped_column(String(160))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    key_pk: Mapped[int | None] = mapped_column(ForeignKey("keys.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # vocab.AlertKind
    threshold: Mapped[str] = mapped_column(String(64))  # "30d", "expired", episode id, ...
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a rung's key expiry, else NULL
    severity: Mapped[str] = mapped_column(String(16))  # vocab.Severity
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(255))  # deterministic RFC 5322 Message-ID
    subject: Mapped[str] = mapped_column(Text)
    context: Mapped[str] = mapped_column(Text)  # JSON facts for rendering; never secrets
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


#: The conflict targets of the two unique indexes above (``ON CONFLICT``).
RUNG_UNIQUE: Final = (("about", "kind", "threshold", "expires_at"), text("expires_at IS NOT NULL"))
PLAIN_UNIQUE: Final = (("about", "kind", "threshold"), text("expires_at IS NULL"))


def threshold_text(threshold: str, expires_at: datetime | None) -> str:
    """How an alert's rung or episode is shown and named (Message-ID, the
    webhook's ``threshold``, the key page): ``7d@2027-01-01T00:00:00Z`` for a
    ladder rung, the threshold alone otherwise. Display only: nothing parses it."""
    if expires_at is None:
        return threshold
    return f"{threshold}@{isoformat_z(expires_at)}"


class Delivery(Base):
    """Outbox row: one alert on one channel (e-mail, webhook)."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "channel", "recipient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # vocab.Channel
    recipient: Mapped[str] = mapped_column(String(512))  # address list or URL
    state: Mapped[str] = mapped_column(String(16), index=True)  # vocab.DeliveryState
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TokenSink(Base):
    """Where a key's fresh access token lives. Never the token."""

    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("mount", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_pk: Mapped[int] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"), unique=True)
    mount: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    file_path: Mapped[str | None] = mapped_column(String(1024))
    vault_version: Mapped[int | None] = mapped_column(Integer)  # last version keyd wrote (CAS)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_refresh_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # vocab.SinkState
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # change_marker's max()


class Rotation(Base):
    """One rotation of a service-user key (docs/architecture.md, "Rotation").

    ``old_key_id`` is unique: one row per key ever rotated, so two daemons
    can never rotate one key twice; a rotation that starts over keeps its
    row and counts ``attempt``. State machine: planned → registered →
    proven → published → retired, or failed. Never a private key: the new
    pair lives in memory until it is written to the old key's locations.
    """

    __tablename__ = "rotations"
    __table_args__ = (UniqueConstraint("old_key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    old_key_id: Mapped[str] = mapped_column(String(128))
    old_key_pk: Mapped[int | None] = mapped_column(ForeignKey("keys.id", ondelete="SET NULL"), index=True)
    principal: Mapped[str] = mapped_column(String(255), index=True)
    # planned | registered | proven | published | retired | failed
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(16))  # due | manual | never_expiring
    algorithm: Mapped[str] = mapped_column(String(16))  # RSA-2048 ... EC-P256
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    new_key_id: Mapped[str | None] = mapped_column(String(128), index=True)
    new_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    old_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # set just before AddKey: a key of this user with new_expires_at created
    # after it may be keyd's, unrecorded (crash) and must be removed
    register_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # JSON list of the locations to publish to, with what keyd scanned there
    targets: Mapped[str | None] = mapped_column(Text)
    planned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proven_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hook_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retire_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # change_marker's max()
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # why it failed or is blocked: proof | conflict | permission | hook | register | ...
    failed_step: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """Append-only audit log of lifecycle transitions."""

    __tablename__ = "events"
    __table_args__ = (
        # the status page's last events (newest first, ties by id: a scan
        # writes thousands with one instant) and one key's events
        Index("ix_events_at_id", "at", "id"),
        Index("ix_events_key_id_at_id", "key_id", "at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_pk: Mapped[int | None] = mapped_column(ForeignKey("keys.id", ondelete="SET NULL"), index=True)
    key_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # key.new, key.changed, key.missing, ...
    source: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)  # JSON; never secrets


class State(Base):
    """Small named facts that must survive restarts (e.g. the start of an
    issuer-unavailable episode)."""

    __tablename__ = "state"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
