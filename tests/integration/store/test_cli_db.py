"""`keyd db upgrade` / `keyd db current` through keyd.cli.main, both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.cli import main
from keyd.store.engine import safe_url
from keyd.store.migrate import head_revision

HEAD = head_revision()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_current_then_upgrade_then_current(db_url: str, capsys) -> None:
    shown = safe_url(db_url)
    code, out, err = run(capsys, "db", "current", "--url", db_url)
    assert code == 4
    if db_url.startswith("sqlite"):  # the file does not exist, and looking does not create it
        assert err == f'keyd: database {shown} does not exist: run "keyd db upgrade"\n'
    else:
        assert out == f'database {shown}: no keyd schema (head is {HEAD}): run "keyd db upgrade"\n'

    code, out, _ = run(capsys, "db", "upgrade", "--url", db_url)
    assert (code, out) == (0, f"database {shown}: at {HEAD} (head)\n")

    code, out, _ = run(capsys, "db", "upgrade", "--url", db_url)  # idempotent
    assert (code, out) == (0, f"database {shown}: at {HEAD} (head)\n")

    code, out, _ = run(capsys, "db", "current", "--url", db_url)
    assert (code, out) == (0, f"database {shown}: at {HEAD} (head)\n")


def test_url_from_environment(db_url: str, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYD_DATABASE_URL", db_url)
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0 and out.endswith(f": at {HEAD} (head)\n")


def test_url_from_config_file(db_url: str, capsys, tmp_path: Path) -> None:
    config = tmp_path / "keyd.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    code, out, _ = run(capsys, "--config", str(config), "db", "upgrade")
    assert (code, out) == (0, f"database {safe_url(db_url)}: at {HEAD} (head)\n")
    code, _, _ = run(capsys, "--config", str(config), "db", "current")
    assert code == 0


def test_unreachable_database_exits_6_without_password(capsys) -> None:
    url = "postgresql+psycopg://keyd:hunter2@127.0.0.1:1/keyd"
    code, out, err = run(capsys, "db", "current", "--url", url)
    assert code == 6 and out == ""
    assert err.startswith("keyd: database postgresql+psycopg://keyd:***@127.0.0.1:1/keyd: ")
    assert "hunter2" not in err


def test_sqlite_directory_not_creatable_exits_6(capsys, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "db", "upgrade", "--url", f"sqlite:///{tmp_path}/file/sub/k.db")
    assert code == 6 and "cannot create directory" in err
