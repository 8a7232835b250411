"""The source distribution is something a distribution can build and test
from: it carries the units, docs, examples, the test suite, the migrations
and the license, and a wheel built from it (not from the checkout) still
ships the migrations as ``keyd/_migrations``."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REQUIRED = (
    "LICENSE",
    "README.md",
    "Makefile",
    "migrations.ini",
    "pyproject.toml",
    "setup.py",
    "systemd/keyd.service",
    "systemd/keyd-check.timer",
    "systemd/keyd.sysusers.conf",
    "systemd/keyd.tmpfiles.conf",
    "docs/zitadel.md",
    "docs/architecture.md",
    "docs/configuration.md",
    "examples/keyd.toml",
    "examples/prometheus-rules.yml",
    "tests/conftest.py",
    "tests/support/issuer.py",
    "tests/unit/test_architecture.py",
    "alembic/env.py",
    "alembic/versions/0001_initial.py",
    "alembic/versions/0002_alert_rung_expiry.py",
    "bench/mint.py",
)


def build(*args: str, outdir: Path, cwd: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "build", *args, "--outdir", str(outdir)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = outdir.iterdir()
    return built


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("--sdist", outdir=tmp_path_factory.mktemp("sdist"), cwd=ROOT)


def members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_carries_what_a_distribution_builds_and_tests_from(sdist: Path) -> None:
    names = members(sdist)
    assert [name for name in REQUIRED if name not in names] == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    tracked = subprocess.run(
        ["git", "ls-files", "tests", "systemd", "docs", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [name for name in tracked if name not in names] == []


def test_metadata_declares_license_and_classifiers_and_no_made_up_urls(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        info = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/PKG-INFO")
        assert info is not None
        meta = Parser().parsestr(info.read().decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in meta.get_all("License-File", [])
    classifiers = meta.get_all("Classifier", [])
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Topic :: System :: Monitoring" in classifiers
    assert meta.get_all("Project-URL") is None and meta["Home-page"] is None
    assert "postgres" in meta.get_all("Provides-Extra", [])


def test_a_wheel_built_from_the_sdist_ships_the_migrations(sdist: Path, tmp_path: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    wheel = build("--wheel", outdir=tmp_path / "dist", cwd=tree)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "keyd/_migrations/versions/0001_initial.py" in names
    assert "keyd/_migrations/versions/0002_alert_rung_expiry.py" in names
    assert "keyd/_migrations/env.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
