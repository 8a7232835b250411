"""keyd.clients.smtp against a real aiosmtpd server: ssl, starttls, none,
auth, and errors that say exactly which stage failed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from keyd.clients.smtp import SmtpClient
from keyd.config import EmailConfig
from keyd.errors import MailError
from keyd.redact import Secret
from tests.support.smtp import SmtpServer, free_port, smtp_server  # noqa: F401

pytestmark = pytest.mark.smtp
PASSWORD = "s3cret-pw-never-logged"


def _msg(subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "keyd@example.org"
    msg["To"] = "ops@example.org"
    msg["Message-ID"] = "<t-1@keyd>"
    msg.set_content("body")
    return msg


def _cfg(server: SmtpServer | None, **kw: object) -> EmailConfig:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port if server else free_port(),
        "from_addr": "keyd@example.org",
        "to": ("ops@example.org",),
        "security": "none",
        "timeout": timedelta(seconds=5),
    }
    base.update(kw)
    return EmailConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[SmtpServer]:
    with SmtpServer(tmp_path, starttls=True, users={"keyd": PASSWORD}) as server:
        yield server


def test_plain_send(smtp_server: SmtpServer) -> None:  # noqa: F811
    with SmtpClient(_cfg(smtp_server)) as client:
        client.send(_msg("one"), ["ops@example.org"])
        client.send(_msg("two"), ["dev@example.org"])  # one connection, two messages
    inbox = smtp_server.inbox()
    assert [r.message["Subject"] for r in inbox] == ["one", "two"]
    assert inbox[1].rcpt_tos == ("dev@example.org",)
    assert inbox[0].mail_from == "keyd@example.org"


def test_starttls_with_auth(tls_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tls_server, security="starttls", username="keyd", password=Secret(PASSWORD))
    with caplog.at_level(logging.DEBUG), SmtpClient(cfg, ssl_context=tls_server.client_context()) as client:
        client.send(_msg(), ["ops@example.org"])
    assert len(tls_server.inbox()) == 1
    assert PASSWORD not in caplog.text


def test_starttls_with_ca_file(tls_server: SmtpServer) -> None:
    cfg = _cfg(tls_server, security="starttls", username="keyd", password=Secret(PASSWORD))
    with SmtpClient(cfg, ca_file=tls_server.cert_path) as client:
        client.send(_msg(), ["ops@example.org"])
    assert len(tls_server.inbox()) == 1


def test_wrong_password_names_the_stage(tls_server: SmtpServer) -> None:
    cfg = _cfg(tls_server, security="starttls", username="keyd", password=Secret("nope-wrong"))
    with pytest.raises(MailError) as info, SmtpClient(cfg, ssl_context=tls_server.client_context()) as client:
        client.send(_msg(), ["ops@example.org"])
    err = info.value
    assert err.stage == "auth" and not err.retryable
    assert str(err).startswith(f"SMTP 127.0.0.1:{tls_server.port}: authentication failed (535")
    assert "nope-wrong" not in str(err)


def test_untrusted_certificate_is_a_tls_error(tls_server: SmtpServer) -> None:
    cfg = _cfg(tls_server, security="starttls", username="keyd", password=Secret(PASSWORD))
    with pytest.raises(MailError) as info, SmtpClient(cfg) as client:
        client.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "tls"
    assert "TLS handshake failed" in str(info.value)


def test_starttls_required_but_not_offered(smtp_server: SmtpServer) -> None:  # noqa: F811
    with pytest.raises(MailError) as info, SmtpClient(_cfg(smtp_server, security="starttls")) as c:
        c.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "tls"
    assert "does not offer STARTTLS" in str(info.value)


def test_implicit_tls(tmp_path: Path) -> None:
    with SmtpServer(tmp_path, implicit_tls=True, users={"keyd": PASSWORD}) as server:
        cfg = _cfg(server, security="ssl", username="keyd", password=Secret(PASSWORD))
        with SmtpClient(cfg, ssl_context=server.client_context()) as client:
            client.send(_msg(), ["ops@example.org"])
        assert len(server.inbox()) == 1


def test_refuses_password_in_clear(smtp_server: SmtpServer) -> None:  # noqa: F811
    cfg = _cfg(smtp_server, security="none", username="keyd", password=Secret(PASSWORD))
    with pytest.raises(MailError) as info, SmtpClient(cfg) as client:
        client.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "auth" and not info.value.retryable
    assert "refusing to send the password without TLS" in str(info.value)
    assert smtp_server.inbox() == []


def test_connection_refused_is_retryable() -> None:
    cfg = _cfg(None)
    with pytest.raises(MailError) as info, SmtpClient(cfg) as client:
        client.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "connect" and info.value.retryable
    assert str(info.value).startswith(f"SMTP 127.0.0.1:{cfg.port}: cannot connect")


def test_temporary_rejection_is_retryable(smtp_server: SmtpServer) -> None:  # noqa: F811
    smtp_server.reject_with = "451 4.3.0 try again later"
    with pytest.raises(MailError) as info, SmtpClient(_cfg(smtp_server)) as client:
        client.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "send" and info.value.retryable
    assert "451" in str(info.value)


def test_permanent_rejection_is_not_retryable(smtp_server: SmtpServer) -> None:  # noqa: F811
    smtp_server.reject_with = "554 5.6.0 no thanks"
    with pytest.raises(MailError) as info, SmtpClient(_cfg(smtp_server)) as client:
        client.send(_msg(), ["ops@example.org"])
    assert info.value.stage == "send" and not info.value.retryable


def test_outage_and_recovery(smtp_server: SmtpServer) -> None:  # noqa: F811
    smtp_server.stop()
    with pytest.raises(MailError), SmtpClient(_cfg(smtp_server)) as client:
        client.send(_msg(), ["ops@example.org"])
    smtp_server.start()
    with SmtpClient(_cfg(smtp_server)) as client:
        client.send(_msg(), ["ops@example.org"])
    assert len(smtp_server.inbox()) == 1
