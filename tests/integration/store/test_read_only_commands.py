"""Commands that only look (``keyd db current``, ``keyd status``,
``keyd config check``), and those that work on an existing schema
(``keyd check``, ``keyd run``, ``keyd rotations``), never create a database:
a SQLite path that does not exist stays absent, directory included, and the
command says to run ``keyd db upgrade`` (exit 4; config check reports it as
its database line, exit 6; check as UNKNOWN, exit 3). Only ``keyd db
upgrade`` creates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.cli import main


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "state" / "keyd.db"
    config = tmp_path / "keyd.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    return config, db


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["db", "current"], 4),
        (["status"], 4),
        (["status", "--json"], 4),
        (["config", "check"], 6),
        (["scan"], 4),
        (["check"], 3),
        (["check", "--json"], 3),
        (["run"], 4),
        (["rotations"], 4),
    ],
)
def test_looking_creates_nothing(
    setup: tuple[Path, Path], args: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config, db = setup
    assert main(["--config", str(config), *args]) == code
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert f"{db} does not exist: run " in said and "keyd db upgrade" in said  # its path, and what to do
    assert not db.parent.exists()


def test_upgrade_creates_and_then_current_reads(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, db = setup
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert db.is_file()
    assert main(["--config", str(config), "db", "current"]) == 0
    assert "(head)" in capsys.readouterr().out
