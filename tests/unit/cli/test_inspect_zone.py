"""`keyd inspect`: bare dates in --tz, else the named config's timezone, else UTC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyd.cli import main
from tests.support.keys import make_key_file


def last_day(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, int]:
    assert main(list(args)) == 0
    row = json.loads(capsys.readouterr().out)["keys"][0]
    return row["last_usable_day"], row["seconds_left"]


def test_zone_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    key = make_key_file(tmp_path, expires_at=datetime(2027, 6, 1, 0, 0, tzinfo=UTC))
    at = ["--at", "2027-05-31"]
    # UTC: midnight 2027-05-31Z → one day left; last usable day May 31
    assert last_day(capsys, "inspect", "--json", *at, str(key.path)) == ("2027-05-31", 86400)
    # Zurich (CEST, +2): --at is 2027-05-30T22:00Z, the key dies at 02:00 local on June 1
    zurich = ("2027-06-01", 86400 + 7200)
    assert last_day(capsys, "inspect", "--json", "--tz", "Europe/Zurich", *at, str(key.path)) == zurich
    config = tmp_path / "keyd.toml"
    config.write_text('timezone = "Europe/Zurich"\n')
    assert last_day(capsys, "--config", str(config), "inspect", "--json", *at, str(key.path)) == zurich
    monkeypatch.setenv("KEYD_CONFIG", str(config))
    assert last_day(capsys, "inspect", "--json", *at, str(key.path)) == zurich
    assert last_day(capsys, "inspect", "--json", "--tz", "UTC", *at, str(key.path)) == ("2027-05-31", 86400)
