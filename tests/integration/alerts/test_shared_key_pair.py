"""Alerts belong to a key id, not to a key pair: ZITADEL accepts a
caller-supplied public key, so one pair can back several key ids. Measured
before: the second key id's alert was resolved by the first one's ladder
and never mailed, on every run. Through the real parts: key files in a
directory, ``keyd check`` on SQLite and PostgreSQL, aiosmtpd."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.cli import main
from keyd.store.models import Alert
from tests.support.daemon import write_config
from tests.support.db import migrated_engine  # noqa: F401
from tests.support.keys import make_key_file, rsa_key
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = pytest.mark.smtp


def test_two_key_ids_sharing_one_key_pair_each_get_their_own_mail(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:  # noqa: F811
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    config = write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        smtp=(smtp_server.host, smtp_server.port),
        extra='[alerts]\nthresholds = ["7d"]\n',
    )
    pair = rsa_key()
    expires = datetime.now(UTC) + timedelta(days=5, hours=2)  # "5 days" however slow the runs are
    for key_id, user in (("301", "svc-a"), ("302", "svc-b")):
        make_key_file(keys, key_id=key_id, user_id=user, private_key=pair, expires_at=expires)

    for _ in range(2):  # the second run must neither repeat nor lose one
        assert main(["--config", str(config), "check"]) == 1
    capsys.readouterr()

    subjects = sorted(str(r.message["Subject"]) for r in smtp_server.inbox())
    assert len(subjects) == 2
    assert "key 301 of user svc-a expires in 5 days" in subjects[0]
    assert "key 302 of user svc-b expires in 5 days" in subjects[1]
    with Session(migrated_engine) as session:
        rows = list(session.scalars(select(Alert).order_by(Alert.about)))
    assert [(a.about, a.kind, a.resolved_at) for a in rows] == [
        ("key:301", "expiring", None),
        ("key:302", "expiring", None),
    ]
    assert rows[0].fingerprint == rows[1].fingerprint  # the shared pair, as an attribute
