"""Read-only queries for the status page (``GET /``, ``/keys/{key_id}``).

The inventory itself comes from ``inventory_snapshot`` and the write-back
state from ``snapshot.tokens``; this module adds what only the page shows:
the audit log, one key's alerts and deliveries, and its token sink in
detail. Every function returns detached, frozen rows and never opens a
write transaction. Nothing read here is secret: events, alerts and sinks
hold facts, paths and scrubbed messages, never key material or tokens; a
webhook's URL (which may embed a secret) is not even selected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.store.inventory import InventorySnapshot
from keyd.store.keys import key_records
from keyd.store.models import Alert, Delivery, Event, Key, Rotation, TokenSink
from keyd.store.rotations import RotationRow

#: The page shows this many audit events (newest first).
RECENT_EVENTS = 100


@dataclass(frozen=True)
class EventRow:
    at: datetime
    key_id: str | None
    kind: str
    source: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class DeliveryRow:
    channel: str  # email | webhook; neither the recipient nor the error is read: a
    # webhook URL (which may embed a secret) can be in both
    state: str
    attempts: int
    sent_at: datetime | None


@dataclass(frozen=True)
class AlertRow:
    created_at: datetime
    kind: str
    threshold: str
    expires_at: datetime | None  # a ladder rung's key expiry
    severity: str
    subject: str
    resolved_at: datetime | None
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True)
class SinkRow:
    mount: str
    path: str
    file_path: str | None
    state: str
    issued_at: datetime | None
    expires_at: datetime | None
    next_refresh_at: datetime | None
    failures: int
    last_error: str | None


def _detail(text: str | None) -> dict[str, Any]:
    """An event's JSON facts; text that is not a JSON object is kept as-is
    under ``detail`` (the page shows it escaped, never interprets it)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"detail": text}
    return value if isinstance(value, dict) else {"detail": value}


def recent_events(engine: Engine, *, key_id: str | None = None, limit: int = RECENT_EVENTS) -> list[EventRow]:
    """The latest audit events, newest first; only ``key_id``'s when given."""
    stmt = select(Event.at, Event.key_id, Event.kind, Event.source, Event.detail)
    if key_id is not None:
        stmt = stmt.where(Event.key_id == key_id)
    stmt = stmt.order_by(Event.at.desc(), Event.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [
            EventRow(at, kid, kind, source, _detail(detail))
            for at, kid, kind, source, detail in conn.execute(stmt)
        ]


def key_snapshot(engine: Engine, key_id: str) -> InventorySnapshot:
    """``inventory_snapshot`` narrowed to one key (no key: empty), so one
    key's page does not read the whole inventory."""
    with Session(engine) as session:
        return InventorySnapshot(tuple(key_records(session, Key.key_id == key_id)), (), ())


def key_pk(engine: Engine, key_id: str) -> int | None:
    with engine.connect() as conn:
        pk = conn.execute(select(Key.id).where(Key.key_id == key_id)).scalar_one_or_none()
    return int(pk) if pk is not None else None


def alerts_for(engine: Engine, pk: int, key_id: str, *, limit: int = 50) -> list[AlertRow]:
    """One key's alerts (about its key id, or tied to its row, e.g. a
    refused token path), newest first, each with its delivery rows."""
    with engine.connect() as conn:
        alerts = list(
            conn.execute(
                select(
                    Alert.id,
                    Alert.created_at,
                    Alert.kind,
                    Alert.threshold,
                    Alert.expires_at,
                    Alert.severity,
                    Alert.subject,
                    Alert.resolved_at,
                )
                .where(or_(Alert.about == key_id, Alert.key_pk == pk))
                .order_by(Alert.created_at.desc(), Alert.id.desc())
                .limit(limit)
            )
        )
        by_alert: dict[int, list[DeliveryRow]] = {}
        if alerts:
            for alert_id, channel, state, attempts, sent_at in conn.execute(
                select(
                    Delivery.alert_id, Delivery.channel, Delivery.state, Delivery.attempts, Delivery.sent_at
                )
                .where(Delivery.alert_id.in_([a[0] for a in alerts]))
                .order_by(Delivery.id)
            ):
                by_alert.setdefault(alert_id, []).append(DeliveryRow(channel, state, attempts, sent_at))
    return [AlertRow(*a[1:], deliveries=tuple(by_alert.get(a[0], ()))) for a in alerts]


def sink_for(engine: Engine, pk: int) -> SinkRow | None:
    """The key's token sink (where its access token is written), if any."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                TokenSink.mount,
                TokenSink.path,
                TokenSink.file_path,
                TokenSink.state,
                TokenSink.issued_at,
                TokenSink.expires_at,
                TokenSink.next_refresh_at,
                TokenSink.failures,
                TokenSink.last_error,
            ).where(TokenSink.key_pk == pk)
        ).one_or_none()
    return SinkRow(*row) if row is not None else None


def rotation_of(engine: Engine, key_id: str) -> RotationRow | None:
    """The rotation replacing ``key_id``, else the one that created it."""
    with Session(engine) as session:
        rows = session.scalars(
            select(Rotation).where(or_(Rotation.old_key_id == key_id, Rotation.new_key_id == key_id))
        ).all()
        mine = sorted(rows, key=lambda r: r.old_key_id != key_id)  # the old key's own first
        return RotationRow.of(mine[0]) if mine else None
