"""`keyd db upgrade` from an installed wheel, far from any checkout.

Builds the wheel (pip, isolated build: needs PyPI for setuptools), checks
that the migration scripts are inside it as keyd/_migrations (and that no
top-level `alembic` package would shadow the library), unpacks it into a
fresh directory and runs `python -m keyd.cli db upgrade` from another
working directory with only that directory (plus the venv's dependencies)
on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from keyd.store.migrate import head_revision

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("keyd", "alembic"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("keyd\n")  # pyproject names it
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(source)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = dist.glob("keyd-*.whl")
    return wheel


def test_wheel_ships_migrations_and_upgrades_without_checkout(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        site = tmp_path / "site"
        archive.extractall(site)
    for required in (
        "keyd/_migrations/env.py",
        "keyd/_migrations/script.py.mako",
        "keyd/_migrations/versions/0001_initial.py",
        "keyd/_migrations/versions/0002_alert_rung_expiry.py",
        "keyd/store/migrate.py",
        "keyd/py.typed",
    ):
        assert required in names
    assert not any(n.startswith("alembic/") for n in names), "would shadow the alembic library"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYD_", "PYTHON"))}
    env["PYTHONPATH"] = str(site)
    db = tmp_path / "var" / "keyd.db"

    def keyd(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "keyd.cli", *argv],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import keyd; from keyd.store import migrate; print(keyd.__file__); "
            "print(migrate.script_location())",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert where == [str(site / "keyd" / "__init__.py"), str(site / "keyd" / "_migrations")]

    done = keyd("db", "upgrade", "--url", f"sqlite:///{db}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"database sqlite:///{db}: at {head_revision()} (head)\n"  # every script shipped
    current = keyd("db", "current", "--url", f"sqlite:///{db}")
    assert (current.returncode, current.stdout) == (0, done.stdout)
