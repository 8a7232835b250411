"""The ``/metrics`` change marker moves with what ``/metrics`` shows, and
not with a source's heartbeat: an unchanged tree's scan writes the
heartbeat every 15 min, and each rebuild of the snapshot cost 5-6 s of CPU
at 100,000 keys (the idle daemon's second-largest cost)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

from keyd.inventory.reconcile import SOURCE_HEARTBEAT, mark_source_ok
from keyd.store import snapshot
from keyd.store.inventory import inventory_tx, record_source_failure

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_heartbeat_leaves_the_marker_a_failure_moves_it(migrated_engine: Engine) -> None:
    with inventory_tx(migrated_engine) as tx:
        mark_source_ok(tx, "dir", NOW)
    first = snapshot.change_marker(migrated_engine)
    later = NOW + SOURCE_HEARTBEAT + timedelta(minutes=1)
    with inventory_tx(migrated_engine) as tx:
        mark_source_ok(tx, "dir", later)  # the heartbeat: last_attempt_at/last_success_at move
    assert snapshot.sources(migrated_engine)[0].last_success_at == later
    assert snapshot.change_marker(migrated_engine) == first
    record_source_failure(migrated_engine, "dir", "permission denied", later + timedelta(minutes=5))
    failed = snapshot.change_marker(migrated_engine)
    assert failed != first  # keyd_source_errors moved
    with inventory_tx(migrated_engine) as tx:
        mark_source_ok(tx, "other", later)  # a new source: a new keyd_source_errors series
    assert snapshot.change_marker(migrated_engine) != failed


def test_the_marker_reads_each_max_updated_at_off_its_index(migrated_engine: Engine) -> None:
    """The shape, not the time: the marker is one statement whose
    ``max(updated_at)`` subqueries are each answered from an index
    (migration 0004) instead of walking the table, which cost 42 ms every
    15 s at 100,000 keys on SQLite."""
    sql = snapshot.change_marker_query().compile(migrated_engine, compile_kwargs={"literal_binds": True})
    with migrated_engine.connect() as conn:
        if migrated_engine.dialect.name == "sqlite":
            plan = [str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
        else:
            conn.execute(text("SET enable_seqscan = off"))  # empty tables: show the plan a large one gets
            plan = [str(r[0]) for r in conn.execute(text(f"EXPLAIN {sql}"))]
    joined = " | ".join(plan)
    for index in ("ix_keys_updated_at", "ix_tokens_updated_at", "ix_rotations_updated_at"):
        assert index in joined, joined
    if migrated_engine.dialect.name == "sqlite":
        assert not any(line.startswith("SCAN keys") and "COVERING INDEX" not in line for line in plan), plan
