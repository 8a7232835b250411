"""``keyd check`` with every stage live: the test issuer (probes), a real
SMTP server (outbox), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from tests.support.issuer import IssuerServer
from tests.support.keyfiles import PEM_MARKER
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.smtp]

NOW = datetime.now(UTC)


@pytest.fixture
def config(tmp_path: Path, db_url: str, migrated_engine: Engine, issuer: IssuerServer,
           smtp_server: SmtpServer) -> Path:  # noqa: F811
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    path = tmp_path / "keyd.toml"
    path.write_text(f"""
[database]
url = "{db_url}"
[issuer]
url = "{issuer.url}"
timeout = "2s"
[[sources]]
type = "directory"
path = "{keys}"
[alerts]
thresholds = ["14d", "7d"]
[alerts.email]
host = "{smtp_server.host}"
port = {smtp_server.port}
security = "none"
from = "keyd@example.org"
to = ["ops@example.org"]
""")
    return path


def check(config: Path, *args: str) -> int:
    return main(["--config", str(config), "check", *args])


def test_full_cycle_probes_alerts_and_mails_once(
        config: Path, issuer: IssuerServer, smtp_server: SmtpServer,  # noqa: F811
        migrated_engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    keys = config.parent / "keys"
    make_key_file(keys, key_id="100", user_id="svc-a", register_with=issuer,
                  expires_at=NOW + timedelta(days=5, hours=2))

    assert check(config, "--dry-run", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]] == ["scan", "evaluate", "probe", "outbox"]
    assert any("would send email to ops@example.org" in line
               for line in doc["skipped_side_effects"])
    assert smtp_server.inbox() == []  # dry run: nothing sent
    assert "100" not in dump_all(migrated_engine)  # ... and nothing kept

    assert check(config) == 1
    assert capsys.readouterr().out.startswith("KEYD WARNING - 1 key expiring in 5d")
    assert len(smtp_server.inbox()) == 1
    assert check(config) == 1  # the same alert is never mailed twice
    assert len(smtp_server.inbox()) == 1
    capsys.readouterr()

    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=90))
    assert check(config) == 2  # not registered at the issuer: rejected
    out = capsys.readouterr().out
    assert out.startswith("KEYD CRITICAL - 0 expired, 1 rejected")
    assert PEM_MARKER not in out + dump_all(migrated_engine)


def test_issuer_down_alone_is_unknown(config: Path, issuer: IssuerServer,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    make_key_file(config.parent / "keys", key_id="300", user_id="svc-c", register_with=issuer,
                  expires_at=NOW + timedelta(days=200))
    issuer.fail_mode = "503"
    assert check(config) == 3
    assert capsys.readouterr().out.startswith("KEYD UNKNOWN - issuer unavailable")
