"""Schema migrations: Alembic, driven from keyd (``keyd db upgrade``).

The migration scripts live in ``alembic/`` at the repository root
(``migrations.ini`` says so for the plain ``alembic`` command). A wheel ships
the same directory as ``keyd/_migrations`` (``setup.py``), so an installed
keyd migrates without a checkout. ``script_location()`` picks the checkout's
copy when ``migrations.ini`` sits next to the package, the packaged one
otherwise.

Alembic always runs on keyd's own engine connection
(``config.attributes["connection"]``), inside one transaction that commits
only when every step succeeded: SQLite pragmas and the PostgreSQL UTC session
apply, in-memory and test databases work, and a failed upgrade leaves the
schema as it was. Alembic never touches logging configuration here.

Revisions form one chain from ``0001``; none is ever rewritten (databases
exist in the field), so every schema change is a new revision on top
(``make migration``, ``keyd.store.autogen``), with its data migration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from keyd.errors import SchemaAhead, SchemaBehind, StoreError
from keyd.store.engine import make_engine, safe_url

REPO_ROOT = Path(__file__).resolve().parents[2]
# Any fixed number: serialises concurrent `keyd db upgrade` on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6B657964  # "keyd"
UPGRADE_HINT = 'run "keyd db upgrade"'


def script_location() -> str:
    """The directory holding ``env.py`` and ``versions/`` (module doc)."""
    checkout = REPO_ROOT / "alembic"
    if (REPO_ROOT / "migrations.ini").is_file() and (checkout / "env.py").is_file():
        return str(checkout)
    packaged = resources.files("keyd") / "_migrations"
    if not isinstance(packaged, Path) or not (packaged / "env.py").is_file():
        raise StoreError(f"keyd's migration scripts are missing ({packaged}): reinstall keyd from its wheel")
    return str(packaged)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` built in code (no ini file, so no logging setup).

    With ``connection``, ``env.py`` migrates on it instead of opening its own.
    """
    config = Config()
    config.set_main_option("script_location", script_location())
    config.set_main_option("path_separator", "os")
    config.attributes["keyd"] = True
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this keyd knows (what ``upgrade`` goes to)."""
    head = _script().get_current_head()
    if head is None:
        raise StoreError("keyd's migration scripts contain no revision")
    return head


@contextmanager
def _engine_for(target: Engine | str, *, create: bool = True) -> Iterator[Engine]:
    """Use ``target`` if it is an engine; otherwise make one and dispose it."""
    if isinstance(target, Engine):
        yield target
        return
    engine = make_engine(target, create=create)
    try:
        yield engine
    finally:
        engine.dispose()


def _migrate(target: Engine | str, step: Callable[[Config], None]) -> None:
    with _engine_for(target) as engine, engine.connect() as connection:
        with _sqlite_foreign_keys_off(connection), connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                step(alembic_config(connection))
            except (CommandError, RevisionError) as exc:
                raise StoreError(f"database {safe_url(engine.url)}: {exc}") from exc
            _check_foreign_keys(connection, safe_url(engine.url))


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite's batch mode rebuilds a table (copy, DROP, rename); with
    foreign keys on, that DROP would cascade into the rows referencing it
    (``deliveries`` of ``alerts``). So, as SQLite prescribes for such
    changes, they are off for the migration's transaction (the pragma is a
    no-op inside one) and checked before it commits."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _check_foreign_keys(connection: Connection, url: str) -> None:
    if connection.dialect.name != "sqlite":
        return  # PostgreSQL checks every statement
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise StoreError(f"database {url}: the migration would break foreign keys in {', '.join(tables)}")


def upgrade(target: Engine | str, revision: str = "head") -> None:
    """Migrate the database at ``target`` (engine or URL) up to ``revision``."""
    _migrate(target, lambda config: command.upgrade(config, revision))


def downgrade(target: Engine | str, revision: str = "base") -> None:
    """Migrate down to ``revision`` ("base" drops every keyd table)."""
    _migrate(target, lambda config: command.downgrade(config, revision))


def current_revision(target: Engine | str) -> str | None:
    """The database's revision, or None when it has no keyd schema."""
    with _engine_for(target, create=False) as engine, engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ensure_current(engine: Engine) -> None:
    """Refuse to work on a schema other than the one this keyd was built for.

    Raises ``SchemaBehind`` (empty or older: the fix is ``keyd db upgrade``)
    or ``SchemaAhead`` (migrated by a newer keyd: the fix is upgrading keyd).
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = safe_url(engine.url)
    if current is None:
        raise SchemaBehind(f"database {where} has no keyd schema: {UPGRADE_HINT}")
    if _known(current):
        raise SchemaBehind(f"database {where} is at revision {current}, keyd needs {head}: {UPGRADE_HINT}")
    raise SchemaAhead(
        f"database {where} is at revision {current}, which this keyd does not know "
        f"(newest known: {head}): it was migrated by a newer keyd; upgrade keyd"
    )


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands relative to this keyd."""

    url: str  # password hidden
    current: str | None
    head: str
    known: bool  # current is a revision this keyd has a script for

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def line(self) -> str:
        """One line for ``keyd db current``/``upgrade``."""
        where = f"database {self.url}"
        if self.current is None:
            return f"{where}: no keyd schema (head is {self.head}): {UPGRADE_HINT}"
        if self.at_head:
            return f"{where}: at {self.current} (head)"
        if self.known:
            return f"{where}: at {self.current}, behind head {self.head}: {UPGRADE_HINT}"
        return f"{where}: at {self.current}, newer than this keyd knows (head {self.head})"


def status(target: Engine | str) -> SchemaStatus:
    """The schema revision of ``target`` compared with this keyd's head.
    Read-only: a SQLite file that does not exist is ``DatabaseMissing``."""
    with _engine_for(target, create=False) as engine:
        current = current_revision(engine)
        url = safe_url(engine.url)
    head = head_revision()
    known = current is not None and _known(current)
    return SchemaStatus(url=url, current=current, head=head, known=known)
