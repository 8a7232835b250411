"""Alert evaluation is driven by due times (``keys.next_alert_at``), on
SQLite and PostgreSQL: with nothing due a tick issues one indexed query
on ``keys`` and loads no key, whatever the inventory's size; a change or
a rung coming due brings exactly the keys concerned (and their principal's
other keys) into the evaluation. Measured before: every key loaded as an
ORM object with its locations each minute (3.3 s at 50,000 keys)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from keyd.actions import alerts
from keyd.actions.alerts import evaluate_alerts
from keyd.config import AlertsConfig, Config, EmailConfig
from keyd.store import alerts as store
from keyd.store.models import ALERT_NEVER, ALERT_NOW, Key
from tests.support.keyrows import add_row
from tests.support.sql import statements

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CONFIG = Config(alerts=AlertsConfig(email=EmailConfig(host="h", from_addr="k@x", to=("o@x",))))


def _keys(engine: Engine, count: int, start: int = 0, expires_in: timedelta = timedelta(days=200)) -> None:
    with store.transaction(engine) as s:
        for i in range(start, start + count):
            add_row(s, f"k{i}", principal=f"u{i}", expires_at=NOW + expires_in, now=NOW)


def _evaluate(engine: Engine, now: datetime, config: Config = CONFIG) -> list[str]:
    with store.transaction(engine) as s:
        return [a.threshold for a in evaluate_alerts(s, config, now)]


def _reading_keys(statements: list[str]) -> list[str]:
    return [
        s
        for s in statements
        if s.lstrip().startswith("SELECT") and ("FROM keys" in s or "key_locations" in s)
    ]


def test_nothing_due_costs_one_indexed_query_whatever_the_size(migrated_engine: Engine) -> None:
    _keys(migrated_engine, 20)
    assert _evaluate(migrated_engine, NOW) == []  # new keys: all due once, none alerts
    with store.transaction(migrated_engine) as s:
        due = set(s.scalars(select(Key.next_alert_at)))
    assert due == {NOW + timedelta(days=200 - 30)}  # the 30d rung, for every key

    shapes = []
    for extra in (0, 300):
        _keys(migrated_engine, extra, start=1000)
        _evaluate(migrated_engine, NOW)  # the new ones: scheduled
        with statements(migrated_engine) as seen:
            assert _evaluate(migrated_engine, NOW + timedelta(days=1)) == []
        shapes.append(seen)
    assert len(shapes[0]) == len(shapes[1])  # flat in N
    (query,) = _reading_keys(shapes[1])  # one query on keys, none on locations, no per-key load
    assert "keys.next_alert_at <=" in query and "key_locations" not in query
    if migrated_engine.dialect.name == "sqlite":  # the statement evaluation sends, not a lookalike
        sql = store.due_principals_query(NOW, limit=alerts.PRINCIPALS_PER_BATCH).compile(
            migrated_engine, compile_kwargs={"literal_binds": True}
        )
        with migrated_engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        assert "ix_keys_next_alert_at" in plan and "TEMP B-TREE" not in plan, plan


def test_a_change_or_a_rung_coming_due_brings_only_those_keys(migrated_engine: Engine) -> None:
    _keys(migrated_engine, 50)
    _evaluate(migrated_engine, NOW)
    with store.transaction(migrated_engine) as s:  # an ORM write: the hook re-arms it
        key = s.scalars(select(Key).where(Key.key_id == "k7")).one()
        key.expires_at = NOW + timedelta(days=5)
    with store.transaction(migrated_engine) as s:
        assert s.scalar(select(Key.next_alert_at).where(Key.key_id == "k7")) == ALERT_NOW
    with statements(migrated_engine) as seen:
        fired = _evaluate(migrated_engine, NOW + timedelta(minutes=1))
    assert [t.split("@")[0] for t in fired] == ["7d"]
    # due principals, their keys, their locations; then "any more due?": none
    assert len(_reading_keys(seen)) == 4
    with store.transaction(migrated_engine) as s:
        next_at = s.scalar(select(Key.next_alert_at).where(Key.key_id == "k7"))
    assert next_at == NOW + timedelta(days=5) - timedelta(days=3)  # the 3d rung

    later = NOW + timedelta(days=2, hours=1)  # k7's 3d rung has come, nothing else
    with statements(migrated_engine) as seen:
        assert [t.split("@")[0] for t in _evaluate(migrated_engine, later)] == ["3d"]
    locations = [s for s in _reading_keys(seen) if "key_locations" in s]
    assert len(locations) == 1


def test_changed_thresholds_make_every_key_due_once(migrated_engine: Engine) -> None:
    _keys(migrated_engine, 5, expires_in=timedelta(days=40))
    assert _evaluate(migrated_engine, NOW) == []
    wider = replace(CONFIG, alerts=replace(CONFIG.alerts, thresholds=(timedelta(days=45),)))
    assert len(_evaluate(migrated_engine, NOW + timedelta(minutes=1), wider)) == 5
    with store.transaction(migrated_engine) as s:
        assert set(s.scalars(select(Key.next_alert_at))) == {NOW + timedelta(days=40)}


def test_missing_and_never_expiring_keys_wait_for_a_change(migrated_engine: Engine) -> None:
    _keys(migrated_engine, 2, expires_in=timedelta(days=1))
    with store.transaction(migrated_engine) as s:
        s.scalars(select(Key).where(Key.key_id == "k0")).one().status = "missing"
        s.scalars(select(Key).where(Key.key_id == "k1")).one().expires_at = ALERT_NEVER
    _evaluate(migrated_engine, NOW)
    with store.transaction(migrated_engine) as s:
        assert set(s.scalars(select(Key.next_alert_at))) == {ALERT_NEVER}


def test_a_cold_start_is_evaluated_in_batches_of_principals(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key due at once (first tick after a cold scan) is read a batch
    of principals at a time, never the whole inventory in one load."""
    monkeypatch.setattr(alerts, "PRINCIPALS_PER_BATCH", 7)
    _keys(migrated_engine, 30, expires_in=timedelta(days=5))
    with statements(migrated_engine) as seen:
        assert len(_evaluate(migrated_engine, NOW)) == 30
    loads = [s for s in seen if "key_locations" in s and s.lstrip().startswith("SELECT")]
    assert len(loads) == 5  # 7 + 7 + 7 + 7 + 2 principals
    assert _evaluate(migrated_engine, NOW + timedelta(minutes=1)) == []
