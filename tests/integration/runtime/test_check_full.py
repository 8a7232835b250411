"""``keyd check`` with every stage live: the test issuer (probes), a real
SMTP server (outbox), on SQLite and PostgreSQL. ``--dry-run`` sends not a
single request to the issuer (a probe mints a real token): it lists the
probes it skipped and judges on the stored probe results."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from tests.support.daemon import write_config
from tests.support.issuer import TOKEN_PATH, IssuerServer
from tests.support.keyfiles import PEM_MARKER
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.smtp]

NOW = datetime.now(UTC)


@pytest.fixture
def config(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    path = write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        issuer_url=issuer.url,
        issuer_extra='timeout = "2s"\n',
        smtp=(smtp_server.host, smtp_server.port),
        extra='[alerts]\nthresholds = ["14d", "7d"]\n',
    )
    return path


def check(config: Path, *args: str) -> int:
    return main(["--config", str(config), "check", *args])


def test_full_cycle_probes_alerts_and_mails_once(
    config: Path,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
    migrated_engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = config.parent / "keys"
    make_key_file(
        keys, key_id="100", user_id="svc-a", register_with=issuer, expires_at=NOW + timedelta(days=5, hours=2)
    )

    assert check(config, "--dry-run", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]] == ["scan", "evaluate", "probe", "outbox", "prune"]
    assert [s["skipped"] for s in doc["stages"]] == [False, False, True, True, True]
    assert doc["skipped_side_effects"][:2] == [
        f"probe: would probe 1 key(s) at {issuer.url} (skipped: a probe mints a real token)",
        "probe: would probe key 100 (svc-a): never probed",
    ]
    assert any("would send email to ops@test.example" in line for line in doc["skipped_side_effects"])
    assert issuer.requests_seen == 0 and issuer.tokens_issued == 0  # not even discovery
    assert smtp_server.inbox() == []  # dry run: nothing sent
    assert "100" not in dump_all(migrated_engine)  # ... and nothing kept

    assert check(config) == 1
    assert capsys.readouterr().out.startswith("KEYD WARNING - 1 key expiring in 5d")
    assert issuer.requests_by_path[TOKEN_PATH] == 1 and issuer.tokens_issued == 1  # probed
    assert len(smtp_server.inbox()) == 1
    assert check(config) == 1  # the same alert is never mailed twice
    assert len(smtp_server.inbox()) == 1
    capsys.readouterr()

    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=90))
    assert check(config) == 2  # not registered at the issuer: rejected
    out = capsys.readouterr().out
    assert out.startswith("KEYD CRITICAL - 0 expired, 1 rejected")
    # the run that found the rejection also decided and mailed it
    subjects = [str(m.message["Subject"]) for m in smtp_server.inbox()]
    assert any("key 200" in s and "rejected" in s for s in subjects), subjects
    assert PEM_MARKER not in out + dump_all(migrated_engine)


def test_issuer_down_alone_is_unknown(
    config: Path, issuer: IssuerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_key_file(
        config.parent / "keys",
        key_id="300",
        user_id="svc-c",
        register_with=issuer,
        expires_at=NOW + timedelta(days=200),
    )
    issuer.fail_mode = "503"
    assert check(config) == 3
    assert capsys.readouterr().out.startswith("KEYD UNKNOWN - issuer unavailable")


def test_dry_run_judges_on_stored_probe_results(
    config: Path, issuer: IssuerServer, migrated_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = config.parent / "keys"
    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=90))
    assert check(config) == 2  # a real probe: not registered at the issuer, rejected
    assert issuer.requests_by_path[TOKEN_PATH] >= 1
    capsys.readouterr()
    seen = issuer.requests_seen

    make_key_file(
        keys, key_id="300", user_id="svc-c", register_with=issuer, expires_at=NOW + timedelta(days=90)
    )
    assert check(config, "--dry-run") == 2  # still rejected: the stored result
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("KEYD CRITICAL - 0 expired, 1 rejected")
    assert out[1].startswith("CRITICAL: key 200 (svc-b) is rejected by the issuer")
    assert out[2:4] == [  # the rejected key is out of the schedule; the new one is due
        f"dry run: skipped probe: would probe 1 key(s) at {issuer.url} (skipped: a probe mints a real token)",
        "dry run: skipped probe: would probe key 300 (svc-c): never probed",
    ]
    # the rejection alert was decided and mailed by the run that found it
    assert out[4:] == []
    assert issuer.requests_seen == seen  # the dry run asked the issuer nothing

    issuer.fail_mode = "503"
    assert check(config) == 2  # key 300 probed for real: issuer down, 200 still rejected
    capsys.readouterr()
    (keys / "200.json").unlink()  # only the outage is left
    seen = issuer.requests_seen
    assert check(config, "--dry-run", "--json") == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"].startswith("KEYD UNKNOWN - issuer unavailable since ")
    assert "(last probe round; a dry run does not probe)" in doc["summary"]
    assert [p["kind"] for p in doc["problems"]] == ["issuer"]
    assert issuer.requests_seen == seen


def test_dry_run_lists_at_most_20_due_keys(
    config: Path, issuer: IssuerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(23):
        make_key_file(
            config.parent / "keys",
            key_id=f"{500 + n}",
            user_id=f"svc-{n}",
            alg="ES256",
            expires_at=NOW + timedelta(days=90),
        )
    assert check(config, "--dry-run", "--json") == 0
    lines = json.loads(capsys.readouterr().out)["skipped_side_effects"]
    assert lines[0] == (f"probe: would probe 23 key(s) at {issuer.url} (skipped: a probe mints a real token)")
    assert lines[1:21] == [f"probe: would probe key {500 + n} (svc-{n}): never probed" for n in range(20)]
    assert lines[21:] == ["probe: ... and 3 more key(s) due"]
    assert issuer.requests_seen == 0


def test_digest_mode_sends_one_mail_per_check(
    config: Path,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    """``alerts.digest`` promises one mail per run. A ``keyd check`` decides
    alerts twice (before the issuer is contacted and after the probes); in
    digest mode it sends once, at the end, listing both."""
    config.write_text(
        config.read_text().replace('thresholds = ["14d", "7d"]', 'thresholds = ["14d", "7d"]\ndigest = true')
    )
    keys = config.parent / "keys"
    make_key_file(
        keys, key_id="100", user_id="svc-a", register_with=issuer, expires_at=NOW + timedelta(days=5, hours=2)
    )
    make_key_file(keys, key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=90))  # rejected
    assert check(config) == 2
    (received,) = smtp_server.inbox()
    plain = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "key 100 of user svc-a expires in 5 days" in plain
    assert "key 200" in plain and "rejected" in plain
    assert check(config) == 2  # nothing new: no mail
    assert len(smtp_server.inbox()) == 1
