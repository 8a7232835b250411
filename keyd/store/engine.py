"""Engines and sessions for SQLite and PostgreSQL (docs/architecture.md §3, §8).

``make_engine(url)`` is the only place keyd calls ``create_engine``, so every
connection, whether the daemon's, a CLI command's or Alembic's, gets the same
settings:

- SQLite: the parent directory is created; WAL (readers never block the
  writer), ``busy_timeout`` (a second process waits instead of failing at
  once), ``foreign_keys=ON`` (SQLite ignores FKs otherwise),
  ``synchronous=NORMAL`` (safe with WAL). SQLAlchemy emits ``BEGIN`` itself,
  so SELECTs, DDL and SAVEPOINTs are really inside the transaction (the
  sqlite3 module's legacy mode skips BEGIN for them); migrations are thus
  atomic on SQLite too.
- PostgreSQL through psycopg 3 (``postgresql+psycopg://``; a bare
  ``postgresql://`` is taken to mean that driver), ``pool_pre_ping`` so a
  restarted server costs no failed stage, and the session time zone pinned
  to UTC so nothing depends on the server's setting.

Failures to reach the database surface as ``StoreError`` naming the URL
without its password; other database errors (``IntegrityError`` from a
unique constraint, for instance) stay SQLAlchemy's so callers can act on them.

Engines connect lazily: ``make_engine`` does no network I/O.
"""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from keyd.errors import DatabaseMissing, DatabaseUnusable, DriverMissing, StoreError
from keyd.redact import scrub
from keyd.text import storable
from keyd.urls import display_url, judge_database_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 10
PG_DISK_FULL = "53100"  # SQLSTATE disk_full


def safe_url(url: str | URL) -> str:
    """The URL as it may appear in messages and logs (``display_url``:
    password and query hidden)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparsable database URL>"
    return display_url(parsed.render_as_string(hide_password=False))


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` with keyd's per-backend settings (module doc).

    ``create=False`` is for commands that need an existing schema
    (``keyd db current``, ``keyd status``, ``keyd config check``, ...):
    connecting to a SQLite file that does not exist raises
    ``DatabaseMissing`` ("run keyd db upgrade") instead of making an empty
    database and its directory as a side effect of looking.

    Raises ``StoreError`` for a URL keyd cannot use (unparsable, unsupported
    backend, SQLite directory that cannot be created).
    """
    parsed = parse_database_url(url)
    judged = judge_database_url(url)
    backend = judged.backend if judged is not None else None
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, create)
    elif backend == "postgresql":
        require_postgres_driver(parsed)
        engine = _postgres_engine(parsed)
    else:
        raise DatabaseUnusable(
            f"database {safe_url(parsed)}: unsupported backend {parsed.get_backend_name()!r} "
            '(use "sqlite:////path/keyd.db" or "postgresql+psycopg://user@host/db")'
        )
    event.listen(engine, "handle_error", _connection_errors)
    event.listen(engine, "before_cursor_execute", _storable_parameters, retval=True)
    return engine


def require_postgres_driver(url: str | URL) -> None:
    """Raise ``DriverMissing`` unless psycopg 3 can be imported. It is the
    ``keyd[postgres]`` extra (SQLite-only hosts do without it), so a plain
    ``pip install keyd`` would otherwise fail deep in SQLAlchemy with
    ``No module named 'psycopg'``."""
    if importlib.util.find_spec("psycopg") is None:
        raise DriverMissing(
            f"database {safe_url(url)}: PostgreSQL needs the psycopg driver, which this "
            "keyd was installed without: install keyd[postgres] "
            "(pip install 'keyd[postgres]', or pipx install 'keyd[postgres]'; "
            "the Debian package includes it)"
        )


def _storable_parameters(
    _conn: Connection, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool
) -> tuple[str, Any]:
    """Every text bound to a statement goes through ``text.storable``: a NUL
    (PostgreSQL refuses it) or a lone surrogate (SQLite's UTF-8 encoder
    refuses it) in a file name, an error message or an event detail is kept
    escaped instead of aborting the whole transaction. ``parameters`` is one
    row (dict or sequence) or, for executemany, a sequence of rows."""
    return statement, _storable(parameters)


def _storable(value: Any) -> Any:
    """``value`` with its texts storable; the very same object when none
    needed escaping (a probe round's executemany binds thousands of values,
    and copying every row and list cost more than the escaping check)."""
    kind = type(value)
    if kind is str:
        return storable(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, dict):
        changed = None
        for k, v in value.items():
            if type(v) in _SCALARS:
                continue
            new = _storable(v)
            if new is not v:
                if changed is None:
                    changed = dict(value)
                changed[k] = new
        return value if changed is None else changed
    if isinstance(value, (list, tuple)):
        copied = None
        for i, v in enumerate(value):
            if type(v) in _SCALARS:
                continue
            new = _storable(v)
            if new is not v:
                if copied is None:
                    copied = list(value)
                copied[i] = new
        if copied is None:
            return value
        return copied if kind is list else type(value)(copied)
    if isinstance(value, str):
        return storable(value)
    return value


_SCALARS = frozenset({int, float, bool, type(None), datetime, bytes})


def parse_database_url(url: str) -> URL:
    """``url`` as SQLAlchemy's ``URL``, a bare ``postgresql://`` on psycopg 3
    (the one driver keyd ships); ``StoreError`` when it cannot be parsed.
    What the URL *is* (backend, password) is ``keyd.urls.judge_database_url``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The parser's message repeats the URL, password included: say less.
        raise StoreError(
            "database.url cannot be parsed as a database URL "
            '(expected "sqlite:////path/keyd.db" or "postgresql+psycopg://user@host/db")'
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_engine(url: URL, create: bool) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        if create:
            _make_parent(url, Path(database))
    try:
        engine = create_engine(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"database {safe_url(url)}: {exc}") from None
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    if not create and database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()

        def _exists(*_args: Any) -> None:  # before sqlite3.connect, which would create it
            if not path.exists():
                raise DatabaseMissing(f'database {safe_url(url)} does not exist: run "keyd db upgrade"')

        event.listen(engine, "do_connect", _exists)
    return engine


def _make_parent(url: URL, path: Path) -> None:
    parent = path.expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"database {safe_url(url)}: cannot create directory {parent}: {exc.strerror or exc}"
        ) from None


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Take BEGIN away from the sqlite3 module (see module doc and
    # SQLAlchemy's "Serializable isolation / Savepoints / Transactional DDL").
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def _postgres_engine(url: URL) -> Engine:
    query = dict(url.query)
    options = str(query.pop("options", "") or "")
    connect_args: dict[str, Any] = {
        # Timestamps are aware and stored as timestamptz; pinning the session
        # zone makes server-side now()/casts and text output UTC as well.
        "options": f"{options} -c timezone=UTC".strip(),
        "connect_timeout": int(str(query.pop("connect_timeout", PG_CONNECT_TIMEOUT_S))),
        "application_name": str(query.pop("application_name", "keyd")),
    }
    url = url.set(query=query)
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"database {safe_url(url)}: {exc}") from None


def _connection_errors(ctx: ExceptionContext) -> BaseException | None:
    """Turn "cannot reach the database" into a retryable ``StoreError``.

    Only connection-level failures are translated: a failed connect, a
    dropped connection, SQLite's lock wait running out, or a full disk. Statement errors
    (constraints, syntax) keep their SQLAlchemy type.
    """
    if ctx.is_pre_ping:
        return None  # the pool handles this by reconnecting
    orig = ctx.original_exception
    url = ctx.engine.url if ctx.engine is not None else None
    where = safe_url(url) if url is not None else ctx.dialect.name
    if getattr(orig, "sqlite_errorcode", None) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        error: StoreError = DatabaseUnusable(
            f"database {where}: the file is not a usable SQLite database ({orig}); "
            "point database.url at keyd's database file, or move this file away"
        )
        error.__cause__ = orig
        return error
    if ctx.connection is None:
        problem = "cannot connect"
    elif ctx.is_disconnect:
        problem = "connection lost"
    elif getattr(orig, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        problem = f"still locked by another process after {SQLITE_BUSY_TIMEOUT_MS // 1000}s"
    elif (getattr(orig, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL or getattr(
        orig, "sqlstate", None
    ) == PG_DISK_FULL:
        problem = "the disk is full (nothing was written; free space and it resumes)"
    else:
        return None
    detail = scrub(str(orig).strip().splitlines()[0]) if str(orig).strip() else type(orig).__name__
    error = StoreError(f"database {where}: {problem}: {detail}")
    error.__cause__ = orig
    return error


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (``expire_on_commit=False``):
    a stage commits and then still reads what it wrote, without a new query."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(bind: Engine | sessionmaker[Session]) -> Iterator[Session]:
    """One transaction for one stage (docs/architecture.md §1): commit when the block
    ends normally, roll back (and re-raise) when it raises."""
    factory = bind if isinstance(bind, sessionmaker) else session_factory(bind)
    with factory() as session, session.begin():
        yield session
