"""Alembic migrations on both backends: the cycle, model/migration drift,
the schema guard (ensure_current) and atomic failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from keyd.errors import SchemaAhead, SchemaBehind, StoreError
from keyd.store import autogen, migrate
from keyd.store.models import Base

HINT = 'run "keyd db upgrade"'
KEYD_TABLES = set(Base.metadata.tables)
HEAD = migrate.head_revision()  # this keyd's newest revision
NEXT = f"{int(HEAD) + 1:04d}"  # a test-only revision on top of it
CHAIN = [f"{n:04d}" for n in range(1, int(HEAD) + 1)]  # 0001 ... HEAD, one after the other

EXTRA_REVISION = '''
"""extra column (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
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

    def add_next(self, fail: bool = False) -> None:
        body = EXTRA_REVISION.format(next=NEXT, head=HEAD, fail='raise RuntimeError("boom")' if fail else "")
        (self.location / "versions" / f"{NEXT}_extra.py").write_text(body)

    def restore(self) -> None:
        """Back to this keyd's own scripts (head HEAD)."""
        self._patch.undo()


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[Scripts]:
    location = tmp_path / "scripts"
    shutil.copytree(migrate.script_location(), location, ignore=shutil.ignore_patterns("__pycache__"))
    active = Scripts(location)
    yield active
    active.restore()


def test_revisions_are_one_chain_from_the_frozen_initial() -> None:
    """0001 is frozen (databases exist in the field); every change since is
    a revision on top of the previous one: no branches, no gaps."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))
    assert [r.revision for r in revisions] == CHAIN
    assert [r.down_revision for r in revisions] == [None, *CHAIN[:-1]]
    assert script.get_heads() == [HEAD]


def test_each_revision_steps_up_and_down(db_engine: Engine) -> None:
    for revision in CHAIN:
        migrate.upgrade(db_engine, revision)
        assert migrate.current_revision(db_engine) == revision
    for below in reversed([None, *CHAIN[:-1]]):
        migrate.downgrade(db_engine, below or "base")
        assert migrate.current_revision(db_engine) == below


def test_upgrade_downgrade_cycle(db_engine: Engine) -> None:
    assert migrate.current_revision(db_engine) is None
    migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) == migrate.head_revision() == HEAD
    assert KEYD_TABLES <= tables(db_engine)

    migrate.downgrade(db_engine, "base")
    assert migrate.current_revision(db_engine) is None
    assert tables(db_engine) & KEYD_TABLES == set()

    migrate.upgrade(db_engine)
    migrate.upgrade(db_engine)  # repeating is harmless
    assert migrate.current_revision(db_engine) == HEAD
    assert KEYD_TABLES <= tables(db_engine)


def test_upgrade_by_url_disposes_its_engine(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == HEAD
    assert migrate.status(db_url).at_head


def test_models_match_head_migration(migrated_engine: Engine) -> None:
    """The `alembic check` equivalent: autogenerate finds nothing to add."""
    with migrated_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], "models and alembic/versions differ: add a revision (`make migration`)"


def test_ensure_current_accepts_head(migrated_engine: Engine) -> None:
    migrate.ensure_current(migrated_engine)


def test_ensure_current_rejects_empty_database(db_engine: Engine) -> None:
    with pytest.raises(SchemaBehind) as caught:
        migrate.ensure_current(db_engine)
    message = str(caught.value)
    assert "has no keyd schema" in message and HINT in message
    assert caught.value.exit_code == 4 and not caught.value.retryable


def test_ensure_current_rejects_older_schema(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_next()
    migrate.upgrade(db_engine, HEAD)
    with pytest.raises(SchemaBehind) as caught:
        migrate.ensure_current(db_engine)
    assert f"is at revision {HEAD}, keyd needs {NEXT}: " + HINT in str(caught.value)
    assert migrate.status(db_engine).line().endswith(f"at {HEAD}, behind head {NEXT}: {HINT}")

    migrate.upgrade(db_engine)
    migrate.ensure_current(db_engine)
    assert "note" in columns(db_engine, "state")
    migrate.downgrade(db_engine, HEAD)
    assert "note" not in columns(db_engine, "state")


def test_ensure_current_rejects_newer_schema(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_next()
    migrate.upgrade(db_engine)  # a "newer keyd" migrated it to NEXT
    scripts.restore()  # back to this keyd (head HEAD)
    with pytest.raises(SchemaAhead) as caught:
        migrate.ensure_current(db_engine)
    assert f"is at revision {NEXT}, which this keyd does not know" in str(caught.value)
    assert "upgrade keyd" in str(caught.value)
    with pytest.raises(StoreError, match=NEXT):
        migrate.upgrade(db_engine)


def test_failed_migration_changes_nothing(db_engine: Engine, scripts: Scripts) -> None:
    """One transaction per upgrade: a revision failing half-way leaves the
    schema and the recorded revision as they were (SQLite included)."""
    scripts.add_next(fail=True)
    migrate.upgrade(db_engine, HEAD)
    with pytest.raises(RuntimeError, match="boom"):
        migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) == HEAD
    assert "note" not in columns(db_engine, "state")


def test_failed_first_upgrade_leaves_database_empty(db_engine: Engine, scripts: Scripts) -> None:
    scripts.add_next(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        migrate.upgrade(db_engine)
    assert migrate.current_revision(db_engine) is None
    assert tables(db_engine) & KEYD_TABLES == set()


def test_make_migration_adds_the_next_revision(scripts: Scripts) -> None:
    """``make migration`` (keyd.store.autogen) writes a new revision on top of
    the head, never touching the ones before: here, on scripts whose head is
    0001, it generates what 0002 does to the schema."""
    for path in (scripts.location / "versions").glob("*.py"):
        if not path.name.startswith("0001_"):
            path.unlink()
    frozen = (scripts.location / "versions" / "0001_initial.py").read_bytes()
    path = autogen.new_revision("alert rung expiry")
    assert path == scripts.location / "versions" / "0002_alert_rung_expiry.py"
    body = path.read_text()
    assert 'revision: str = "0002"' in body and 'down_revision: str | None = "0001"' in body
    assert "uq_alerts_about_kind_threshold_expires_at" in body and '"expires_at"' in body
    assert (scripts.location / "versions" / "0001_initial.py").read_bytes() == frozen


def test_make_migration_refuses_without_a_change(scripts: Scripts) -> None:
    with pytest.raises(StoreError, match="nothing to migrate"):
        autogen.new_revision("nothing")
    assert sorted(p.name[:4] for p in (scripts.location / "versions").glob("*.py")) == CHAIN
