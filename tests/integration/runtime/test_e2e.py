"""The whole of keyd in one process, as an operator runs it:
the real ``keyd run`` with a config file, against real PostgreSQL,
OpenBao, SMTP and the authorization server, under a fake systemd notify
socket. READY, a watchdog ping, a delivered alert, a token written to
Vault, a SIGHUP reload that picks up a new key, and a clean SIGTERM.
Every line it logged and every row it stored is checked for secrets."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from keyd.store.migrate import upgrade
from tests.support.daemon import (
    Notifications,
    free_port,
    start_keyd,
    stop,
    wait_until,
    write_config,
)
from tests.support.db import postgres_database
from tests.support.issuer import IssuerServer
from tests.support.keys import make_key_file
from tests.support.openbao import OpenBao, openbao  # noqa: F401
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.openbao,
    pytest.mark.issuer,
    pytest.mark.smtp,
]
NOW = datetime.now(UTC)


def e2e_config(
    tmp_path: Path, db_url: str, keys: Path, issuer: IssuerServer, bao: OpenBao, smtp: SmtpServer, prefix: str
) -> Path:
    return write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        issuer_url=issuer.url,
        vault=(bao.addr, bao.root_token),
        tokens_path=f"{prefix}/tokens/{{principal}}",
        smtp=(smtp.host, smtp.port),
        http_port=free_port(),
        fast_ticks=True,
        head='timezone = "Europe/Zurich"\n',
        extra=f'[[sources]]\ntype = "vault"\nmount = "secret"\nprefix = "{prefix}/keys"\n'
        '[log]\nlevel = "DEBUG"\n',
    )


def test_keyd_run_end_to_end(
    tmp_path: Path,
    issuer: IssuerServer,
    openbao: OpenBao,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    prefix = f"e2e-{tmp_path.name[-8:]}"
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    expiring = make_key_file(
        keys, user_id="svc-expiring", expires_at=NOW + timedelta(days=5), register_with=issuer
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    in_vault = make_key_file(
        staging, user_id="svc-vault", expires_at=NOW + timedelta(days=200), register_with=issuer
    )
    openbao.kv_put(f"{prefix}/keys/vault-user", {"keyfile": in_vault.path.read_text()})
    notes = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "keyd.log"
    with postgres_database() as db_url:
        upgrade(db_url)
        config = e2e_config(tmp_path, db_url, keys, issuer, openbao, smtp_server, prefix)
        proc = start_keyd(config, notes, log)
        try:
            ready = notes.wait_for("READY=1", timeout=30)
            assert "STATUS=leader: 2 keys, 1 expiring" in ready, ready
            notes.wait_for("WATCHDOG=1", timeout=10)

            # the alert for the key expiring in 5 days arrives, once
            wait_until(lambda: len(smtp_server.inbox()) >= 1, what="the alert mail")
            mail = smtp_server.inbox()[0].message
            assert expiring.key_id in str(mail["Subject"]) and "WARNING" in str(mail["Subject"])

            # both service users get a token in Vault, marked as keyd's
            def tokens_written() -> bool:
                try:
                    return all(
                        openbao.kv_metadata(f"{prefix}/tokens/{user}")
                        for user in ("svc-expiring", "svc-vault")
                    )
                except Exception:  # not written yet: hvac's InvalidPath
                    return False

            wait_until(tokens_written, what="tokens in Vault")
            secret = openbao.client.secrets.kv.v2.read_secret_version(
                path=f"{prefix}/tokens/svc-vault", mount_point="secret", raise_on_deleted_version=True
            )["data"]
            assert secret["data"]["access_token"] in issuer.issued_tokens
            assert secret["data"]["key_id"] == in_vault.key_id
            assert secret["metadata"]["custom_metadata"]["managed-by"] == "keyd"

            # SIGHUP: reload and re-scan; a key added meanwhile appears
            fresh = make_key_file(
                keys, user_id="svc-new", expires_at=NOW + timedelta(days=2), register_with=issuer
            )
            proc.send_signal(signal.SIGHUP)
            notes.wait_for("RELOADING=1", timeout=10)
            ready = notes.wait_for("READY=1", timeout=20)
            assert "3 keys" in ready, ready
            wait_until(
                lambda: any(fresh.key_id in str(r.message["Subject"]) for r in smtp_server.inbox()),
                what="the new key's alert",
            )

            proc.send_signal(signal.SIGTERM)
            notes.wait_for("STOPPING=1", timeout=10)
            assert proc.wait(timeout=25) == 0
        finally:
            stop(proc)
            notes.close()
        subjects = [str(r.message["Subject"]) for r in smtp_server.inbox()]
        ids = [str(r.message["Message-ID"]) for r in smtp_server.inbox()]
        assert len(ids) == len(set(ids)) == 2, subjects  # each alert exactly once
        dump = dump_database(db_url)
    secrets = [*issuer.issued_tokens, "PRIVATE KEY", "eyJ", openbao.root_token]
    logged = log.read_text()
    assert "Traceback" not in logged
    mails = "".join(r.raw.decode(errors="replace") for r in smtp_server.inbox())
    for needle in secrets:
        assert needle not in logged, f"secret in the log: {needle[:8]}…"
        assert needle not in dump, f"secret in the database: {needle[:8]}…"
        assert needle not in mails, f"secret in a mail: {needle[:8]}…"


def dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            tables = (
                conn.execute(text("select tablename from pg_tables where schemaname = 'public'"))
                .scalars()
                .all()
            )
            return "\n".join(
                str(row) for table in tables for row in conn.execute(text(f'select * from "{table}"'))
            )
    finally:
        engine.dispose()
