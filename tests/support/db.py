"""Database fixtures: every store test runs on SQLite AND PostgreSQL.

Use them from any conftest (fixtures imported into a conftest are registered):

    from tests.support.db import db_url, db_engine, migrated_engine  # noqa: F401

- ``db_url``: a fresh, EMPTY database per test, parametrized ``[sqlite]`` /
  ``[postgres]`` (the latter marked ``postgres``): a file in ``tmp_path``, or
  ``CREATE DATABASE keyd_t_<random>`` on 127.0.0.1:5432, dropped WITH (FORCE)
  afterwards.
- ``db_engine``: ``make_engine(db_url)``, schema not created.
- ``migrated_engine``: ``make_engine(db_url)`` upgraded to head.

Engines are disposed at teardown, which first asserts that the test
returned every connection it checked out (docs/architecture.md: no leaked connections).
``postgres_database()`` is the context manager behind the postgres param, for
tests that need a database outside the fixtures.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import Engine

from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test connect_timeout=10"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(statement)


@contextmanager
def postgres_database(prefix: str = "keyd_t_") -> Iterator[str]:
    """A new empty PostgreSQL database; yields its SQLAlchemy URL."""
    name = f"{prefix}{secrets.token_hex(6)}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'keyd.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database for this test (see module doc)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with postgres_database() as url:
        yield url


@contextmanager
def checked_engine(url: str) -> Iterator[Engine]:
    """``make_engine(url)``; at exit asserts no connection is still checked
    out, then disposes the engine (closing pooled connections)."""
    engine = make_engine(url)
    try:
        yield engine
        leaked = engine.pool.checkedout()  # type: ignore[attr-defined]
        assert leaked == 0, f"{leaked} database connection(s) not returned to the pool"
    finally:
        engine.dispose()


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the empty ``db_url`` database."""
    with checked_engine(db_url) as engine:
        yield engine


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the ``db_url`` database, upgraded to head."""
    with checked_engine(db_url) as engine:
        upgrade(engine)
        yield engine
