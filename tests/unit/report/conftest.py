"""A throwaway SQLite database with the models' tables, for report tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyd.store.engine import make_engine
from keyd.store.models import Base
from keyd.store.snapshot import Engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'keyd.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()
