"""The ``/metrics`` change marker moves with what ``/metrics`` shows, and
not with a source's heartbeat: an unchanged tree's scan writes the
heartbeat every 15 min, and each rebuild of the snapshot cost 5-6 s of CPU
at 100,000 keys (the idle daemon's second-largest cost)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
