"""make_engine's refusals and messages: no database server needed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from keyd.errors import StoreError
from keyd.store.engine import make_engine, safe_url


def test_safe_url_hides_the_password() -> None:
    assert safe_url("postgresql+psycopg://keyd:hunter2@db/keyd") == "postgresql+psycopg://keyd:***@db/keyd"
    assert safe_url("not a url") == "<unparsable database URL>"


def test_unparsable_url_does_not_echo_it() -> None:
    with pytest.raises(StoreError) as caught:
        make_engine("postgresql+psycopg//keyd:hunter2@db")
    assert "hunter2" not in str(caught.value)
    assert "database.url cannot be parsed" in str(caught.value)


def test_unsupported_backend() -> None:
    with pytest.raises(StoreError, match="unsupported backend 'mysql'"):
        make_engine("mysql://keyd:hunter2@db/keyd")


def test_sqlite_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as caught:
        make_engine(f"sqlite:///{blocker / 'sub' / 'keyd.db'}")
    assert f"cannot create directory {blocker / 'sub'}" in str(caught.value)


def test_unreachable_postgres_is_a_store_error_without_password() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg://keyd:hunter2@127.0.0.1:{port}/keyd"
    engine = make_engine(url)
    try:
        with pytest.raises(StoreError) as caught:
            engine.connect().close()
    finally:
        engine.dispose()
    message = str(caught.value)
    assert message.startswith(f"database postgresql+psycopg://keyd:***@127.0.0.1:{port}/keyd: ")
    assert "cannot connect" in message and "hunter2" not in message
    assert caught.value.retryable and caught.value.exit_code == 6


def test_in_memory_sqlite_works() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
