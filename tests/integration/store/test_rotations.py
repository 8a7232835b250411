"""The rotations table: one row per key (two daemons never plan one key
twice), compare-and-set transitions with one event each, and the due-key
query (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from keyd.sources.keyfile import read_keyfile
from keyd.store import rotations as store
from keyd.store.models import Event
from tests.support.keyrows import add_key, rows
from tests.support.keys import NEVER, make_key_file

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _key(engine: Engine, tmp_path, days: float | None, **kw: object) -> str:
    expires = NEVER if days is None else NOW + timedelta(days=days)
    made = make_key_file(tmp_path, expires_at=expires)
    add_key(engine, read_keyfile(made.path), ref=str(made.path), now=NOW, **kw)  # type: ignore[arg-type]
    return made.key_id


def _plan(engine: Engine, key_id: str) -> store.RotationRow | None:
    key = store.key_for_rotation(engine, key_id)
    assert key is not None
    return store.plan(
        engine, key, now=NOW, reason="due", algorithm="rsa-2048", new_expires_at=NOW + timedelta(days=90)
    )


def test_one_rotation_per_key_even_when_planned_twice(migrated_engine, tmp_path):
    key_id = _key(migrated_engine, tmp_path, 10)
    first = _plan(migrated_engine, key_id)
    assert first is not None and first.state == "planned" and first.attempt == 1
    assert _plan(migrated_engine, key_id) is None  # the unique constraint, not a Python check
    assert len(store.all_rotations(migrated_engine)) == 1
    [event] = rows(migrated_engine, Event)
    assert event.kind == "rotation.planned" and event.key_id == key_id


def test_transition_is_compare_and_set_with_one_event_each(migrated_engine, tmp_path):
    row = _plan(migrated_engine, _key(migrated_engine, tmp_path, 10))
    assert row is not None
    registered = store.transition(
        migrated_engine, row, now=NOW, state="registered", new_key_id="k2", registered_at=NOW
    )
    assert registered is not None and registered.new_key_id == "k2"
    # a second daemon holding the stale row cannot move it again
    assert store.transition(migrated_engine, row, now=NOW, state="registered", new_key_id="k3") is None
    restarted = store.transition(
        migrated_engine,
        registered,
        now=NOW,
        state="planned",
        attempt=2,
        new_key_id=None,
        event="restarted",
        detail={"why": "crash"},
    )
    assert restarted is not None and restarted.attempt == 2 and restarted.new_key_id is None
    kinds = [kind for _, kind, _ in store.history(migrated_engine, row.old_key_id)]
    assert kinds == ["rotation.planned", "rotation.registered", "rotation.restarted"]


def test_candidates_are_due_active_service_keys_with_a_location(migrated_engine, tmp_path):
    due = _key(migrated_engine, tmp_path, 10)
    _key(migrated_engine, tmp_path, 60)  # not due
    never = _key(migrated_engine, tmp_path, None)
    _key(migrated_engine, tmp_path, 5, status="missing")
    taken = _key(migrated_engine, tmp_path, 3)
    _plan(migrated_engine, taken)
    found = store.candidates(migrated_engine, expiring_before=NOW + timedelta(days=30), seen_before=None)
    assert [k.key_id for k in found] == [due]
    assert found[0].locations[0].content_hash is not None
    with_never = store.candidates(
        migrated_engine, expiring_before=NOW + timedelta(days=30), seen_before=NOW + timedelta(seconds=1)
    )
    assert {k.key_id for k in with_never} == {due, never}
    assert (
        store.candidates(
            migrated_engine, expiring_before=NOW + timedelta(days=30), seen_before=NOW - timedelta(days=1)
        )[0].key_id
        == due
    )


def test_retirement_facts(migrated_engine, tmp_path):
    key_id = _key(migrated_engine, tmp_path, 10)
    assert store.present_locations(migrated_engine, key_id) == 1
    assert store.present_locations(migrated_engine, "unknown") == 0
    assert not store.probed_ok_since(migrated_engine, key_id, NOW)
    assert store.known_key_ids(migrated_engine, [key_id, "x"]) == {key_id}
