"""Small input defects through the real CLI, on SQLite and PostgreSQL:
expiry instants keep their fraction in every output (``12:00:00.5Z`` is
not ``12:00:00Z``: at 12:00:00 the key is still usable), a mail subject
counts days as the table does, and a file that is not a database is a
configuration error (exit 4), not "unavailable, retry later" (6)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from keyd.errors import EXIT_CONFIG
from tests.support.daemon import write_config
from tests.support.keys import make_key_file

NOW = datetime.now(UTC).replace(microsecond=0)


def test_fractional_expiry_is_printed_as_it_is(
    tmp_path: Path, db_url: str, migrated_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    expires = (NOW + timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=500_000)
    made = make_key_file(keys, key_id="100", user_id="svc", expires_at=expires)
    stamp = expires.strftime("%Y-%m-%dT12:00:00.5Z")
    config = write_config(tmp_path / "keyd.toml", db_url=db_url, keys=keys)

    assert main(["inspect", "--json", str(made.path)]) == 0
    assert json.loads(capsys.readouterr().out)["keys"][0]["expires_at"] == stamp
    assert main(["--config", str(config), "scan"]) == 0
    capsys.readouterr()
    at = expires.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")  # 12:00:00, still usable
    assert main(["--config", str(config), "status", "--json", "--at", at]) == 0
    (row,) = json.loads(capsys.readouterr().out)["keys"]
    assert row["expires_at"] == stamp and row["status"] == "active"
    assert row["seconds_left"] == 1
    assert main(["--config", str(config), "status"]) == 0
    assert stamp in capsys.readouterr().out
    main(["--config", str(config), "check", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert [p["expires_at"] for p in doc["problems"]] == [stamp]


def test_a_file_that_is_not_a_database_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "keyd.db"
    junk.write_bytes(b"this is not a SQLite database, only some text " * 20)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    config = write_config(tmp_path / "keyd.toml", db_url=f"sqlite:///{junk}", keys=keys)
    for command in (["status"], ["scan"], ["db", "current"]):
        assert main(["--config", str(config), *command]) == EXIT_CONFIG
        err = capsys.readouterr().err
        assert "is not a usable SQLite database" in err and str(junk) in err
