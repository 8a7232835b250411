"""Alert evaluation with every key due, on SQLite and PostgreSQL: the
statements it sends grow with the batches, not with the keys; every alert
still goes out exactly once; and the daemon's evaluation runs in chunks
that report progress.

Measured before (bench/scale.py ``due``): three statements per alert
(its INSERT, one INSERT per delivery) built through the ORM, 5 ms of CPU
per key, ~100 s at 10,000 keys on SQLite."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from keyd import progress
from keyd.actions import alerts
from keyd.actions.alerts import evaluate_alerts, evaluate_chunk
from keyd.config import AlertsConfig, Config, EmailConfig, WebhookConfig
from keyd.store import alerts as store
from keyd.store.models import ALERT_NOW, Alert, Delivery, Key
from tests.support.keyrows import add_row
from tests.support.sql import statements

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CONFIG = Config(
    alerts=AlertsConfig(
        thresholds=(timedelta(days=45), timedelta(days=10)),
        email=EmailConfig(host="h", from_addr="k@x", to=("o@x",)),
        webhook=WebhookConfig(url="https://hooks.example.org/keyd"),
    )
)


def _keys(engine: Engine, count: int, start: int = 0) -> None:
    with store.transaction(engine) as s:
        for i in range(start, start + count):
            add_row(s, f"k{i}", principal=f"u{i}", expires_at=NOW + timedelta(days=40), now=NOW)


def _evaluate(engine: Engine, now: datetime, config: Config = CONFIG) -> list[store.AlertRecord]:
    with store.transaction(engine) as s:
        return evaluate_alerts(s, config, now)


def _writes(seen: list[str]) -> dict[str, int]:
    """Statements by what they write."""
    out: dict[str, int] = {}
    for sql in seen:
        head = " ".join(sql.split()[:3]).upper()
        for name in ("INSERT INTO ALERTS", "INSERT INTO DELIVERIES", "UPDATE ALERTS", "UPDATE KEYS"):
            if head.startswith(name):
                out[name] = out.get(name, 0) + 1
    return out


def _count(engine: Engine, model: type) -> int:
    with store.transaction(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_every_key_due_costs_statements_per_batch_not_per_key(migrated_engine: Engine) -> None:
    assert _evaluate(migrated_engine, NOW) == []  # the schedule is stored: no re-arm below
    shapes = []
    for start, count in ((0, 10), (10, 120)):  # 10 new keys, then 120 more
        _keys(migrated_engine, count, start)
        with statements(migrated_engine) as seen:
            new = _evaluate(migrated_engine, NOW)
        assert sorted(a.about for a in new) == sorted(f"key:k{i}" for i in range(start, start + count))
        assert {a.threshold for a in new} == {"45d"}
        shapes.append(seen)
    assert len(shapes[0]) == len(shapes[1])  # the same statements for 10 keys as for 120
    assert _writes(shapes[1]) == {"INSERT INTO ALERTS": 1, "INSERT INTO DELIVERIES": 1, "UPDATE KEYS": 1}
    assert (
        _count(migrated_engine, Alert) == 130 and _count(migrated_engine, Delivery) == 260
    )  # mail + webhook


def test_tighter_rungs_resolve_the_looser_ones_in_one_update(migrated_engine: Engine) -> None:
    _keys(migrated_engine, 40)
    assert len(_evaluate(migrated_engine, NOW)) == 40  # 45d
    with statements(migrated_engine) as seen:
        new = _evaluate(migrated_engine, NOW + timedelta(days=31))  # 10d: supersedes 45d
    assert {a.threshold for a in new} == {"10d"} and len(new) == 40
    assert _writes(seen)["UPDATE ALERTS"] == 1
    with store.transaction(migrated_engine) as s:
        open_ = s.execute(select(Alert.threshold).where(Alert.resolved_at.is_(None))).scalars().all()
    assert sorted(set(open_)) == ["10d"] and len(open_) == 40


def test_a_repeated_evaluation_inserts_nothing_and_queues_no_mail(migrated_engine: Engine) -> None:
    """As after a restart before the due times were written, or a second
    daemon deciding the same keys: the unique index answers, no delivery
    is queued twice; alerts that are new in a mixed batch still are."""
    _keys(migrated_engine, 30)
    assert len(_evaluate(migrated_engine, NOW)) == 30
    _keys(migrated_engine, 5, start=30)
    with store.transaction(migrated_engine) as s:  # every key due again
        s.execute(update(Key).values(next_alert_at=ALERT_NOW))
    new = _evaluate(migrated_engine, NOW + timedelta(minutes=1))
    assert sorted(a.about for a in new) == [f"key:k{i}" for i in range(30, 35)]
    assert _count(migrated_engine, Alert) == 35 and _count(migrated_engine, Delivery) == 70
    with store.transaction(migrated_engine) as s:
        per_alert = s.execute(select(Delivery.alert_id, func.count()).group_by(Delivery.alert_id)).all()
    assert {n for _, n in per_alert} == {2}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int | None]] = []

    def begin(self, task: str, total: int | None, unit: str) -> None:
        self.calls.append(("begin", task, total))

    def advance(self, task: str, n: int) -> None:
        self.calls.append(("advance", task, n))

    def end(self, task: str) -> None:
        self.calls.append(("end", task, None))


def test_the_daemon_evaluates_in_chunks_that_report_progress(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key due: each chunk takes one batch of principals in its own
    transaction, says how many keys are still due, and reports each key."""
    monkeypatch.setattr(alerts, "PRINCIPALS_PER_BATCH", 7)
    _keys(migrated_engine, 30)
    reports = []
    recorder = Recorder()
    with progress.reporting(recorder):
        while True:
            with store.transaction(migrated_engine) as s:
                reports.append(evaluate_chunk(s, CONFIG, NOW))
            if not reports[-1].more:
                break
    assert [r.keys for r in reports] == [7, 7, 7, 7, 2]
    assert [r.remaining for r in reports] == [23, 16, 9, 2, 0]
    assert sum(len(r.new) for r in reports) == 30 and _count(migrated_engine, Delivery) == 60
    begins = [c for c in recorder.calls if c[0] == "begin"]
    advanced = sum(n or 0 for kind, _task, n in recorder.calls if kind == "advance")
    assert [c[2] for c in begins] == [7, 7, 7, 7, 2] and advanced == 30
    with store.transaction(migrated_engine) as s:  # nothing due: no chunk, no count
        quiet = evaluate_chunk(s, CONFIG, NOW + timedelta(minutes=1))
    assert (quiet.keys, quiet.more, quiet.new) == (0, False, [])


def test_changed_thresholds_rearm_once_then_chunks_go_on(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-arm (every key due) happens in the first chunk only: the next
    chunks see the same schedule and go on where the first stopped."""
    monkeypatch.setattr(alerts, "PRINCIPALS_PER_BATCH", 10)
    _keys(migrated_engine, 25)
    _evaluate(migrated_engine, NOW)
    wider = replace(CONFIG, alerts=replace(CONFIG.alerts, thresholds=(timedelta(days=50),)))
    done = []
    with statements(migrated_engine) as seen:
        while True:
            with store.transaction(migrated_engine) as s:
                report = evaluate_chunk(s, wider, NOW + timedelta(minutes=1))
            done.append(report.keys)
            if not report.more:
                break
    assert done == [10, 10, 5]
    rearms = [q for q in seen if q.split()[:2] == ["UPDATE", "keys"] and "WHERE" not in q]
    assert len(rearms) == 1
