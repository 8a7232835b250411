"""``keyd check`` end to end: real directory source, real database (SQLite
and PostgreSQL), the real CLI. Exit codes follow the Nagios convention."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from tests.support.db import checked_engine
from tests.support.keyfiles import PEM_MARKER
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file, rsa_key

NOW = datetime.now(UTC)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return directory


def write_config(tmp_path: Path, url: str, keys: Path, extra: str = "") -> Path:
    config = tmp_path / "keyd.toml"
    config.write_text(f"""
[database]
url = "{url}"
[[sources]]
type = "directory"
path = "{keys}"
[alerts]
thresholds = ["14d", "7d", "1d"]
{extra}
""")
    return config


# Nothing listens on port 9: a real send would fail loudly.
EMAIL = """[alerts.email]
host = "127.0.0.1"
port = 9
security = "none"
from = "keyd@example.org"
to = ["ops@example.org"]
"""


def check(config: Path, *args: str) -> int:
    return main(["--config", str(config), "check", *args])


def test_exit_codes_follow_the_inventory(
    migrated_engine: Engine, db_url: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, db_url, keys)
    make_key_file(keys, key_id="100", user_id="svc-a", expires_at=NOW + timedelta(days=200))
    assert check(config) == 0
    assert capsys.readouterr().out.startswith("KEYD OK - 1 key, none expiring within 14d | keys=1")

    make_key_file(
        keys,
        key_id="200",
        user_id="svc-b",
        expires_at=NOW + timedelta(days=5, hours=2),
        private_key=rsa_key(fresh=True),
    )
    assert check(config) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "KEYD WARNING - 1 key expiring in 5d, 0 rejected | keys=2 expiring=1 "
        "expired=0 rejected=0 invalid=0 missing=0 source_errors=0 unheld=0 gone=0"
    )
    assert out[1].startswith("WARNING: key 200 (svc-b) expires at ")

    (keys / "junk.json").write_text("not json")
    assert check(config) == 2
    out = capsys.readouterr().out
    assert out.startswith("KEYD CRITICAL - 0 expired, 0 rejected, 1 invalid, 1 expiring")
    assert "junk.json" in out

    (keys / "junk.json").unlink()
    os.chmod(keys, 0o000)  # the source fails; nothing else is wrong
    try:
        code = check(config, "--json")
    finally:
        os.chmod(keys, 0o700)
    doc = json.loads(capsys.readouterr().out)
    if os.geteuid() != 0:  # root reads through 0o000
        assert code == 1  # the expiring key is still a signal: warning wins over unknown
        assert doc["counts"]["source_errors"] == 1
    assert PEM_MARKER not in dump_all(migrated_engine)


def test_source_failure_alone_is_unknown(
    migrated_engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, db_url, tmp_path / "does-not-exist")
    assert check(config) == 3
    assert capsys.readouterr().out.startswith("KEYD UNKNOWN - source directory:")


def test_dry_run_changes_nothing_and_lists_skipped_effects(
    migrated_engine: Engine, db_url: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, db_url, keys, EMAIL)
    make_key_file(keys, key_id="300", user_id="svc-c", expires_at=NOW - timedelta(hours=1))
    before = dump_all(migrated_engine)
    assert check(config, "--dry-run", "--json") == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "keyd.check/1" and doc["dry_run"] is True
    assert doc["counts"]["expired"] == 1 and doc["status"] == "critical"
    assert [s["name"] for s in doc["stages"]] == ["scan", "evaluate", "outbox", "prune"]
    assert doc["skipped_side_effects"] == [
        "outbox: would send email to ops@example.org: " + doc["skipped_side_effects"][0].split(": ", 2)[2]
    ]
    assert "expired" in doc["skipped_side_effects"][0]
    assert dump_all(migrated_engine) == before  # nothing was written
    assert check(config) == 2  # for real this time: the key is now in the inventory
    capsys.readouterr()
    assert "300" in dump_all(migrated_engine)


def test_schema_behind_is_unknown_with_the_fix(
    db_url: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with checked_engine(db_url):
        pass
    assert check(write_config(tmp_path, db_url, keys)) == 3
    out = capsys.readouterr().out
    assert out.startswith("KEYD UNKNOWN - database ") and "keyd db upgrade" in out


def test_help_says_what_a_dry_run_does_not_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Nothing is sent to the issuer (a probe mints a real token)" in text
    assert "the verdict uses the stored results of the last real probe" in text
