"""SQL for token write-back (README "Validation probe and token write-back"): which keys get a
token sink, which sinks are due, and what a refresh did.

The ``tokens`` table says where each key's fresh token lives and which
KV v2 version keyd last wrote there (for check-and-set). It never holds
the token. Rows go out as frozen snapshots (refreshes run in worker
threads); outcomes are recorded in short batched transactions, and what a
crash loses is repaired from Vault by the next run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from keyd.store.alerts import AlertSpec, queue_alert
from keyd.store.keys import KeyRecord, key_records
from keyd.store.models import Event, Key, TokenSink
from keyd.vocab import KeyKind, KeyStatus, SinkState


@dataclass(frozen=True)
class Assignment:
    """Where one key's token should live."""

    key_pk: int
    mount: str
    path: str
    file_path: str | None


@dataclass(frozen=True)
class SinkTarget:
    """A due sink with the key that feeds it (never a token)."""

    id: int
    key: KeyRecord
    mount: str
    path: str
    file_path: str | None
    vault_version: int | None
    issued_at: datetime | None
    expires_at: datetime | None
    next_refresh_at: datetime | None
    state: str
    failures: int

    @property
    def ref(self) -> str:
        return f"{self.mount.strip('/')}/{self.path}"


@dataclass(frozen=True)
class EventSpec:
    kind: str  # token.unmanaged, token.conflict, token.adopted, ...
    detail: Mapping[str, Any]


def token_candidates(engine: Engine) -> list[KeyRecord]:
    """Active service-user keys with their locations (application keys
    cannot mint tokens for themselves). Plain rows, not ORM objects: this
    runs every round over every key."""
    with Session(engine) as session:
        return key_records(session, Key.status == KeyStatus.ACTIVE, Key.kind == KeyKind.SERVICE_ACCOUNT)


def ensure_sinks(engine: Engine, assignments: Iterable[Assignment], now: datetime) -> int:
    """Make the ``tokens`` rows match ``assignments``; returns rows changed.

    A path that changes hands (a rotated key of the same principal) keeps
    its row and KV version, so check-and-set continues; a key whose path
    changed (a new template) starts over at the new path.
    """
    changed = 0
    with Session(engine) as session, session.begin():
        rows = list(session.scalars(select(TokenSink)))
        by_path = {(r.mount, r.path): r for r in rows}
        by_key = {r.key_pk: r for r in rows}
        for a in assignments:
            at_path = by_path.get((a.mount, a.path))
            of_key = by_key.get(a.key_pk)
            if at_path is not None and at_path.key_pk == a.key_pk:
                if at_path.file_path != a.file_path:
                    at_path.file_path = a.file_path
                    changed += 1
                continue
            if of_key is not None:  # the key's path moved: free its old row
                by_path.pop((of_key.mount, of_key.path), None)
                session.delete(of_key)
                session.flush()
            if at_path is not None:  # state pending: re-mark the secret with the new key id
                by_key.pop(at_path.key_pk, None)
                at_path.key_pk = a.key_pk
                at_path.file_path = a.file_path
                at_path.state, at_path.updated_at = SinkState.PENDING, now
                session.flush()
            else:
                at_path = TokenSink(
                    key_pk=a.key_pk,
                    mount=a.mount,
                    path=a.path,
                    file_path=a.file_path,
                    state=SinkState.PENDING,
                    failures=0,
                    next_refresh_at=now,
                    updated_at=now,
                )
                session.add(at_path)
                by_path[(a.mount, a.path)] = at_path
            by_key[a.key_pk] = at_path
            changed += 1
    return changed


def due_sinks(
    engine: Engine, now: datetime, *, limit: int | None = None, keys: Mapping[int, KeyRecord] | None = None
) -> list[SinkTarget]:
    """Sinks due at ``now`` whose key is active, most overdue first.

    ``keys`` (the round's ``token_candidates`` by pk) saves loading every
    key and location a second time; a key missing from it (activated in
    between) is loaded here."""
    sink = TokenSink
    with Session(engine) as session:
        query = (
            select(
                sink.id,
                sink.key_pk,
                sink.mount,
                sink.path,
                sink.file_path,
                sink.vault_version,
                sink.issued_at,
                sink.expires_at,
                sink.next_refresh_at,
                sink.state,
                sink.failures,
            )
            .join(Key, Key.id == sink.key_pk)
            .where(Key.status == KeyStatus.ACTIVE, Key.kind == KeyKind.SERVICE_ACCOUNT)
            .where(or_(sink.next_refresh_at.is_(None), sink.next_refresh_at <= now))
            .order_by(sink.next_refresh_at, sink.id)
        )
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.execute(query))
        known = dict(keys or {})
        missing = sorted({r.key_pk for r in rows} - known.keys())
        known.update(_load_targets(session, missing))
        return [
            SinkTarget(
                id=r.id,
                key=known[r.key_pk],
                mount=r.mount,
                path=r.path,
                file_path=r.file_path,
                vault_version=r.vault_version,
                issued_at=r.issued_at,
                expires_at=r.expires_at,
                next_refresh_at=r.next_refresh_at,
                state=r.state,
                failures=r.failures or 0,
            )
            for r in rows
        ]


def _load_targets(session: Session, pks: Sequence[int]) -> dict[int, KeyRecord]:
    """Keys by pk with their locations, 500 at a time (bounded IN lists)."""
    out: dict[int, KeyRecord] = {}
    for start in range(0, len(pks), 500):
        out.update((k.pk, k) for k in key_records(session, Key.id.in_(pks[start : start + 500])))
    return out


def all_sinks(engine: Engine) -> list[TokenSink]:
    """Every sink row, detached (for status output and tests)."""
    with Session(engine, expire_on_commit=False) as session:
        found = list(session.scalars(select(TokenSink).order_by(TokenSink.id)))
        for row in found:
            session.expunge(row)
        return found


@dataclass(frozen=True)
class SinkUpdate:
    """The outcome of one refresh, to be recorded: new column values, and
    an event and alert to add in the same transaction."""

    sink: SinkTarget
    values: Mapping[str, Any]
    event: EventSpec | None = None
    alert: AlertSpec | None = None


def written(
    sink: SinkTarget,
    *,
    version: int,
    issued_at: datetime,
    expires_at: datetime,
    next_refresh_at: datetime,
    now: datetime,
    note: str | None = None,
    event: EventSpec | None = None,
    failures: int = 0,
) -> SinkUpdate:
    """A token is in Vault at ``version`` (written or found). ``failures``
    > 0: its token file could not be written (``note`` says why), so the
    sink is ``failed`` and due again at ``next_refresh_at`` (a retry)."""
    state = SinkState.FAILED if failures else SinkState.OK
    return SinkUpdate(
        sink,
        {
            "vault_version": version,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "next_refresh_at": next_refresh_at,
            "state": state,
            "failures": failures,
            "last_error": note,
            "updated_at": now,
        },
        event,
    )


def failed(
    sink: SinkTarget,
    *,
    state: str,
    failures: int,
    next_refresh_at: datetime,
    error: str,
    now: datetime,
    event: EventSpec | None = None,
    alert: AlertSpec | None = None,
) -> SinkUpdate:
    """A refresh failed; the old token stays. ``error`` must be scrubbed."""
    return SinkUpdate(
        sink,
        {
            "state": state,
            "failures": failures,
            "next_refresh_at": next_refresh_at,
            "last_error": error,
            "updated_at": now,
        },
        event,
        alert,
    )


def apply_updates(engine: Engine, updates: Sequence[SinkUpdate]) -> None:
    """Record refresh outcomes in one transaction. Batching is safe: a
    crash after a Vault write but before its record is repaired by the next
    run (the write is recognised as keyd's own)."""
    if not updates:
        return
    # The UPDATEs come first: on SQLite a transaction that reads before it
    # writes cannot wait for the write lock (SQLITE_BUSY at once, no retry).
    with Session(engine) as session, session.begin():
        session.execute(update(TokenSink), [{"id": u.sink.id, **u.values} for u in updates])
        for u in updates:
            if u.event is not None:
                _event(session, u.sink, u.event, u.values["updated_at"])
            if u.alert is not None:
                queue_alert(session, u.alert, u.sink.key.pk, u.values["updated_at"])


def _event(session: Session, sink: SinkTarget, event: EventSpec, now: datetime) -> None:
    detail = {"mount": sink.mount, "path": sink.path, **event.detail}
    session.add(
        Event(
            at=now,
            key_pk=sink.key.pk,
            key_id=sink.key.key_id,
            kind=event.kind,
            source=None,
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )


def events(engine: Engine, kind_prefix: str = "token.") -> list[Event]:
    with Session(engine, expire_on_commit=False) as session:
        found = list(
            session.scalars(select(Event).where(Event.kind.startswith(kind_prefix)).order_by(Event.id))
        )
        for row in found:
            session.expunge(row)
        return found
