"""``keyd rotate KEY_ID [--dry-run]`` and ``keyd rotations --json`` through
the real command line: a dry run changes nothing in ZITADEL, the file or
the database; the real run rotates and the history shows every step."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.sources.keyfile import read_keyfile
from keyd.store.migrate import upgrade
from tests.support.issuer import IssuerServer
from tests.support.keys import MadeKey, make_key_file
from tests.support.rotation_world import rotation_config
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401
from tests.support.zitadel_api import make_api_user

pytestmark = pytest.mark.issuer


def _setup(issuer: IssuerServer, tmp_path: Path, *, extra: str = "", after: str = "") -> tuple[MadeKey, Path]:
    """A key file due in 60 days, its user known to ZITADEL's key API, a
    manager credential, a migrated SQLite database and the keyd.toml
    (``extra`` in ``[rotation]``, ``after`` appended)."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    manager = make_api_user(issuer, tmp_path)
    assert manager.path is not None
    old = make_key_file(keys, register_with=issuer, expires_at=datetime.now(UTC) + timedelta(days=60))
    issuer.key_api.add_user(old.principal)
    db = f"sqlite:///{tmp_path / 'keyd.db'}"
    upgrade(db)
    config = tmp_path / "keyd.toml"
    config.write_text(
        rotation_config(db, keys, issuer, manager.path, tmp_path / "hook.log", extra=extra) + after
    )
    return old, config


def test_rotate_dry_run_then_real_then_history(issuer: IssuerServer, tmp_path: Path, capsys):
    old, config = _setup(issuer, tmp_path)
    assert old.path is not None
    before = old.path.read_bytes()

    assert main(["--config", str(config), "rotate", old.key_id, "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "keyd.rotate/1" and doc["dry_run"] is True
    [line] = doc["would"]
    assert line.startswith(f"would rotate key {old.key_id}") and "manual" in line
    assert old.path.read_bytes() == before
    assert {k.key_id for k in issuer.keys() if k.principal == old.principal} == {old.key_id}
    assert main(["--config", str(config), "rotations", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rotations"] == []  # nothing recorded

    # not due (60 days left), but keyd rotate ignores rotation.before
    assert main(["--config", str(config), "rotate", old.key_id]) == 0
    out = capsys.readouterr().out
    new_id = read_keyfile(old.path).key_id
    assert f"key {old.key_id} ({old.principal}): published → key {new_id}" in out
    assert main(["--config", str(config), "rotations", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rotations"]
    assert row["state"] == "published" and row["reason"] == "manual" and row["new_key_id"] == new_id
    assert [h["event"] for h in row["history"]] == [
        "planned",
        "registered",
        "proven",
        "published",
        "hook_done",
    ]
    assert main(["--config", str(config), "rotate", "nope"]) == 4
    assert "not in the inventory" in capsys.readouterr().err


@pytest.mark.smtp
def test_rotate_sends_its_alert_before_it_exits(
    issuer: IssuerServer,
    tmp_path: Path,
    smtp_server: SmtpServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator's ``keyd rotate`` announces the rotation now: the
    "rotated" mail (queued at publish when keyd does not retire old keys)
    goes out before the command exits, not at the daemon's next outbox
    tick or the next ``keyd check``; ``--json`` says so."""
    email = (
        f'\n[alerts.email]\nhost = "{smtp_server.host}"\nport = {smtp_server.port}\nsecurity = "none"\n'
        'from = "keyd@test.example"\nto = ["ops@test.example"]\n'
    )
    old, config = _setup(issuer, tmp_path, extra="retire = false", after=email)
    assert main(["--config", str(config), "rotate", old.key_id, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rotation"]["state"] == "published"
    assert doc["alerts"] == {"sent": 1, "failed": 0, "errors": []}
    (received,) = smtp_server.inbox()
    assert old.key_id in str(received.message["Subject"]) and "rotated" in str(received.message["Subject"])
    assert main(["--config", str(config), "rotate", old.key_id]) == 4  # rotated already: refused
    assert "was rotated already" in capsys.readouterr().err
    assert len(smtp_server.inbox()) == 1  # and the mail is not sent twice
