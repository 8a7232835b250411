"""``snapshot.keys`` streams the inventory a chunk at a time: the status
line and ``keyd check`` read every key, and a 100,000-key daemon must not
hold them all at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.store import snapshot
from keyd.store.models import Key, KeyLocation

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _seed(engine: Engine, n: int) -> None:
    with Session(engine) as s, s.begin():
        for i in range(n):
            key = Key(
                key_id=f"k{i:02d}",
                kind="serviceaccount",
                principal=f"user-{i}",
                algorithm="RS256",
                fingerprint="f" * 64,
                content_hash="c" * 64,
                status="active",
                first_seen=NOW,
                last_seen=NOW,
                updated_at=NOW,
                probe_failures=0,
            )
            s.add(key)
            s.flush()
            for source in ("a", "b"):
                s.add(
                    KeyLocation(
                        source=source,
                        ref=f"/{source}/{i}.json",
                        key_pk=key.id,
                        status="present",
                        first_seen=NOW,
                        last_seen=NOW,
                    )
                )


def test_keys_are_read_a_chunk_at_a_time(migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """7 keys, 3 per chunk: three rounds of (ids, locations, keys) queries,
    each issued only when the reader gets there; every key comes once, in
    key id order, with its own locations."""
    _seed(migrated_engine, 7)
    monkeypatch.setattr(snapshot, "CHUNK", 3)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(migrated_engine, "before_cursor_execute", count)
    try:
        stream = snapshot.keys(migrated_engine)
        assert statements == []  # nothing read before the first record is asked for
        first = next(stream)
        assert len(statements) == 3
        rest = list(stream)
    finally:
        event.remove(migrated_engine, "before_cursor_execute", count)
    records = [first, *rest]
    assert [k.key_id for k in records] == [f"k{i:02d}" for i in range(7)]
    for k in records:
        n = int(k.key_id[1:])
        assert k.refs == (f"/a/{n}.json", f"/b/{n}.json")
    assert len(statements) == 9  # 3 chunks x 3 queries; a short last chunk ends it
    assert all("LIMIT" in s.upper() or " IN " in s.upper() for s in statements)
