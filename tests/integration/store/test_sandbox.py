"""The dry-run sandbox: real reads, stage-to-stage visibility, nothing kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.store.engine import make_engine, session_scope
from keyd.store.models import Base, State
from keyd.store.sandbox import rollback_engine

NOW = datetime(2026, 3, 1, tzinfo=UTC)
ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'keyd.db'}")
        Base.metadata.create_all(eng)
        yield eng
        eng.dispose()
        return
    name = f"keyd_sandbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    eng = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(State)) or 0)


def test_nothing_persists_but_stages_see_each_other(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(State(name="real", value="1", updated_at=NOW))
    with rollback_engine(engine) as sandbox:
        assert _count(sandbox) == 1  # reads see the real data
        with session_scope(sandbox) as s:  # stage 1 "commits"
            s.add(State(name="dry-1", value="x", updated_at=NOW))
        with pytest.raises(RuntimeError), session_scope(sandbox) as s:  # stage 2 fails
            s.add(State(name="dry-2", value="x", updated_at=NOW))
            s.flush()
            raise RuntimeError("stage failed")
        with sandbox.begin() as conn:  # stage 3 uses Core and a nested savepoint
            conn.execute(State.__table__.insert().values(name="dry-3", value="x", updated_at=NOW))
        with Session(sandbox) as s, s.begin():
            with s.begin_nested():
                s.add(State(name="dry-4", value="x", updated_at=NOW))
        with Session(sandbox) as s:
            names = set(s.scalars(select(State.name)))
        assert names == {"real", "dry-1", "dry-3", "dry-4"}
    assert _count(engine) == 1
    with session_scope(engine) as s:  # the real engine is still fine afterwards
        s.add(State(name="after", value="1", updated_at=NOW))
    assert _count(engine) == 2
