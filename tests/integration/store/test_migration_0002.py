"""Revision 0002 on a database written by a keyd at 0001 (as a packaged
install has it): alert rungs stored as ``<label>@<expiry>`` in
``alerts.threshold`` are split into ``threshold`` + ``expires_at``, every
other threshold stays as it was, deliveries keep their alerts, and the
daemon's exactly-once logic dedupes against the migrated rows. Both
backends; also back down to 0001."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.engine import Engine

from keyd.actions.alerts import evaluate_alerts
from keyd.config import AlertsConfig, Config, EmailConfig
from keyd.store import alerts as store
from keyd.store import migrate
from keyd.store.models import Alert, Delivery, Key

EXPIRY = datetime(2027, 1, 1, tzinfo=UTC)
OLD_EXPIRY = datetime(2026, 6, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 1, tzinfo=UTC)
CONFIG = Config(alerts=AlertsConfig(email=EmailConfig(host="h", from_addr="k@x", to=("ops@x",))))

# (about, kind, threshold as 0001 stored it, resolved) -> (threshold, expires_at) at 0002
OLD_ROWS: list[tuple[str, str, str, bool, tuple[str, datetime | None]]] = [
    ("key:k1", "expiring", "30d@2027-01-01T00:00:00Z", True, ("30d", EXPIRY)),
    ("key:k1", "expiring", "14d@2027-01-01T00:00:00Z", True, ("14d", EXPIRY)),
    ("key:k1", "expiring", "7d@2027-01-01T00:00:00Z", False, ("7d", EXPIRY)),
    ("key:k1", "expiring", "7d@2026-06-01T00:00:00Z", True, ("7d", OLD_EXPIRY)),  # same label, old expiry
    ("key:k1", "expired", "expired@2026-06-01T00:00:00Z", False, ("expired", OLD_EXPIRY)),  # open, stale
    ("key:k1", "rejected", "ok@2026-10-01T12:00:00Z", True, ("ok@2026-10-01T12:00:00Z", None)),  # an episode
    ("key:k1", "untracked", "unknown", True, ("unknown", None)),
    ("key:k2", "expiring", "7d", False, ("7d", None)),  # not a rung name: left alone
    ("key:k2", "expiring", "7d@not-a-time", False, ("7d@not-a-time", None)),
    ("issuer", "unavailable", "2026-11-20T08:00:00Z", True, ("2026-11-20T08:00:00Z", None)),
    ("issuer", "recovered", "2026-11-20T08:00:00Z", False, ("2026-11-20T08:00:00Z", None)),
    ("token:ab12", "refused", "2026-11-21T09:30:00Z", False, ("2026-11-21T09:30:00Z", None)),
]

# The tables as revision 0001 created them (not keyd's models: those are at head).
V1_ALERTS = sa.table(
    "alerts",
    sa.column("id", sa.Integer()),
    sa.column("about", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("threshold", sa.String()),
    sa.column("severity", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("message_id", sa.String()),
    sa.column("subject", sa.Text()),
    sa.column("context", sa.Text()),
    sa.column("resolved_at", sa.DateTime(timezone=True)),
)
V1_DELIVERIES = sa.table(
    "deliveries",
    sa.column("alert_id", sa.Integer()),
    sa.column("channel", sa.String()),
    sa.column("recipient", sa.String()),
    sa.column("state", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("next_attempt_at", sa.DateTime(timezone=True)),
)


def _naive_on_sqlite(engine: Engine, value: datetime) -> datetime:
    return value.replace(tzinfo=None) if engine.dialect.name == "sqlite" else value


def _old_alert(
    engine: Engine, n: int, about: str, kind: str, threshold: str, resolved: bool
) -> dict[str, Any]:
    at = _naive_on_sqlite(engine, T0)
    return {
        "id": n,
        "about": about,
        "kind": kind,
        "threshold": threshold,
        "severity": "warning",
        "created_at": at,
        "message_id": f"<alert-{n}@keyd>",
        "subject": f"subject {n}",
        "context": "{}",
        "resolved_at": at if resolved else None,
    }


@pytest.fixture
def v1_engine(db_engine: Engine) -> Iterator[Engine]:
    """A database at 0001 holding alerts and deliveries written the 0001 way."""
    migrate.upgrade(db_engine, "0001")
    with db_engine.begin() as conn:
        conn.execute(
            V1_ALERTS.insert(),
            [_old_alert(db_engine, n, *row[:4]) for n, row in enumerate(OLD_ROWS, start=1)],
        )
        conn.execute(
            V1_DELIVERIES.insert(),
            [
                {
                    "alert_id": n,
                    "channel": "email",
                    "recipient": "ops@x",
                    "state": "sent" if resolved else "pending",
                    "attempts": 1,
                    "next_attempt_at": _naive_on_sqlite(db_engine, T0),
                }
                for n, (*_, resolved, _new) in enumerate(OLD_ROWS, start=1)
            ],
        )
        if db_engine.dialect.name == "postgresql":  # ids were given: move the sequence past them
            conn.execute(
                sa.text("SELECT setval(pg_get_serial_sequence('alerts', 'id'), max(id)) FROM alerts")
            )
    yield db_engine


def _alerts(engine: Engine) -> list[tuple[int, str, str, str, datetime | None, str, bool]]:
    with store.transaction(engine) as s:
        return [
            (a.id, a.about, a.kind, a.threshold, a.expires_at, a.message_id, a.resolved_at is not None)
            for a in s.scalars(select(Alert).order_by(Alert.id))
        ]


def _add_key(engine: Engine, key_id: str = "k1") -> None:
    with store.transaction(engine) as s:
        s.add(
            Key(
                key_id=key_id,
                kind="serviceaccount",
                principal="u1",
                algorithm="RS256",
                fingerprint="f" * 64,
                expires_at=EXPIRY,
                content_hash="0",
                status="active",
                first_seen=T0,
                last_seen=T0,
                updated_at=T0,
            )
        )


def test_upgrade_splits_rungs_and_keeps_the_rest(v1_engine: Engine) -> None:
    migrate.upgrade(v1_engine)
    assert migrate.current_revision(v1_engine) == migrate.head_revision()
    assert _alerts(v1_engine) == [
        (n, about, kind, *new, f"<alert-{n}@keyd>", resolved)
        for n, (about, kind, _old, resolved, new) in enumerate(OLD_ROWS, start=1)
    ]
    with store.transaction(v1_engine) as s:
        pairs = sorted((d.alert_id, d.state) for d in s.scalars(select(Delivery)))
    assert pairs == [(n, "sent" if row[3] else "pending") for n, row in enumerate(OLD_ROWS, start=1)]


def test_exactly_once_holds_against_migrated_rows(v1_engine: Engine) -> None:
    migrate.upgrade(v1_engine)
    before = _alerts(v1_engine)
    with store.transaction(v1_engine) as s:  # the database's own check: the rung exists
        kw: dict[str, Any] = dict(
            about="key:k1",
            key_pk=None,
            kind="expiring",
            severity="warning",
            created_at=T0,
            message_id="<m>",
            subject="s",
            context={},
        )
        assert store.insert_alert(s, threshold="7d", expires_at=EXPIRY, **kw) is None
        assert store.insert_alert(s, threshold="7d", expires_at=OLD_EXPIRY, **kw) is None
        assert store.insert_alert(s, threshold="7d", expires_at=None, **kw | {"about": "key:k2"}) is None
        rejected = kw | {"kind": "rejected"}
        assert store.insert_alert(s, threshold="ok@2026-10-01T12:00:00Z", **rejected) is None
    assert _alerts(v1_engine) == before

    _add_key(v1_engine)  # k1 expires at EXPIRY: its 7d rung fired before the upgrade
    with store.transaction(v1_engine) as s:
        assert evaluate_alerts(s, CONFIG, EXPIRY - timedelta(days=5)) == []
    after = {row[0]: row for row in _alerts(v1_engine)}
    assert len(after) == len(OLD_ROWS)
    assert after[5][-1] is True  # the open ``expired`` rung of the old expiry was resolved as stale
    assert after[3][-1] is False  # the current expiry's 7d stays open

    with store.transaction(v1_engine) as s:  # the ladder goes on on top of the migrated rows
        new = evaluate_alerts(s, CONFIG, EXPIRY - timedelta(days=2))
        assert [(a.kind, a.threshold, a.expires_at) for a in new] == [("expiring", "3d", EXPIRY)]
        assert new[0].message_id == "<alert-key-k1-expiring-3d-2027-01-01t00-00-00z@keyd>"


def test_downgrade_joins_them_again(v1_engine: Engine) -> None:
    with v1_engine.connect() as conn:
        original = conn.execute(select(V1_ALERTS.c.id, V1_ALERTS.c.threshold).order_by(V1_ALERTS.c.id)).all()
    migrate.upgrade(v1_engine)
    migrate.downgrade(v1_engine, "0001")
    assert migrate.current_revision(v1_engine) == "0001"
    with v1_engine.connect() as conn:
        again = conn.execute(select(V1_ALERTS.c.id, V1_ALERTS.c.threshold).order_by(V1_ALERTS.c.id)).all()
    assert again == original
