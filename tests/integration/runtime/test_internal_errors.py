"""Errors that are not keyd's own (a PostgreSQL role without grants, a bug)
never print a traceback and never exit 1, which is ``keyd check``'s
WARNING and counted as success by keyd-check.service: one line
``keyd: internal error: …; run with --debug``, exit 3 (UNKNOWN) for
``check``, 8 for every other command. Usage errors in ``check`` are 3."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from keyd.errors import EXIT_INTERNAL, EXIT_UNKNOWN
from keyd.store.migrate import upgrade
from tests.support.daemon import KEYD, write_config
from tests.support.db import PG_ADMIN_DSN, postgres_database
from tests.support.keys import make_key_file

pytestmark = pytest.mark.postgres


@pytest.fixture
def no_grants_url(tmp_path: Path) -> Iterator[str]:
    """A migrated database and a login role that may not read its tables."""
    role = f"keyd_nogrant_{tmp_path.name[-6:].lower()}".replace("-", "_")
    with postgres_database() as url:
        upgrade(url)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            yield url.replace("postgres@", f"{role}@", 1)
        finally:
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
                name = url.rsplit("/", 1)[1]
                admin.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                        sql.Identifier(name), sql.Identifier(role)
                    )
                )
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def keyd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYD, "--config", str(config), *args], capture_output=True, text=True, timeout=120
    )


def test_a_role_without_grants_is_one_line_not_a_traceback(tmp_path: Path, no_grants_url: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    make_key_file(keys, user_id="svc-a", expires_at=datetime.now(UTC) + timedelta(days=90))
    config = write_config(tmp_path / "keyd.toml", db_url=no_grants_url, keys=keys)

    status = keyd(config, "status")
    assert status.returncode == EXIT_INTERNAL, status.stderr
    assert "Traceback" not in status.stderr
    line = status.stderr.strip()
    assert line.startswith("keyd: internal error: ") and line.endswith("; run with --debug")
    assert "permission denied" in line and len(line.splitlines()) == 1

    check = keyd(config, "check")
    assert check.returncode == EXIT_UNKNOWN, check.stdout + check.stderr
    assert check.stdout.startswith("KEYD UNKNOWN - internal error: ")
    assert "Traceback" not in check.stdout + check.stderr

    debug = keyd(config, "--debug", "status")
    assert debug.returncode == EXIT_INTERNAL and "Traceback" in debug.stderr


def test_usage_errors_in_check_are_unknown(tmp_path: Path) -> None:
    config = tmp_path / "keyd.toml"
    config.write_text('[database]\nurl = "sqlite:///nowhere.db"\n')
    bad = keyd(config, "check", "--no-such-option")
    assert bad.returncode == EXIT_UNKNOWN
    assert bad.stdout.startswith("KEYD UNKNOWN - ")
    elsewhere = keyd(config, "status", "--no-such-option")
    assert elsewhere.returncode == 4  # other commands: usage error
