"""``keyd config check``: every dependency contacted, every problem listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.store.migrate import upgrade
from tests.support.issuer import IssuerServer
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.smtp]


def write(tmp_path: Path, issuer_url: str, smtp: SmtpServer, keys: Path) -> Path:
    config = tmp_path / "keyd.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{tmp_path / "keyd.db"}"
[issuer]
url = "{issuer_url}"
timeout = "2s"
[[sources]]
type = "directory"
path = "{keys}"
[alerts.email]
host = "{smtp.host}"
port = {smtp.port}
security = "none"
from = "keyd@example.org"
to = ["ops@example.org"]
""")
    return config


def test_all_dependencies_reachable(
    tmp_path: Path,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "keys").mkdir()
    config = write(tmp_path, issuer.url, smtp_server, tmp_path / "keys")
    upgrade(f"sqlite:///{tmp_path / 'keyd.db'}")
    assert main(["--config", str(config), "config", "check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"config {config}: valid"
    assert [line.split()[0] for line in out[1:]] == ["ok"] * 4, out
    assert smtp_server.inbox() == []  # connected, sent nothing


def test_every_problem_is_listed(
    tmp_path: Path,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    smtp_server.stop()
    config = write(tmp_path, "http://127.0.0.1:9", smtp_server, tmp_path / "missing")
    assert main(["--config", str(config), "config", "check", "--json"]) == 6
    checks = {c["name"].split()[0]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert not any(c["ok"] for c in checks.values()), checks
    assert "keyd db upgrade" in checks["database"]["detail"]
    assert "is not a directory" in checks["source"]["detail"]
