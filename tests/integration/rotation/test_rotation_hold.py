"""Rotation holds back the expiry ladder, on SQLite and PostgreSQL: a key
keyd is rotating gets no 30d/14d/7d/3d mail (alerts are the fallback for
what cannot be rotated), but still the tightest rung and ``expired`` (the
safety net when a rotation stalls); a failed rotation releases the hold
and the held rung is sent. Measured before: ``make demo`` mailed "expires
in 4 days" for a key being rotated in the same cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine

from keyd.actions.alerts import evaluate_alerts
from keyd.config import AlertsConfig, Config, EmailConfig, RotationConfig
from keyd.store import alerts as store
from keyd.store import rotations
from keyd.store.keys import KeyRecord
from keyd.store.models import ALERT_NOW, Key
from keyd.vocab import RotationState
from tests.support.keyrows import add_row

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EXPIRY = NOW + timedelta(days=40)
D = timedelta(days=1)
ALERTS = AlertsConfig(email=EmailConfig(host="h", from_addr="k@x", to=("o@x",)))
NO_ROTATION = Config(alerts=ALERTS)
ROTATING = Config(alerts=ALERTS, rotation=RotationConfig(before=timedelta(days=5)))


def _key(engine: Engine, key_id: str = "k1") -> KeyRecord:
    with store.transaction(engine) as s:
        add_row(s, key_id, principal=f"u-{key_id}", expires_at=EXPIRY, now=NOW)
    found = rotations.key_for_rotation(engine, key_id)  # as the rotate stage reads it
    assert found is not None
    return found


def _plan(engine: Engine, key: KeyRecord) -> rotations.RotationRow:
    row = rotations.plan(engine, key, now=NOW, reason="due", algorithm="ES256", new_expires_at=NOW + 90 * D)
    assert row is not None
    return row


def _evaluate(engine: Engine, at: datetime, config: Config = NO_ROTATION) -> list[str]:
    with store.transaction(engine) as s:
        return [a.threshold.split("@")[0] for a in evaluate_alerts(s, config, at)]


def _walk(engine: Engine, days: range, config: Config = NO_ROTATION) -> list[str]:
    sent: list[str] = []
    for day in days:
        sent += _evaluate(engine, EXPIRY - day * D + timedelta(hours=1), config)
    return sent


def test_an_unfinished_rotation_holds_the_ladder_but_not_the_last_rung(migrated_engine: Engine) -> None:
    _plan(migrated_engine, _key(migrated_engine))
    assert _walk(migrated_engine, range(30, -1, -1)) == ["1d", "expired"]


def test_a_failed_rotation_releases_the_held_rung(migrated_engine: Engine) -> None:
    row = _plan(migrated_engine, _key(migrated_engine))
    assert _walk(migrated_engine, range(30, 2, -1)) == []  # 30d, 14d, 7d and 3d held
    failed = rotations.transition(
        migrated_engine, row, now=EXPIRY - 3 * D, state=RotationState.FAILED, last_error="boom"
    )
    assert failed is not None
    with store.transaction(migrated_engine) as s:  # the failure re-arms the key
        assert s.scalar(select(Key.next_alert_at).where(Key.id == row.old_key_pk)) == ALERT_NOW
    assert _evaluate(migrated_engine, EXPIRY - 3 * D + timedelta(hours=2)) == ["3d"]
    assert _walk(migrated_engine, range(1, -1, -1)) == ["1d", "expired"]


def test_a_key_rotate_plans_in_this_cycle_is_held_before_it_is_planned(migrated_engine: Engine) -> None:
    """``keyd check`` evaluates before it rotates: within ``rotation.before``
    the policy already holds the ladder; a key outside its reach does not."""
    _key(migrated_engine, "k1")
    assert _walk(migrated_engine, range(30, 5, -1), ROTATING) == ["30d", "14d", "7d"]
    assert _evaluate(migrated_engine, EXPIRY - 3 * D + timedelta(hours=1), ROTATING) == []
    assert _evaluate(migrated_engine, EXPIRY - D + timedelta(hours=1), ROTATING) == ["1d"]
    assert _evaluate(migrated_engine, EXPIRY + timedelta(hours=1), ROTATING) == ["expired"]
