"""The migration scripts themselves: one initial revision, self-contained,
found in a checkout and in an installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from keyd.errors import StoreError
from keyd.store import migrate

REPO = Path(__file__).resolve().parents[3]


def test_head_is_the_single_initial_revision() -> None:
    assert migrate.head_revision() == "0001"
    versions = sorted(p.name for p in (REPO / "alembic" / "versions").glob("*.py"))
    assert versions == ["0001_initial.py"]


def test_checkout_uses_the_repository_scripts() -> None:
    assert Path(migrate.script_location()) == REPO / "alembic"


def test_migrations_never_import_application_code() -> None:
    """A migration must keep meaning what it meant when written, whatever
    the models become later (env.py renders UTCDateTime as sa.DateTime)."""
    tree = ast.parse((REPO / "alembic" / "versions" / "0001_initial.py").read_text())
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
