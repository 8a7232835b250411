"""Built trees and cold-scanned databases for ``bench/scale.py``, cached in
``bench/.cache/scale/`` (git-ignored) so a run measures, not builds.

Building 100,000 key files and cold-scanning them into a fresh database
takes minutes per backend; none of it is what the bench measures. So:

- the **tree** of N files is written once per (N, the shared PEMs, the tree
  format) into ``tree-<N>-<hash>/`` and used in place, read-only (keyd
  never writes a source); it is rebuilt when older than ``MAX_AGE``,
  because the expiries it carries are relative to the day it was written;
- the **cold database** (schema at head, then one ``scan_all`` of the
  tree; on PostgreSQL then ``ANALYZE``, as the daemon's prune stage does
  at start) is kept per backend and N, keyed by the tree's hash and keyd's
  schema (the head revision *and* the text of ``alembic/versions/``, since
  pre-1.0 the one migration is regenerated in place): a SQLite file copied
  for each run, a PostgreSQL database each run clones with ``CREATE
  DATABASE ... TEMPLATE``. A schema change, other PEMs or another N give
  another hash, so a stale cache is never used as it is: a database of the
  same tree cached under an older schema whose revision is in head's chain
  is migrated to head with keyd's own migrations (what every deployed
  database goes through; the cold scan's rows are the same, the
  migrations only add and convert) and recorded as such
  (``upgraded_from``), the older entry kept (another checkout still at
  that schema, e.g. a branch not yet rebased, uses it as it is instead of
  cold-scanning again); otherwise the tree is cold-scanned again and the
  older entries for the same backend and N are deleted.

The cold scan's time is printed when it runs and stored beside the cache
(``<backend>-<N>-<hash>.json``), so a cached run still shows what the
build cost and when.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from keyd.clock import SystemClock
from keyd.config import Config, DirectorySourceConfig
from keyd.inventory.scan import scan_all
from keyd.store.engine import make_engine
from keyd.store.migrate import _script, head_revision, upgrade

ROOT = Path(__file__).resolve().parents[1]
#: resolved: a worktree that links ``bench/.cache`` to another checkout's
#: uses that cache under the name its databases were scanned from (the
#: files' refs are absolute paths; through the link every location would
#: look moved, and a warm scan would be a full rescan)
CACHE = (ROOT / "bench" / ".cache").resolve() / "scale"
TREE_FORMAT = 2  # bump when write_tree changes what it writes
MAX_AGE = timedelta(days=7)  # the tree's expiries are 60+ days ahead of its build day
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=10"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{}"
#: PostgreSQL templates are shared by every checkout on the server: names
#: carry this cache directory's digest, so two checkouts never drop each other's
NS = hashlib.sha256(str(CACHE).encode()).hexdigest()[:6]

SOURCE = "dir"  # the source's name in every scan of the tree (cold, warm, the daemon's)

TreeWriter = Callable[[Path, int, list[str]], None]


@dataclass(frozen=True)
class Cold:
    """How the cached database was built: seconds of the cold scan, when,
    and whether this run built it (False: restored from the cache)."""

    seconds: float
    built_at: str
    fresh: bool
    upgraded_from: str | None = None  # built at this older revision, then migrated to head


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def schema_id() -> str:
    versions = sorted((ROOT / "alembic" / "versions").glob("*.py"))
    return _digest(head_revision(), [hashlib.sha256(p.read_bytes()).hexdigest() for p in versions])


def tree(n: int, pems: list[str], write: TreeWriter) -> Path:
    """The cached tree of ``n`` files (written now if missing or too old)."""
    key = _digest(n, pems, TREE_FORMAT)
    path = CACHE / f"tree-{n}-{key}"
    marker = path / ".built"
    if marker.exists():
        built = datetime.fromisoformat(json.loads(marker.read_text())["built_at"])
        if datetime.now(UTC) - built < MAX_AGE:
            return path
    _drop_matching(f"tree-{n}-*")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f".partial-tree-{n}-{key}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    start = time.perf_counter()
    write(partial, n, pems)
    (partial / ".built").write_text(json.dumps({"built_at": datetime.now(UTC).isoformat()}))
    partial.rename(path)
    print(f"tree: wrote {n:,} key files in {time.perf_counter() - start:.1f} s ({path})", flush=True)
    return path


def _drop_matching(pattern: str) -> None:
    for old in CACHE.glob(pattern):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextmanager
def database(backend: str, n: int, keys: Path, work: Path) -> Iterator[tuple[str, Cold]]:
    """A fresh copy of the cold-scanned database of ``keys``: its URL
    and how the cached original was built. Dropped (PostgreSQL) at exit."""
    key = _digest(schema_id(), keys.name)
    meta = CACHE / f"{backend}-{n}-{key}.json"
    if backend == "sqlite":
        yield _sqlite_copy(n, key, keys, meta, work)
        return
    with _pg_clone(n, key, keys, meta) as found:
        yield found


def _older(backend: str, n: int, keys: Path, meta: Path) -> list[Path]:
    """The metadata of cached databases of the same tree built under
    another schema (newer than the tree; another key), newest first."""
    built = (keys / ".built").stat().st_mtime
    found = [
        old for old in CACHE.glob(f"{backend}-{n}-*.json") if old != meta and old.stat().st_mtime >= built
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _revision(url: str) -> str | None:
    """The old database's alembic revision when it is in head's chain
    (so ``upgrade`` takes it to head with keyd's own migrations)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    known = {r.revision for r in _script().walk_revisions()}
    return str(rev) if rev in known and rev != head_revision() else None


def _upgraded(url: str, old_meta: Path, meta: Path) -> bool:
    """Migrate the copy at ``url`` of an older cached database to head;
    False (nothing done) when its revision is not in head's chain."""
    rev = _revision(url)
    if rev is None:
        return False
    upgrade(url)
    if url.startswith("postgresql"):
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()
    data = json.loads(old_meta.read_text()) | {"upgraded_from": rev}
    meta.write_text(json.dumps(data))
    print(f"cached database from schema {rev} upgraded to {head_revision()} (keyd's migrations)", flush=True)
    return True


def _sqlite_upgrade(n: int, key: str, keys: Path, meta: Path, cached: Path) -> bool:
    return any(_sqlite_upgrade_from(old, n, key, meta, cached) for old in _older("sqlite", n, keys, meta))


def _sqlite_upgrade_from(old_meta: Path, n: int, key: str, meta: Path, cached: Path) -> bool:
    old_db = old_meta.with_suffix(".db")
    if not old_db.exists():
        return False
    partial = CACHE / f".partial-sqlite-{n}-{key}.db"
    shutil.copyfile(old_db, partial)
    if not _upgraded(f"sqlite:///{partial}", old_meta, meta):
        partial.unlink()
        return False
    _checkpoint(partial)
    partial.rename(cached)  # the older entry stays: a checkout still at its schema uses it as it is
    return True


def _checkpoint(path: Path) -> None:
    """Fold the WAL into the file: the cache is one file."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _sqlite_copy(n: int, key: str, keys: Path, meta: Path, work: Path) -> tuple[str, Cold]:
    cached = CACHE / f"sqlite-{n}-{key}.db"
    fresh = not (cached.exists() and meta.exists())
    if fresh and _sqlite_upgrade(n, key, keys, meta, cached):
        fresh = False
    if fresh:
        _drop_matching(f"sqlite-{n}-*")
        partial = CACHE / f".partial-sqlite-{n}-{key}.db"
        partial.unlink(missing_ok=True)
        _cold_build(f"sqlite:///{partial}", keys, meta)
        partial.rename(cached)
    target = work / "keyd.db"
    shutil.copyfile(cached, target)
    return f"sqlite:///{target}", _cold(meta, fresh)


@contextmanager
def _pg_clone(n: int, key: str, keys: Path, meta: Path) -> Iterator[tuple[str, Cold]]:
    template = f"keyd_bench_tpl_{NS}_{n}_{key}"
    fresh = not (meta.exists() and template in _pg_databases())
    if fresh and _pg_upgrade(n, key, keys, meta, template):
        fresh = False
    if fresh:
        for old in _pg_databases():
            if old.startswith(f"keyd_bench_tpl_{NS}_{n}_") or old.startswith(f"keyd_bench_build_{NS}_{n}_"):
                _pg_admin(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
        _drop_matching(f"postgresql-{n}-*.json")
        build = f"keyd_bench_build_{NS}_{n}_{key}"
        _pg_admin(f'CREATE DATABASE "{build}"')
        _cold_build(PG_URL.format(build), keys, meta)
        _pg_admin(f'ALTER DATABASE "{build}" RENAME TO "{template}"')
    name = f"keyd_bench_{secrets.token_hex(6)}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield PG_URL.format(name), _cold(meta, fresh)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_upgrade(n: int, key: str, keys: Path, meta: Path, template: str) -> bool:
    return any(_pg_upgrade_from(old, n, key, meta, template) for old in _older("postgresql", n, keys, meta))


def _pg_upgrade_from(old_meta: Path, n: int, key: str, meta: Path, template: str) -> bool:
    old_tpl = f"keyd_bench_tpl_{NS}_{n}_{old_meta.stem.rsplit('-', 1)[1]}"
    if old_tpl not in _pg_databases():
        return False
    build = f"keyd_bench_build_{NS}_{n}_{key}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{build}" TEMPLATE "{old_tpl}"')
    if not _upgraded(PG_URL.format(build), old_meta, meta):
        _pg_admin(f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)')
        return False
    _pg_admin(f'ALTER DATABASE "{build}" RENAME TO "{template}"')  # the older one stays, as on SQLite
    return True


def _cold_build(url: str, keys: Path, meta: Path) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
        config = Config(sources=(DirectorySourceConfig(name=SOURCE, path=keys),))
        start = time.perf_counter()
        scan_all(config, engine, SystemClock())
        seconds = time.perf_counter() - start
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    if url.startswith("sqlite:///"):
        _checkpoint(Path(url.removeprefix("sqlite:///")))
    meta.write_text(json.dumps({"seconds": seconds, "built_at": datetime.now(UTC).isoformat()}))
    print(f"cold scan: {seconds:.1f} s into a fresh {engine.dialect.name} database (cached)", flush=True)


def _cold(meta: Path, fresh: bool) -> Cold:
    data = json.loads(meta.read_text())
    return Cold(float(data["seconds"]), str(data["built_at"]), fresh, data.get("upgraded_from"))


def _pg_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(statement.encode())


def _pg_databases() -> set[str]:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        rows: list[Any] = admin.execute("SELECT datname FROM pg_database").fetchall()
    return {str(r[0]) for r in rows}


def clear() -> None:
    """Forget every cached tree and database (``--rebuild``)."""
    try:
        for name in _pg_databases():
            if name.startswith((f"keyd_bench_tpl_{NS}_", f"keyd_bench_build_{NS}_")):
                _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - PostgreSQL may simply not be there
        print(f"(PostgreSQL templates not cleared: {exc})", flush=True)
    shutil.rmtree(CACHE, ignore_errors=True)
    os.makedirs(CACHE, exist_ok=True)
