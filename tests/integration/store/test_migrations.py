"""Alembic migrations on both backends: the cycle, model/migration drift,
the schema guard (ensure_current) and atomic failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from keyd.errors import SchemaAhead, SchemaBehind, StoreError
from keyd.store import migrate
from keyd.store.models import Base

HINT = 'run "keyd db upgrade"'
KEYD_TABLES = set(Base.metadata.tables)

EXTRA_REVISION = '''
"""extra column (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("state") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
    {fail}


def downgrade() -> None:
    with op.batch_alter_table("state") as batch_op:
        batch_op.drop_column("note")
'''


def tables(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def columns(engine: Engine, table: str) -> set[str]:
    with engine.connect() as connection:
        return {c["name"] for c in inspect(connection).get_columns(table)}


class Scripts:
    """A copy of keyd's migration scripts that keyd uses while active."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(migrate, "script_location", lambda: str(location))

    def add_0002(self, fail: bool = False) -> None:
        body = EXTRA_REVISION.format(fail='raise RuntimeError("boom")' if fail else "")
        (self.location / "versions" / "0002_extra.py").write_text(body)

    def restore(self) -> None:
        """Back to this keyd's own scripts (head 0001)."""
        self._patch.undo()


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[Scripts]:
    location = tmp_path / "scripts"
    shutil.copytree(migrate.script_location(), location, ignore=shutil.ignore_patterns("__pycache__"))
    active = Scripts(location)
    yield active
    active.restore()


def test_upgrade_downgrade_cycle(db_engine: Engine) -> None:
    assert migrate.current_revision(db_engine) is None
    migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) == migrate.head_revision() == "0001"
    assert KEYD_TABLES <= tables(db_engine)

    migrate.downgrade(db_engine, "base")
    assert migrate.current_revision(db_engine) is None
    assert tables(db_engine) & KEYD_TABLES == set()

    migrate.upgrade(db_engine)
    migrate.upgrade(db_engine)  # repeating is harmless
    assert migrate.current_revision(db_engine) == "0001"
    assert KEYD_TABLES <= tables(db_engine)


def test_upgrade_by_url_disposes_its_engine(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == "0001"
    assert migrate.status(db_url).at_head


def test_models_match_head_migration(migrated_engine: Engine) -> None:
    """The `alembic check` equivalent: autogenerate finds nothing to add."""
    with migrated_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], "models and alembic/versions differ: run `make migration`"


def test_ensure_current_accepts_head(migrated_engine: Engine) -> None:
    migrate.ensure_current(migrated_engine)


def test_ensure_current_rejects_empty_database(db_engine: Engine) -> None:
    with pytest.raises(SchemaBehind) as caught:
        migrate.ensure_current(db_engine)
    message = str(caught.value)
    assert "has no keyd schema" in message and HINT in message
    assert caught.value.exit_code == 4 and not caught.value.retryable


def test_ensure_current_rejects_older_schema(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_0002()
    migrate.upgrade(db_engine, "0001")
    with pytest.raises(SchemaBehind) as caught:
        migrate.ensure_current(db_engine)
    assert "is at revision 0001, keyd needs 0002: " + HINT in str(caught.value)
    assert migrate.status(db_engine).line().endswith(f"at 0001, behind head 0002: {HINT}")

    migrate.upgrade(db_engine)
    migrate.ensure_current(db_engine)
    assert "note" in columns(db_engine, "state")
    migrate.downgrade(db_engine, "0001")
    assert "note" not in columns(db_engine, "state")


def test_ensure_current_rejects_newer_schema(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_0002()
    migrate.upgrade(db_engine)  # a "newer keyd" migrated it to 0002
    scripts.restore()  # back to this keyd (head 0001)
    with pytest.raises(SchemaAhead) as caught:
        migrate.ensure_current(db_engine)
    assert "is at revision 0002, which this keyd does not know" in str(caught.value)
    assert "upgrade keyd" in str(caught.value)
    with pytest.raises(StoreError, match="0002"):
        migrate.upgrade(db_engine)


def test_failed_migration_changes_nothing(db_engine: Engine, scripts: Scripts) -> None:
    """One transaction per upgrade: a revision failing half-way leaves the
    schema and the recorded revision as they were (SQLite included)."""
    scripts.add_0002(fail=True)
    migrate.upgrade(db_engine, "0001")
    with pytest.raises(RuntimeError, match="boom"):
        migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) == "0001"
    assert "note" not in columns(db_engine, "state")


def test_failed_first_upgrade_leaves_database_empty(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_0002(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) is None
    assert tables(db_engine) & KEYD_TABLES == set()
