"""The migration scripts themselves: a chain from the frozen initial
revision, self-contained, found in a checkout and in an installed package."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from keyd.errors import StoreError
from keyd.store import migrate

REPO = Path(__file__).resolve().parents[3]
VERSIONS = REPO / "alembic" / "versions"
# 0001 as the Debian package first shipped it: databases in the field are at
# it, so it is never edited again (README "Database and schema changes").
INITIAL_SHA256 = "d39f4f90d43c986c9954c1036b8dd02da58225418d085cd859d452c755074f92"


def test_revisions_are_numbered_files_up_to_the_head() -> None:
    numbers = sorted(p.name[:4] for p in VERSIONS.glob("*.py"))
    assert numbers == [f"{n:04d}" for n in range(1, len(numbers) + 1)]
    assert migrate.head_revision() == numbers[-1]


def test_the_initial_revision_is_frozen() -> None:
    digest = hashlib.sha256((VERSIONS / "0001_initial.py").read_bytes()).hexdigest()
    assert digest == INITIAL_SHA256, "0001 is frozen: add a new revision instead (make migration)"


def test_checkout_uses_the_repository_scripts() -> None:
    assert Path(migrate.script_location()) == REPO / "alembic"


@pytest.mark.parametrize("script", sorted(VERSIONS.glob("*.py")), ids=lambda p: p.name)
def test_migrations_never_import_application_code(script: Path) -> None:
    """A migration must keep meaning what it meant when written, whatever
    the models become later (env.py renders UTCDateTime as sa.DateTime)."""
    tree = ast.parse(script.read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith("keyd") for name in imported)


def test_no_package_named_alembic_at_the_repository_root() -> None:
    """alembic/__init__.py would shadow the Alembic library for anything
    run from the repository root."""
    assert not (REPO / "alembic" / "__init__.py").exists()
    import alembic

    assert Path(alembic.__file__).parent != REPO / "alembic"


def test_missing_packaged_scripts_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(migrate, "REPO_ROOT", tmp_path)  # "not a checkout"
    monkeypatch.setattr(migrate.resources, "files", lambda _pkg: tmp_path / "keyd")
    with pytest.raises(StoreError, match="migration scripts are missing"):
        migrate.script_location()
