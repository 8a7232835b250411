"""Start a new migration revision from a model change (``make migration``).

Databases exist in the field (the Debian package), so the revisions in
``alembic/versions/`` are never rewritten: ``0001_initial.py`` is frozen and
every schema change is a new revision on top of the head. This tool
autogenerates that revision against a temporary SQLite database migrated
to the current head, so the file holds exactly the difference between the
models and the head (rendered in batch mode; the same operations run on
PostgreSQL). Autogenerate sees structure only: moving existing rows to the
new shape (as ``0002`` does) is written by hand, and gets a test that
upgrades a database holding rows of the old shape (tests/integration/store/).

Only works in a checkout: it writes into the repository's ``alembic/``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from keyd.errors import KeydError, StoreError
from keyd.store import migrate
from keyd.store.engine import make_engine
from keyd.store.migrate import REPO_ROOT, alembic_config, head_revision, upgrade
from keyd.store.models import Base

log = logging.getLogger(__name__)


def next_revision_id(head: str) -> str:
    """``0002`` after ``0001``: revisions are numbered, one chain."""
    return f"{int(head) + 1:04d}"


def new_revision(message: str) -> Path:
    """Write the next revision for the current models into the checkout's
    scripts; returns its path. Refuses when the models match the head."""
    if not message.strip():
        raise StoreError('say what changes: make migration MESSAGE="alert rung expiry"')
    if not (REPO_ROOT / "migrations.ini").is_file():
        raise StoreError(f"{REPO_ROOT}: not a keyd checkout (no migrations.ini)")
    scripts = Path(migrate.script_location())  # looked up on the module: tests point it elsewhere
    rev_id = next_revision_id(head_revision())
    with tempfile.TemporaryDirectory(prefix="keyd-autogen-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'head.db'}")
        try:
            upgrade(engine)
            with engine.begin() as connection:
                if not compare_metadata(MigrationContext.configure(connection), Base.metadata):
                    raise StoreError("the models match the head revision: nothing to migrate")
                config = alembic_config(connection)
                config.set_main_option("script_location", str(scripts))
                config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
                _format_with_ruff(config)
                command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    (path,) = (scripts / "versions").glob(f"{rev_id}_*.py")
    return path


def _format_with_ruff(config: Config) -> None:
    """Format and lint-fix the generated file (ruff is a dev dependency;
    ``make migration`` runs in the dev venv)."""
    config.set_section_option("post_write_hooks", "hooks", "ruff_format ruff_fix")
    for name, args in (("ruff_format", "format"), ("ruff_fix", "check --fix --quiet")):
        config.set_section_option("post_write_hooks", f"{name}.type", "module")
        config.set_section_option("post_write_hooks", f"{name}.module", "ruff")
        config.set_section_option("post_write_hooks", f"{name}.options", f"{args} REVISION_SCRIPT_FILENAME")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        path = new_revision(" ".join(args))
    except KeydError as exc:
        sys.stderr.write(f"keyd.store.autogen: {exc}\n")
        return exc.exit_code
    sys.stdout.write(
        f"wrote {path}: review it, add the data migration "
        "autogenerate cannot see and a test, then commit it with the model change\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
