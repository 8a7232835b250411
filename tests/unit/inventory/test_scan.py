"""scan_all orchestration on a throwaway SQLite database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from keyd import progress
from keyd.clock import FakeClock
from keyd.config import Config, DirectorySourceConfig, VaultSourceConfig
from keyd.errors import StoreError
from keyd.inventory import reconcile as reconcile_mod
from keyd.inventory import scan as scan_mod
from keyd.inventory.reconcile import SourceOutcome
from keyd.inventory.scan import ScanReport, scan_all
from keyd.sources.keyfile import KeyFile
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from keyd.store.models import KeyLocation
from tests.support.keys import make_key_file


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'keyd.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def test_each_source_fails_alone(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o700)
    make_key_file(keys, key_id="1", user_id="svc")
    broken = DirectorySourceConfig(name="buggy", path=keys)
    config = Config(
        sources=(
            DirectorySourceConfig(name="dir", path=keys),
            VaultSourceConfig(name="vault:secret/k", prefix="k"),  # no [vault]: no client
            broken,
        )
    )
    real = scan_mod.DirectorySource.scan

    def scan(self: scan_mod.DirectorySource, *a: object, **k: object) -> object:
        if self.name == "buggy":
            raise ZeroDivisionError("bug")
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(scan_mod.DirectorySource, "scan", scan)
    report = scan_all(config, engine, FakeClock(), None)
    assert [s.ok for s in report.sources] == [True, False, False]
    assert "needs a [vault] section" in (report.sources[1].error or "")
    assert "internal error while scanning (ZeroDivisionError)" in (report.sources[2].error or "")
    assert report.keys == 1


def test_a_bug_while_recording_one_location_makes_it_invalid(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    make_key_file(keys, key_id="1", user_id="svc", filename="a.json")
    make_key_file(keys, key_id="2", user_id="svc-bug", filename="b.json")
    real = reconcile_mod._fill_key

    def fill(key: object, kf: KeyFile, now: object) -> None:
        if kf.principal == "svc-bug":
            raise KeyError("bug")
        real(key, kf, now)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile_mod, "_fill_key", fill)
    config = Config(sources=(DirectorySourceConfig(name="dir", path=keys),))
    report = scan_all(config, engine, FakeClock(), None)
    (outcome,) = report.sources
    assert outcome.ok and outcome.new == 1 and outcome.invalid == 1
    with Session(engine) as s:
        errors = {loc.ref.rsplit("/", 1)[1]: loc.last_error for loc in s.scalars(select(KeyLocation))}
    assert errors == {
        "a.json": None,
        "b.json": "internal error while recording it (KeyError); run with --debug and report it",
    }


def test_a_bug_while_recording_a_source_fails_that_source(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: object, **k: object) -> object:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(scan_mod, "reconcile", broken)
    config = Config(sources=(DirectorySourceConfig(name="dir", path=tmp_path),))
    (outcome,) = scan_all(config, engine, FakeClock(), None).sources
    assert not outcome.ok
    assert outcome.error == (
        "internal error while recording the scan (ZeroDivisionError); run with --debug and report it"
    )


def test_store_errors_propagate(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*a: object, **k: object) -> object:
        raise StoreError("database x: cannot connect")

    monkeypatch.setattr(scan_mod, "source_index", down)
    config = Config(sources=(DirectorySourceConfig(name="dir", path=tmp_path),))
    with pytest.raises(StoreError):
        scan_all(config, engine, FakeClock(), None)


def test_summary_wording() -> None:
    one = ScanReport(sources=(SourceOutcome("dir", new=1),), key_counts={"active": 1})
    assert one.summary() == "1 source, 1 key (1 new, 0 changed, 0 missing, 0 invalid)"
    many = ScanReport(
        sources=(
            SourceOutcome("a", new=2, invalid=1),
            SourceOutcome("b", changed=1, missing=1),
            SourceOutcome("vault:secret/zitadel/keys", ok=False, error="Vault is sealed"),
        ),
        key_counts={"active": 40, "expired": 2, "missing": 5},
    )
    assert many.summary() == (
        "3 sources, 42 keys (2 new, 1 changed, 1 missing, 1 invalid); "
        "source vault:secret/zitadel/keys failed: Vault is sealed"
    )


class _Progress:
    def __init__(self) -> None:
        self.totals: dict[str, tuple[int | None, str]] = {}
        self.done: dict[str, int] = {}
        self.ended: list[str] = []

    def begin(self, task: str, total: int | None, unit: str) -> None:
        self.totals[task] = (total, unit)
        self.done[task] = 0

    def advance(self, task: str, n: int) -> None:
        self.done[task] += n

    def end(self, task: str) -> None:
        self.ended.append(task)


def test_a_cold_scan_reports_its_database_writes(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write step of a cold scan (every file new) is progress too, batch
    by batch: files written, then keys settled, so /healthz and the CLI show
    it advancing instead of a silent minute after 'reading'."""
    monkeypatch.setattr(reconcile_mod, "_BATCH", 4)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for i in range(10):
        make_key_file(keys, key_id=str(100 + i), user_id=f"svc{i}")
    config = Config(sources=(DirectorySourceConfig(name="dir", path=keys),))
    seen = _Progress()
    with progress.reporting(seen):
        scan_all(config, engine, FakeClock())
    assert seen.totals["writing dir"] == (10, "files") and seen.done["writing dir"] == 10
    assert seen.totals["settling dir"] == (10, "keys") and seen.done["settling dir"] == 10
    assert {"writing dir", "settling dir"} <= set(seen.ended)
