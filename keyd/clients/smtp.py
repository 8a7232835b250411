"""SMTP: the only smtplib user in keyd (docs/architecture.md rule 1).

``SmtpClient`` connects lazily, keeps one connection for a batch of
messages and reports every failure as ``MailError`` with ``stage`` =
``connect`` | ``tls`` | ``auth`` | ``send`` and a message that says exactly
what failed: ``SMTP smtp.example:587: authentication failed (535 ...)``.

Security (``[alerts.email] security``):

* ``ssl``: implicit TLS from the first byte (``SMTP_SSL``, usually 465);
* ``starttls``: plain connect, then STARTTLS is *required* (a server that
  does not offer it is an error, never a silent downgrade);
* ``none``: no TLS, only allowed without credentials: keyd refuses to send
  a password in clear.

Certificates are verified with the system store, or ``ca_file`` /
``ssl_context`` (tests trust their self-signed certificate that way). The
password is a ``Secret``; it is revealed only to ``login`` and stripped
from any server text that reaches an error message.

``timeout`` is a *total* deadline (``keyd.clients.deadline``) for the
connection (connect, greeting, STARTTLS, AUTH) and again for each message
(the whole SMTP transaction): a server that drips its replies is cut off.
"""

from __future__ import annotations

import logging
import smtplib  # noqa: TID251 (this is the one smtplib user)
import ssl
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

from keyd.clients.deadline import current, shutdown_socket, within
from keyd.config import EmailConfig
from keyd.errors import MailError
from keyd.redact import REDACTED, scrub

log = logging.getLogger(__name__)

SECURITY_MODES = ("ssl", "starttls", "none")
T = TypeVar("T")


class MailSender(Protocol):
    """What the outbox needs from a mail client (tests may fake it)."""

    def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        """Send one message to ``recipients``; raise ``MailError``."""

    def close(self) -> None:
        """Close the connection, if any. Never raises."""


class SmtpClient:
    """One SMTP server from ``EmailConfig``; use as a context manager."""

    def __init__(
        self,
        config: EmailConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: Path | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if config.security not in SECURITY_MODES:
            raise MailError(
                f"{self._where(config)}: unknown security {config.security!r} "
                '(use "ssl", "starttls" or "none")',
                stage="connect",
                retryable=False,
            )
        self.config = config
        self._ssl_context = ssl_context
        self._ca_file = ca_file
        self._local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None

    @staticmethod
    def _where(config: EmailConfig) -> str:
        return f"SMTP {config.host}:{config.port}"

    @property
    def where(self) -> str:
        """``SMTP host:port`` (the prefix of every error message)."""
        return self._where(self.config)

    def describe(self) -> str:
        """``host:port (starttls)`` for the CLI."""
        return f"{self.config.host}:{self.config.port} ({self.config.security})"

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            cafile = str(self._ca_file) if self._ca_file else None
            self._ssl_context = ssl.create_default_context(cafile=cafile)
        return self._ssl_context

    def _fail(self, stage: str, what: str, *, retryable: bool) -> MailError:
        return MailError(f"{self.where}: {what}", stage=stage, retryable=retryable)

    def _server_text(self, code: int, raw: bytes | str) -> str:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if self.config.password is not None and self.config.password.reveal():
            text = text.replace(self.config.password.reveal(), REDACTED)
        text = " ".join(scrub(text).split())[:200]
        return f"{code} {text}".strip()

    def _bounded(self, stage: str, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the total deadline; a failure caused by the
        deadline says so instead of the socket error it provoked."""
        seconds = self.config.timeout.total_seconds()
        with within(seconds, f"{self.where} {what}") as deadline:
            try:
                result = fn()
                if not deadline.expired:  # a cut reply can parse as a complete one
                    return result
            except MailError:
                if not deadline.expired:
                    raise
            self.close()
            raise self._fail(stage, f"no complete answer within {seconds:g}s ({what})", retryable=True)

    def connect(self) -> None:
        """Connect, secure and authenticate (no-op when already connected)."""
        if self._smtp is None:
            self._bounded("connect", "connecting", self._connect)

    def _connect(self) -> None:
        cfg = self.config
        if cfg.password is not None and cfg.security == "none":
            raise self._fail(
                "auth",
                'refusing to send the password without TLS (security = "none"); use "starttls" or "ssl"',
                retryable=False,
            )
        smtp = self._open()
        try:
            if cfg.security == "starttls":
                self._starttls(smtp)
            if cfg.username:
                self._login(smtp)
        except BaseException:
            _quietly_close(smtp)
            raise
        self._smtp = smtp
        log.debug("connected to %s (%s)", self.where, cfg.security)

    def _open(self) -> smtplib.SMTP:
        cfg = self.config
        timeout = cfg.timeout.total_seconds()
        if cfg.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                local_hostname=self._local_hostname, timeout=timeout, context=self._context()
            )
        else:
            smtp = smtplib.SMTP(local_hostname=self._local_hostname, timeout=timeout)
        # what SMTP(host) would set: STARTTLS checks the certificate against it
        smtp._host = cfg.host  # type: ignore[attr-defined]
        deadline = current()
        if deadline is not None:  # wakes a read blocked on a dripping server
            deadline.abort_on(lambda: shutdown_socket(smtp.sock))
        try:
            smtp.connect(cfg.host, cfg.port)
            return smtp
        except ssl.SSLError as exc:
            raise self._fail("tls", f"TLS handshake failed ({exc.reason or exc})", retryable=False) from None
        except smtplib.SMTPException as exc:
            raise self._fail("connect", f"connection refused by server ({exc})", retryable=True) from None
        except OSError as exc:
            raise self._fail("connect", f"cannot connect ({exc.strerror or exc})", retryable=True) from None

    def _starttls(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise self._fail(
                    "tls",
                    'server does not offer STARTTLS (security = "starttls" requires it)',
                    retryable=False,
                )
            smtp.starttls(context=self._context())
            smtp.ehlo()
        except MailError:
            raise
        except ssl.SSLError as exc:
            raise self._fail("tls", f"TLS handshake failed ({exc.reason or exc})", retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            text = self._server_text(exc.smtp_code, exc.smtp_error)
            raise self._fail("tls", f"STARTTLS refused ({text})", retryable=exc.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise self._fail("tls", f"STARTTLS failed ({type(exc).__name__})", retryable=True) from None

    def _login(self, smtp: smtplib.SMTP) -> None:
        cfg = self.config
        if cfg.password is None:
            raise self._fail(
                "auth", f"username {cfg.username!r} is set but no password (password_file)", retryable=False
            )
        try:
            smtp.login(cfg.username or "", cfg.password.reveal())
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(
                "auth",
                f"authentication failed ({self._server_text(exc.smtp_code, exc.smtp_error)})",
                retryable=400 <= exc.smtp_code < 500,
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise self._fail(
                "auth", "server does not offer AUTH (check security and port)", retryable=False
            ) from None
        except smtplib.SMTPException as exc:
            raise self._fail(
                "auth", f"authentication failed ({type(exc).__name__})", retryable=False
            ) from None
        except OSError as exc:
            raise self._fail("auth", f"connection lost during login ({exc})", retryable=True) from None

    def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        """Send ``message`` from ``email.from`` to ``recipients``.

        Raises ``MailError``; retryable for 4xx answers and lost connections,
        not for 5xx (the connection is dropped after any failure).
        """
        self.connect()
        self._bounded("send", "sending", lambda: self._send(message, recipients))

    def _send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        assert self._smtp is not None
        smtp = self._smtp
        deadline = current()
        if deadline is not None:
            deadline.abort_on(lambda: shutdown_socket(smtp.sock))
        try:
            refused = self._smtp.send_message(
                message, from_addr=self.config.from_addr, to_addrs=list(recipients)
            )
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{addr}: {self._server_text(code, text)}" for addr, (code, text) in exc.recipients.items()
            )
            raise self._fail(
                "send", f"recipient refused ({detail})", retryable=all(400 <= c < 500 for c in codes)
            ) from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise self._fail(
                "send",
                f"message refused ({self._server_text(exc.smtp_code, exc.smtp_error)})",
                retryable=exc.smtp_code < 500,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise self._fail(
                "send", f"connection lost while sending ({type(exc).__name__})", retryable=True
            ) from None
        if refused:
            log.warning("%s: some recipients refused: %s", self.where, ", ".join(refused))

    def close(self) -> None:
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            _quietly_close(smtp)


def _quietly_close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
