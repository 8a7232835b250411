"""Which keys a probe round takes, and what reading them costs: the due
keys in probe order (never probed first, by id, then the most overdue),
read off ``ix_keys_probe_due`` (migration 0005) so that a chunk's select
and the daemon's count of keys still due cost what is due, not the
inventory. Before, both walked every active key through the status index
and sorted them (40-80 ms a statement at 100,000 keys on SQLite, twice
per chunk): the per-probe CPU of a round grew with N."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.store import probes
from keyd.store.models import Key
from tests.support.keyrows import add_row

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _keys(engine: Engine, schedule: dict[str, tuple[str, datetime | None]]) -> None:
    """Rows in insertion order (ids ascending), with status and next_probe_at."""
    with Session(engine) as session, session.begin():
        for key_id in schedule:
            add_row(session, key_id, principal=f"svc-{key_id}", expires_at=None, now=NOW)
    with Session(engine) as session, session.begin():
        for key_id, (status, at) in schedule.items():
            session.execute(update(Key).where(Key.key_id == key_id).values(status=status, next_probe_at=at))


SCHEDULE = {
    "late-1h": ("active", NOW - timedelta(hours=1)),
    "new-a": ("active", None),
    "late-2h": ("active", NOW - timedelta(hours=2)),
    "future": ("active", NOW + timedelta(minutes=1)),
    "rejected": ("rejected", None),
    "missing": ("missing", NOW - timedelta(hours=3)),
    "new-b": ("active", None),
    "now": ("active", NOW),
}
ORDER = ["new-a", "new-b", "late-2h", "late-1h", "now"]


def test_due_keys_in_probe_order_across_both_halves(migrated_engine: Engine) -> None:
    _keys(migrated_engine, SCHEDULE)
    assert [k.key_id for k in probes.due_targets(migrated_engine, NOW)] == ORDER
    for limit in range(1, len(ORDER) + 2):  # a chunk ending inside either half, or past both
        got = probes.due_targets(migrated_engine, NOW, limit=limit)
        assert [k.key_id for k in got] == ORDER[:limit]
    total, first = probes.due_preview(migrated_engine, NOW, limit=3)
    assert (total, [k.key_id for k in first]) == (len(ORDER), ORDER[:3])
    assert probes.due_preview(migrated_engine, NOW, limit=0) == (len(ORDER), [])
    assert probes.due_preview(migrated_engine, NOW - timedelta(days=1), limit=0)[0] == 2  # the new ones


def _statements(engine: Engine, run: Any) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "FROM keys" in statement and "key_locations" not in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def _plan(engine: Engine, statement: str, params: Any) -> list[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)]
        conn.execute(text("SET enable_seqscan = off"))  # small tables: show the plan a large one gets
        return [str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {statement}", params)]


def test_the_due_select_and_count_read_only_what_is_due(migrated_engine: Engine) -> None:
    """The shape, not the time: each statement a chunk sends about the
    ``keys`` table is answered from an index, in probe order, without a
    scan of the table or a sort of every active key; and a chunk sends
    the same statements at any inventory size (one select per half of the
    schedule, the second only while the chunk is not full; one count)."""
    _keys(migrated_engine, SCHEDULE)
    chunk = _statements(migrated_engine, lambda: probes.due_targets(migrated_engine, NOW, limit=3))
    count = _statements(migrated_engine, lambda: probes.due_preview(migrated_engine, NOW, limit=0))
    assert len(chunk) == 2 and len(count) == 1
    assert len(_statements(migrated_engine, lambda: probes.due_targets(migrated_engine, NOW, limit=2))) == 1
    sqlite = migrated_engine.dialect.name == "sqlite"
    for statement, params in chunk:
        plan = " | ".join(_plan(migrated_engine, statement, params))
        assert "ix_keys_probe_due" in plan, plan
        assert ("TEMP B-TREE" not in plan) if sqlite else ("Sort" not in plan), plan
    for statement, params in count:
        plan = _plan(migrated_engine, statement, params)
        if sqlite:
            assert all(line.startswith(("SEARCH", "SCALAR", "SCAN CONSTANT")) for line in plan), plan
            assert not any("ix_keys_status " in f"{line} " for line in plan), plan
        else:
            assert not any("Seq Scan" in line for line in plan), plan
