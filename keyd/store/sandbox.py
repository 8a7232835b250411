"""A throwaway view of the database for ``keyd check --dry-run``.

``rollback_engine(engine)`` yields an ``Engine`` that works like the real
one (same database, same schema, reads see real data), but whose
transactions are SAVEPOINTs inside one outer transaction that is rolled
back when the block ends. Code written against an engine (``Session``,
``session_scope``, ``engine.begin()``) runs unchanged: its commits become
``RELEASE SAVEPOINT`` (later stages see earlier stages' writes, as in a
real cycle) and its rollbacks ``ROLLBACK TO SAVEPOINT``. Nothing is ever
committed. Single connection, single thread: not for the daemon.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

_names = itertools.count(1)


@contextmanager
def rollback_engine(engine: Engine) -> Iterator[Engine]:
    """See the module docstring."""
    raw = engine.raw_connection()  # the real engine's connect hooks (pragmas, UTC) apply
    dbapi: Any = raw.driver_connection
    sandbox = create_engine(
        engine.url, creator=lambda: dbapi, poolclass=StaticPool, pool_reset_on_return=None
    )
    try:
        with sandbox.connect():  # dialect initialisation, before the outer transaction
            pass
        if sandbox.dialect.name == "sqlite":
            _execute(dbapi, "BEGIN")  # keyd's SQLite connections are in autocommit mode
        # (psycopg opens the outer transaction implicitly at the first SAVEPOINT)
        _route_transactions_to_savepoints(sandbox)
        yield sandbox
    finally:
        try:
            dbapi.rollback()
        finally:
            raw.invalidate()  # never hand a connection with odd state back to the pool
            sandbox.dispose(close=False)


def _route_transactions_to_savepoints(sandbox: Engine) -> None:
    dialect: Any = sandbox.dialect
    stack: list[str] = []

    def do_begin(conn: Any) -> None:
        name = f"keyd_dry_{next(_names)}"
        stack.append(name)
        _execute(conn, f"SAVEPOINT {name}")

    def do_commit(conn: Any) -> None:
        if stack:
            _execute(conn, f"RELEASE SAVEPOINT {stack.pop()}")

    def do_rollback(conn: Any) -> None:
        if stack:
            name = stack.pop()
            _execute(conn, f"ROLLBACK TO SAVEPOINT {name}")
            _execute(conn, f"RELEASE SAVEPOINT {name}")

    dialect.do_begin = do_begin
    dialect.do_commit = do_commit
    dialect.do_rollback = do_rollback


def _execute(conn: Any, sql: str) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
