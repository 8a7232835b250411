"""Odd key files through the real CLI, a real SMTP server and the test
issuer, on SQLite and PostgreSQL: each becomes one ``invalid`` location (or
a plainly expired key) with a message naming the file, and every other key
is still scanned, judged and mailed.

Before: a ``keyId`` with CR/LF stopped all mail; Go's zero time
``0001-01-01T00:00:00Z`` (or the bare date ``0001-01-01`` in a zone east of
UTC) raised OverflowError in ``inspect``/``status``/``check`` and in every
evaluate stage; a file name that is not UTF-8, a ``userId`` with a lone
surrogate or a NUL aborted the whole scan's transaction (PostgreSQL and
SQLite alike) without even marking the source failed."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from tests.support.daemon import write_config
from tests.support.issuer import IssuerServer
from tests.support.keys import make_key_file
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.smtp]

NOW = datetime.now(UTC)
GOOD = "292834923480293"


def _keys(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    return keys


def _odd(keys: Path, name: str | bytes, **fields: object) -> None:
    data = dict(make_key_file(None).data, **fields)
    target = os.path.join(os.fsencode(keys), name if isinstance(name, bytes) else name.encode())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)


def _config(
    tmp_path: Path, db_url: str, keys: Path, issuer: IssuerServer, smtp: SmtpServer, head: str = ""
) -> Path:
    return write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        head=head,
        issuer_url=issuer.url,
        smtp=(smtp.host, smtp.port),
        extra='[alerts]\nthresholds = ["14d", "7d"]\n',
    )


def _status(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--json"]) == 0
    return list(json.loads(capsys.readouterr().out)["keys"])


def test_text_the_database_cannot_store_is_one_invalid_location(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = _keys(tmp_path)
    make_key_file(
        keys, key_id=GOOD, user_id="svc-good", register_with=issuer, expires_at=NOW + timedelta(days=5)
    )
    _odd(keys, b"bad\xff.json")
    _odd(keys, "surrogate.json", userId="\udb37")
    _odd(keys, "nul.json", userId="svc\x00x")
    _odd(keys, "crlf.json", keyId="555\r\nBcc: victim@example.org")
    config = _config(tmp_path, db_url, keys, issuer, smtp_server)

    assert main(["--config", str(config), "scan"]) == 0  # the source did not fail
    out = capsys.readouterr().out
    assert "1 key (1 new, 0 changed, 0 missing, 4 invalid)" in out
    rows = _status(config, capsys)
    assert [r["key_id"] for r in rows if r["key_id"]] == [GOOD]
    errors = {
        str(loc["ref"]).rsplit("/", 1)[1]: loc["error"]
        for r in rows
        if not r["key_id"]
        for loc in r["locations"]
    }  # type: ignore[attr-defined]
    assert errors == {
        "bad\\xff.json": "the file name is not valid UTF-8 (rename the file)",
        "surrogate.json": "field 'userId' contains the control or non-text character U+DB37; "
        "ZITADEL ids are plain text",
        "nul.json": "field 'userId' contains the control or non-text character U+0000; "
        "ZITADEL ids are plain text",
        "crlf.json": "field 'keyId' contains the control or non-text character U+000D; "
        "ZITADEL ids are plain text",
    }

    main(["--config", str(config), "check"])
    out = capsys.readouterr().out
    assert "\r" not in out and "\x00" not in out
    subjects = [str(r.message["Subject"]) for r in smtp_server.inbox()]
    assert subjects == [f"[keyd WARNING] key {GOOD} of user svc-good expires in 4 days"]


@pytest.mark.parametrize(
    "expiry, head",
    [
        ("0001-01-01T00:00:00Z", ""),
        ("0001-01-01", 'timezone = "Asia/Tokyo"\n'),
        ("0001-01-01", 'timezone = "America/New_York"\n'),
    ],
)
def test_go_zero_time_is_an_expired_key_not_a_traceback(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    expiry: str,
    head: str,
) -> None:
    keys = _keys(tmp_path)
    make_key_file(
        keys, key_id=GOOD, user_id="svc-good", register_with=issuer, expires_at=NOW + timedelta(days=5)
    )
    _odd(keys, "zero.json", keyId="100", userId="svc-zero", expirationDate=expiry)
    config = _config(tmp_path, db_url, keys, issuer, smtp_server, head)

    zone = head.split('"')[1] if head else "UTC"
    assert main(["inspect", "--tz", zone, "--json", str(keys / "zero.json")]) == 0
    (row,) = json.loads(capsys.readouterr().out)["keys"]
    assert row["expiry_status"] == "expired" and row["expires_at"].startswith("0001-01-01T")

    assert main(["--config", str(config), "check"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("KEYD CRITICAL - 1 expired")
    assert "key 100 (svc-zero) expired at 0001-01-01T" in out
    rows = {r["key_id"]: r for r in _status(config, capsys)}
    assert rows["100"]["status"] == "expired"
    assert rows["100"]["last_usable_day"] == "0001-01-01"
    assert rows[GOOD]["expiry_status"] == "expiring"
    subjects = sorted(str(r.message["Subject"]) for r in smtp_server.inbox())
    assert subjects == [
        "[keyd CRITICAL] key 100 of user svc-zero has expired",
        f"[keyd WARNING] key {GOOD} of user svc-good expires in 4 days",
    ]
    assert main(["--config", str(config), "status"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_file_name_cannot_forge_a_nagios_line(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = _keys(tmp_path)
    forged = keys / "x.json\nKEYD OK - all keys fine | keys=1\n\x1b[2K.json"
    forged.write_text("{not json")
    forged.chmod(0o600)
    config = _config(tmp_path, db_url, keys, issuer, smtp_server)
    for command in (["check"], ["status"], ["scan"]):
        capsys.readouterr()
        main(["--config", str(config), *command])
        out = capsys.readouterr().out
        assert "\x1b" not in out
        assert not any(line.startswith("KEYD OK") for line in out.splitlines()), out
    assert main(["--config", str(config), "check"]) == 2
    out = capsys.readouterr().out
    assert "x.json\\nKEYD OK - all keys fine | keys=1\\n\\x1b[2K.json (directory:" in out
