"""keyd db upgrade → keyd scan → keyd status, end to end on SQLite with a
real directory of key files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from tests.support.keys import NEVER, make_key_file, rsa_key

SOON = datetime.now(UTC) + timedelta(days=10)
LATER = datetime.now(UTC) + timedelta(days=200)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o700)
    config = tmp_path / "keyd.toml"
    config.write_text(f"""
timezone = "Europe/Zurich"
[database]
url = "sqlite:///{tmp_path / "keyd.db"}"
[[sources]]
type = "directory"
path = "{keys}"
""")
    return config, keys


def run(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_scan_then_status(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config, keys = setup
    caplog.set_level("DEBUG")
    shared = rsa_key()
    a = make_key_file(keys, key_id="100", user_id="svc-a", expires_at=LATER, private_key=shared)
    make_key_file(
        keys / "copies",
        key_id="100",
        user_id="svc-a",
        expires_at=LATER,
        private_key=shared,
        filename="a-copy.json",
    )
    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=SOON)
    make_key_file(keys, key_id="300", user_id="svc-c", expires_at=NEVER)
    make_key_file(keys, key_id="400", user_id="svc-d", expires_at=None)
    (keys / "junk.json").write_text("not json")
    assert run(config, "scan") == EXIT_CONFIG  # schema missing: refuses
    assert "keyd db upgrade" in capsys.readouterr().err
    assert run(config, "db", "upgrade") == EXIT_OK
    capsys.readouterr()

    assert run(config, "scan") == EXIT_OK
    out = capsys.readouterr().out.strip()
    assert out == "1 source, 4 keys (4 new, 0 changed, 0 missing, 1 invalid)"

    assert run(config, "status") == EXIT_OK
    text = capsys.readouterr().out
    assert "LAST DAY (Europe/Zurich)" in text
    assert "never" in text and "unknown" in text and "expiring" in text
    assert "junk.json: INVALID: is not valid JSON" in text
    assert "PRIVATE KEY" not in text

    assert run(config, "status", "--json") == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == "keyd.status/1" and document["at"].endswith("Z")
    by_id = {r["key_id"]: r for r in document["keys"]}
    assert set(by_id) == {"100", "200", "300", "400", None}
    assert by_id["100"]["principal"] == "svc-a" and len(by_id["100"]["locations"]) == 2
    assert by_id["100"]["status"] == "active" and by_id["100"]["expiry_status"] == "valid"
    assert by_id["200"]["expiry_status"] == "expiring"
    assert by_id["300"]["expiry_status"] == "never" and by_id["300"]["seconds_left"] is None
    assert by_id["400"]["expiry_status"] == "unknown"
    assert by_id[None]["locations"][0]["error"] == "is not valid JSON (line 1)"
    assert set(by_id["100"]) == {
        "key_id",
        "kind",
        "principal",
        "fingerprint",
        "algorithm",
        "status",
        "expiry_status",
        "expires_at",
        "last_usable_day",
        "seconds_left",
        "days_left",
        "locations",
        "last_probe_at",
        "last_probe_outcome",
        "last_ok_at",
        "last_error",
        "held",
        "expiry_source",
        "diagnosis",
        "zitadel_created_at",
    }

    # --at in the future: key 200 has expired by then (date = midnight in Zurich)
    when = (SOON + timedelta(days=2)).date().isoformat()
    assert run(config, "status", "--json", "--at", when) == EXIT_OK
    rows = {r["key_id"]: r for r in json.loads(capsys.readouterr().out)["keys"]}
    assert rows["200"]["status"] == "expired" and rows["200"]["seconds_left"] < 0
    assert run(config, "status", "--at", "yesterday") == EXIT_CONFIG
    capsys.readouterr()

    # rescan: a file removed, one changed
    assert a.path is not None
    a.path.unlink()
    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=LATER)
    assert run(config, "scan") == EXIT_OK
    assert capsys.readouterr().out.strip() == "1 source, 4 keys (0 new, 1 changed, 0 missing, 1 invalid)"
    assert "PRIVATE KEY" not in caplog.text and "BEGIN" not in caplog.text
    for db in config.parent.glob("keyd.db*"):  # the database and its WAL
        assert b"PRIVATE KEY" not in db.read_bytes()


def test_failed_source_exits_6_and_keeps_keys(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, keys = setup
    make_key_file(keys, key_id="100", user_id="svc-a", expires_at=LATER)
    assert run(config, "db", "upgrade") == EXIT_OK
    assert run(config, "scan") == EXIT_OK
    capsys.readouterr()
    keys.rename(tmp_path / "moved")
    assert run(config, "scan") == EXIT_UNAVAILABLE
    out = capsys.readouterr().out.strip()
    assert out == (
        f"1 source, 1 key (0 new, 0 changed, 0 missing, 0 invalid); source "
        f"directory:{keys} failed: directory {keys}: does not exist"
    )
    assert run(config, "status", "--json") == EXIT_OK
    rows = json.loads(capsys.readouterr().out)["keys"]
    assert rows[0]["status"] == "active"  # an outage never makes keys missing
    assert run(config, "status") == EXIT_OK
    assert "failing (1 scans in a row)" in capsys.readouterr().out
