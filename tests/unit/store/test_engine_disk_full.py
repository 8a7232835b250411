"""A disk that fills while scanning is a StoreError naming the database
and the cause, never a raw SQLAlchemy traceback. SQLite's
``max_page_count`` makes the real database file "full" at a few pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from keyd.clock import FakeClock
from keyd.config import Config, DatabaseConfig, DirectorySourceConfig
from keyd.errors import StoreError
from keyd.inventory.scan import scan_all
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from tests.support.keys import make_key_file


def test_a_full_disk_while_scanning_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keyd.db'}"
    upgrade(url)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for n in range(30):
        make_key_file(keys, user_id=f"svc-{n}", alg="ES256", expires_at=datetime.now(UTC) + timedelta(days=9))
    engine = make_engine(url)
    pages = engine.connect().exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _full(dbapi: object, _record: object) -> None:  # the disk is full after this
        dbapi.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]

    config = Config(database=DatabaseConfig(url=url), sources=(DirectorySourceConfig(name="dir", path=keys),))
    with pytest.raises(StoreError, match=r"keyd\.db: the disk is full"):
        scan_all(config, engine, FakeClock(), None)
    engine.dispose()
