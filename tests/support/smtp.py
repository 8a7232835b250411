"""A real SMTP server on loopback for alert tests (aiosmtpd).

``SmtpServer`` collects every accepted message, parsed with the ``email``
package (``policy.default``), in ``messages``; ``stop()``/``start()``
simulate an outage on the same port. Options:

- ``starttls=True``: offers STARTTLS with a fresh self-signed certificate
  (generated with cryptography); ``client_context()`` trusts it;
- ``implicit_tls=True``: TLS from the first byte (``security = "ssl"``);
- ``users={"keyd": "pw"}``: AUTH required (only after TLS when TLS is on);
- ``reject_with="451 4.3.0 try later"``: answer DATA with that reply.

Fixture ``smtp_server`` (plain, no auth) is registered via
``tests/integration/alerts/conftest.py``; the server and its event loop are
closed at teardown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyd test smtp")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        if self.server.reject_with:
            return self.server.reject_with
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.server.lock:
            self.server.messages.append(Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), msg, raw))
        return "250 OK"


class SmtpServer:
    def __init__(
        self,
        directory: Path,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.host = HOST
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.reject_with: str | None = None
        self.users = users
        self.starttls, self.implicit_tls = starttls, implicit_tls
        self.cert_path: Path | None = None
        self._server_ctx: ssl.SSLContext | None = None
        if starttls or implicit_tls:
            self.cert_path, key_path = self_signed(directory)
            self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._server_ctx.load_cert_chain(self.cert_path, key_path)
        self._controller: Controller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate."""
        assert self.cert_path is not None
        return ssl.create_default_context(cafile=str(self.cert_path))

    def _authenticate(
        self, server: SMTPProtocol, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users is not None
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok, handled=False)

    def start(self) -> None:
        assert self._controller is None, "already running"
        kwargs: dict[str, Any] = {}
        if self.starttls:
            kwargs.update(tls_context=self._server_ctx, require_starttls=True)
        if self.implicit_tls:
            kwargs.update(ssl_context=self._server_ctx)
        if self.users is not None:
            # aiosmtpd cannot tell that an implicit-TLS session is encrypted: there
            # it offers AUTH without requiring it (requiring it warns).
            kwargs.update(
                authenticator=self._authenticate, auth_required=self.starttls, auth_require_tls=self.starttls
            )
        self._loop = asyncio.new_event_loop()
        self._controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            loop=self._loop,
            server_hostname="localhost",
            ready_timeout=5,
            **kwargs,
        )
        self._controller.start()

    def stop(self) -> None:
        """Stop listening (an outage); ``start()`` resumes on the same port."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def inbox(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """A plain SMTP server (no TLS, no AUTH) on a free loopback port."""
    with SmtpServer(tmp_path) as server:
        yield server
