"""psycopg is the ``keyd[postgres]`` extra: an installation without it
that meets a PostgreSQL URL says what to install (exit 4, no retry),
instead of SQLAlchemy's ``No module named 'psycopg'``. ``sys.modules``
holding None for a name is how Python itself marks a module as absent."""

from __future__ import annotations

import sys

import pytest

from keyd.cli import main
from keyd.errors import DriverMissing
from keyd.store.engine import make_engine
from keyd.store.locks import AdvisoryLock

URL = "postgresql://keyd:secret@db.invalid/keyd"


@pytest.fixture
def no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)


@pytest.mark.usefixtures("no_psycopg")
def test_engine_and_leader_lock_name_the_extra() -> None:
    for make in (make_engine, AdvisoryLock):
        with pytest.raises(DriverMissing) as caught:
            make(URL)
        assert "install keyd[postgres]" in str(caught.value)
        assert "secret" not in str(caught.value)
        assert caught.value.retryable is False


@pytest.mark.usefixtures("no_psycopg")
def test_cli_exits_4_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "current", "--url", URL]) == 4
    err = capsys.readouterr().err
    assert "install keyd[postgres]" in err and "Traceback" not in err


def test_sqlite_needs_no_driver(no_psycopg: None, tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/k.db")
    with engine.connect():
        pass
    engine.dispose()
