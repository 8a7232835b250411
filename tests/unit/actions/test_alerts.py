"""keyd.actions.alerts: decisions in the caller's transaction, on SQLite and
PostgreSQL; exactly-once by the unique constraint."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from keyd.actions.alerts import email_recipients, evaluate_alerts, message_id
from keyd.checks.ladder import ladder
from keyd.config import AlertsConfig, Config, EmailConfig, WebhookConfig
from keyd.store import alerts as store
from keyd.store.engine import make_engine
from keyd.store.models import Alert, Base, Delivery
from tests.support.keyrows import add_row

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EMAIL = EmailConfig(
    host="h", from_addr="k@x", to=("ops@x",), routes=(("u1", ("team@x", "OPS@x")), ("dir", ("keys@x",)))
)
CONFIG = Config(alerts=AlertsConfig(email=EMAIL, webhook=WebhookConfig(url="https://h.x/s/t")))


def _key(
    engine: Engine,
    key_id: str = "k1",
    principal: str = "u1",
    expires_at: datetime | None = NOW + timedelta(days=2),
) -> None:
    with store.transaction(engine) as s:
        add_row(
            s,
            key_id,
            principal=principal,
            expires_at=expires_at,
            now=NOW,
            algorithm="RS256",
            fingerprint=key_id * 4,
        )


def _count(engine: Engine, model: type) -> int:
    with store.transaction(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_message_id_is_deterministic() -> None:
    assert (
        message_id("key:2891\r\nBcc: x", "expiring", "7d@2027-01-01T00:00:00Z")
        == "<alert-key-2891-bcc-x-expiring-7d-2027-01-01t00-00-00z@keyd>"
    )


def test_recipients_routes_and_dedupe() -> None:
    assert email_recipients(EMAIL, "u1", ["dir"]) == ["ops@x", "team@x", "keys@x"]
    assert email_recipients(EMAIL, None) == ["ops@x"]


def test_alert_and_deliveries_in_one_transaction(migrated_engine: Engine) -> None:
    _key(migrated_engine)
    with store.transaction(migrated_engine) as s:
        new = evaluate_alerts(s, CONFIG, NOW)
        assert [(a.kind, a.threshold, a.expires_at) for a in new] == [
            ("expiring", "3d", datetime(2026, 12, 3, tzinfo=UTC))
        ]
        assert new[0].message_id == "<alert-key-k1-expiring-3d-2026-12-03t00-00-00z@keyd>"
        rows = s.scalars(select(Delivery).where(Delivery.alert_id == new[0].id)).all()
        assert sorted((d.channel, d.recipient) for d in rows) == [
            ("email", "keys@x"),
            ("email", "ops@x"),
            ("email", "team@x"),
            ("webhook", "https://h.x/…"),
        ]
    assert _count(migrated_engine, Alert) == 1 and _count(migrated_engine, Delivery) == 4


def test_rollback_takes_both_away(migrated_engine: Engine) -> None:
    _key(migrated_engine)
    try:
        with store.transaction(migrated_engine) as s:
            assert evaluate_alerts(s, CONFIG, NOW)
            raise RuntimeError("stage failed")
    except RuntimeError:
        pass
    assert _count(migrated_engine, Alert) == 0 and _count(migrated_engine, Delivery) == 0


def test_second_evaluation_inserts_nothing(migrated_engine: Engine) -> None:
    _key(migrated_engine)
    for _ in range(3):
        with store.transaction(migrated_engine) as s:
            evaluate_alerts(s, CONFIG, NOW)
    assert _count(migrated_engine, Alert) == 1


@pytest.mark.parametrize("expires_at", [datetime(2027, 1, 1, tzinfo=UTC), None], ids=["rung", "plain"])
def test_unique_constraint_not_python_check(migrated_engine: Engine, expires_at: datetime | None) -> None:
    """Even a caller that skips the fired-set check cannot insert twice,
    with an expiry instant (a rung) or without one (NULL: its own index)."""
    kw = dict(
        about="key:k",
        key_pk=None,
        kind="expiring",
        threshold="7d",
        expires_at=expires_at,
        severity="warning",
        created_at=NOW,
        message_id="<m>",
        subject="s",
        context={},
    )
    with store.transaction(migrated_engine) as s:
        assert store.insert_alert(s, **kw) is not None  # type: ignore[arg-type]
        assert store.insert_alert(s, **kw) is None  # type: ignore[arg-type]
    with store.transaction(migrated_engine) as s:
        assert store.insert_alert(s, **kw) is None  # type: ignore[arg-type]
        other = {**kw, "expires_at": datetime(2027, 2, 1, tzinfo=UTC) if expires_at is None else None}
        assert store.insert_alert(s, **other) is not None  # type: ignore[arg-type]
    assert _count(migrated_engine, Alert) == 2


def test_no_channels_still_records_the_alert(migrated_engine: Engine) -> None:
    _key(migrated_engine)
    with store.transaction(migrated_engine) as s:
        assert evaluate_alerts(s, Config(), NOW)
    assert _count(migrated_engine, Delivery) == 0


def test_never_expiring_key_has_no_ladder(migrated_engine: Engine) -> None:
    _key(migrated_engine, expires_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    with store.transaction(migrated_engine) as s:
        assert evaluate_alerts(s, CONFIG, NOW) == []


def test_issuer_health_state(migrated_engine: Engine) -> None:
    with store.transaction(migrated_engine) as s:
        store.note_issuer_health(s, True, NOW)
        assert store.issuer_outage(s) is None
        store.note_issuer_health(s, False, NOW)
        store.note_issuer_health(s, False, NOW + timedelta(minutes=5))
        assert store.issuer_outage(s) == NOW
        store.note_issuer_health(s, True, NOW + timedelta(minutes=9))
        assert store.issuer_outage(s) is None
        assert store.issuer_last_recovery(s) == (NOW, NOW + timedelta(minutes=9))


@settings(max_examples=40, deadline=None)
@given(offsets=st.lists(st.integers(-40 * 86_400, 3 * 86_400), min_size=1, max_size=25))
def test_property_each_rung_once_never_early_through_the_db(offsets: list[int]) -> None:
    """Any sequence of scan times (also backwards, as after a clock step):
    each (about, threshold) row exists at most once and was decided
    no earlier than its due time."""
    expires = NOW + timedelta(days=2)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/keyd.db")
        try:
            Base.metadata.create_all(engine)
            _key(engine, expires_at=expires)
            for offset in offsets:
                with store.transaction(engine) as s:
                    evaluate_alerts(s, CONFIG, expires + timedelta(seconds=offset))
            with store.transaction(engine) as s:
                rows = list(s.scalars(select(Alert)))
        finally:
            engine.dispose()
    dues = {r.label: r.due_at for r in ladder(expires, CONFIG.alerts.thresholds)}
    assert len({(a.about, a.threshold, a.expires_at) for a in rows}) == len(rows)
    assert all(a.expires_at == expires for a in rows)
    assert all(a.created_at >= dues[a.threshold] for a in rows)
