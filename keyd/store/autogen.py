"""Regenerate the initial migration from the models (``make migration``).

Pre-1.0 keyd keeps ONE migration, ``alembic/versions/0001_initial.py``,
generated from ``keyd.store.models`` against an empty temporary SQLite
database (so every table is a plain ``create_table``). Run this after any
model change, read the diff, and commit the models and the migration
together. From 1.0 on, schema changes get new revisions on top instead
(``alembic -c migrations.ini revision --autogenerate``), and this tool is
retired.

Only works in a checkout: it writes into the repository's ``alembic/``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from keyd.errors import KeydError, StoreError
from keyd.store.engine import make_engine
from keyd.store.migrate import REPO_ROOT, alembic_config

log = logging.getLogger(__name__)

INITIAL_REVISION = "0001"
INITIAL_FILE = REPO_ROOT / "alembic" / "versions" / f"{INITIAL_REVISION}_initial.py"


def regenerate(target: Path = INITIAL_FILE) -> Path:
    """Rewrite the initial migration from the current models; returns its path.

    The old file is restored if generation fails, so a broken model never
    leaves the repository without a migration.
    """
    if not (REPO_ROOT / "migrations.ini").is_file():
        raise StoreError(f"{REPO_ROOT}: not a keyd checkout (no migrations.ini)")
    versions = target.parent
    others = [p.name for p in versions.glob("*.py") if p != target]
    if others:
        raise StoreError(
            f"{versions}: more than the initial migration exists ({others}); "
            "add a new revision instead of regenerating"
        )
    backup = target.read_bytes() if target.exists() else None
    target.unlink(missing_ok=True)
    try:
        _generate()
    except BaseException:
        if backup is not None:
            target.write_bytes(backup)
        raise
    return target


def _generate() -> None:
    with tempfile.TemporaryDirectory(prefix="keyd-autogen-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'empty.db'}")
        try:
            with engine.begin() as connection:
                config = alembic_config(connection)
                config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
                config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
                _format_with_ruff(config)
                command.revision(config, message="initial", autogenerate=True, rev_id=INITIAL_REVISION)
        finally:
            engine.dispose()


def _format_with_ruff(config: Config) -> None:
    """Format and lint-fix the generated file (ruff is a dev dependency;
    ``make migration`` runs in the dev venv)."""
    config.set_section_option("post_write_hooks", "hooks", "ruff_format ruff_fix")
    for name, args in (("ruff_format", "format"), ("ruff_fix", "check --fix --quiet")):
        config.set_section_option("post_write_hooks", f"{name}.type", "module")
        config.set_section_option("post_write_hooks", f"{name}.module", "ruff")
        config.set_section_option("post_write_hooks", f"{name}.options", f"{args} REVISION_SCRIPT_FILENAME")


def main() -> int:
    try:
        path = regenerate()
    except KeydError as exc:
        sys.stderr.write(f"keyd.store.autogen: {exc}\n")
        return exc.exit_code
    sys.stdout.write(
        f"wrote {path.relative_to(REPO_ROOT)}: review the diff, then commit it "
        "together with the model change\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
