"""``keyd alert test --to ADDR`` through a real SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.cli import main
from tests.support.smtp import SmtpServer, free_port

pytestmark = pytest.mark.smtp
PASSWORD = "cli-smtp-password-xyz"


def _config(tmp_path: Path, port: int, security: str = "none", auth: bool = False) -> Path:
    lines = [
        "[alerts.email]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'security = "{security}"',
        'from = "keyd@example.org"',
        'to = ["ops@example.org"]',
        'timeout = "5s"',
    ]
    if auth:
        secret = tmp_path / "smtp-password"
        secret.write_text(PASSWORD + "\n")
        secret.chmod(0o600)
        lines += ['username = "keyd"', f'password_file = "{secret}"']
    path = tmp_path / "keyd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sends_a_test_message(
    tmp_path: Path, smtp_server: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, smtp_server.port)
    assert main(["--config", str(cfg), "alert", "test", "--to", "me@example.org"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"sent to me@example.org via 127.0.0.1:{smtp_server.port} (none)"
    (received,) = smtp_server.inbox()
    assert received.rcpt_tos == ("me@example.org",)
    assert received.message["Subject"] == "[keyd TEST] test message from keyd"
    assert received.message.get_content_type() == "multipart/alternative"


def test_starttls_with_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with SmtpServer(tmp_path, starttls=True, users={"keyd": PASSWORD}) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
        cfg = _config(tmp_path, server.port, "starttls", auth=True)
        assert main(["--config", str(cfg), "alert", "test", "--to", "me@example.org"]) == 0
        assert capsys.readouterr().out.strip().endswith("(starttls)")
        assert len(server.inbox()) == 1


def test_failure_exits_6_and_names_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    assert main(["--config", str(cfg), "alert", "test", "--to", "me@example.org"]) == 6
    err = capsys.readouterr().err
    assert err.startswith(f"keyd: SMTP 127.0.0.1:{port}: cannot connect")


def test_wrong_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with SmtpServer(tmp_path, starttls=True, users={"keyd": "other"}) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
        cfg = _config(tmp_path, server.port, "starttls", auth=True)
        assert main(["--config", str(cfg), "alert", "test", "--to", "me@example.org"]) == 6
        captured = capsys.readouterr()
        assert "authentication failed (535" in captured.err
        assert PASSWORD not in captured.err + captured.out
