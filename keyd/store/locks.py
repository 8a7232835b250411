"""Database-side pieces of leader election (docs/architecture.md §8).

``database_kind`` and ``sqlite_path`` read the URL; ``AdvisoryLock`` holds
a PostgreSQL *session* advisory lock on its own dedicated connection
(``NullPool``: never returned to a pool, never shared with the work), so
the lock lives exactly as long as that connection. If the connection
drops, PostgreSQL releases the lock and a standby's
``pg_try_advisory_lock`` succeeds within its next retry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from keyd.errors import ConfigError
from keyd.store.engine import parse_database_url, require_postgres_driver
from keyd.urls import judge_database_url

log = logging.getLogger(__name__)

# b"keyd-ldr" as a signed 64-bit int. Advisory locks are scoped to the
# current database, so inventories in different databases never collide.
LEADER_LOCK_KEY: Final = int.from_bytes(b"keyd-ldr", "big")

# libpq settings that make a dead leader connection *fail* within seconds
# instead of hanging until the kernel's TCP timeout (minutes).
_PG_CONNECT_ARGS: Final = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "application_name": "keyd-leader",
}


def database_kind(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"`` (a ``ConfigError`` for anything else)."""
    judged = judge_database_url(url)
    if judged is None:  # never repeat the URL: it may hold a password
        raise ConfigError("database.url", "cannot be parsed as a database URL")
    if judged.backend is None:
        raise ConfigError(
            "database.url",
            f"unsupported database {judged.dialect!r} (use sqlite:///PATH or postgresql+psycopg://...)",
        )
    return judged.backend


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).resolve()


class AdvisoryLock:
    """``pg_try_advisory_lock(key)`` held on one dedicated connection."""

    def __init__(self, url: str, key: int = LEADER_LOCK_KEY) -> None:
        self.key = key
        parsed = parse_database_url(url)
        require_postgres_driver(parsed)
        self._engine: Engine = create_engine(
            parsed, poolclass=NullPool, connect_args=dict(_PG_CONNECT_ARGS), isolation_level="AUTOCOMMIT"
        )
        self._conn: Connection | None = None
        self._held = False

    def try_acquire(self) -> bool:
        """Try once, without waiting. Connection errors count as "not
        acquired" (logged) so a standby just retries later."""
        if self._held:
            return self.held()
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar_one()
        except SQLAlchemyError as exc:
            log.warning("leader lock: cannot reach the database: %s", _short(exc))
            self._drop()
            return False
        self._held = bool(got)
        return self._held

    def held(self) -> bool:
        """Whether the lock is still ours: true while the session lives (a
        session lock is only released by us or by the session ending)."""
        if not self._held or self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1")).scalar_one()
        except SQLAlchemyError as exc:
            log.error("leader lock: lost the leader connection: %s", _short(exc))
            self._drop()
            return False
        return True

    def backend_pid(self) -> int | None:
        """The server process id of the lock connection (tests kill it)."""
        if self._conn is None:
            return None
        pid = self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return int(pid)

    def close(self) -> None:
        """Release and dispose of the engine. The unlock is explicit: closing
        the session also releases the lock, but only once the server backend
        has finished exiting, so a standby asking right away could still be
        refused; a clean stop hands over at once."""
        if self._held and self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except SQLAlchemyError:  # the session is gone, and with it the lock
                pass
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except SQLAlchemyError:  # already dead: nothing to release
                pass
            self._conn = None


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
