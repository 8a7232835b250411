"""The status page and ``keyd status`` at N keys: time, bytes, statements.

For each N (default 1,000, 10,000, 100,000) and backend (SQLite, and
PostgreSQL on 127.0.0.1:5432 when it answers) takes a fresh copy of the
cold-scanned database of ``bench/scale.py``'s tree (``bench/scale_cache.py``:
the same cache, built by ``python bench/scale.py --build-only`` when
missing) and measures, in process:

- ``page``: ``GET /`` as the daemon renders it (``StatusViews.index``),
  median of ``--repeat`` (default 3) views: wall and CPU seconds, the
  body's size, the SQL statements one view issues;
- ``text``: ``keyd status`` (the default, bounded listing) and ``keyd
  status --all``; ``json``: ``keyd status --json`` (every key, by design);
  each once, wall and CPU seconds and bytes printed.

Then the ratio largest N / smallest N per figure. ``--profile`` writes a
cProfile of one page view per run to ``bench/.cache/status-<backend>-<N>.prof``.

Usage: python bench/status.py [--n 1000 10000 100000] [--sqlite-only | --postgresql-only]
                              [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench import scale_cache  # noqa: E402
from bench.scale import backends, write_tree  # noqa: E402
from bench.scan import key_pems  # noqa: E402
from keyd.cli import main as keyd_main  # noqa: E402
from keyd.clock import SystemClock  # noqa: E402
from keyd.config import Config, load_config  # noqa: E402
from keyd.runtime.views import StatusViews  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from tests.support.sql import statements  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _Services:
    """What ``StatusViews`` reads of the daemon's services."""

    engine: Any
    config: Config
    clock: SystemClock


def timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def bench_page(engine: Any, config: Config, repeat: int, profile: Path | None) -> dict[str, float]:
    views = StatusViews(lambda: _Services(engine, config, SystemClock()))  # type: ignore[arg-type,return-value]
    views.index()  # warm: caches, connection pool
    walls, cpus = [], []
    body = ""
    for _ in range(repeat):
        with statements(engine) as sent:
            wall, cpu, body = timed(views.index)
        walls.append(wall)
        cpus.append(cpu)
    if profile is not None:
        prof = cProfile.Profile()
        prof.runcall(views.index)
        prof.dump_stats(str(profile))
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "bytes": len(body.encode()),
        "queries": len(sent),
    }


def bench_cli(config_file: Path, *args: str) -> dict[str, float]:
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return keyd_main(["--config", str(config_file), *args])

    wall, cpu, code = timed(run)
    if code != 0:
        raise SystemExit(f"keyd {' '.join(args)} exited {code}")
    return {"wall": wall, "cpu": cpu, "bytes": len(out.getvalue().encode())}


def _cli_supports_all() -> bool:
    from keyd.cli.inventory import status_cmd

    return any(p.name == "show_all" for p in status_cmd.params)


def run_one(backend: str, n: int, keys: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"keyd-status-{backend}-{n}-"))
    try:
        with scale_cache.database(backend, n, keys, work) as (url, _cold):
            config_file = work / "keyd.toml"
            config_file.write_text(
                f'[database]\nurl = "{url}"\n'
                f'[[sources]]\ntype = "directory"\nname = "{scale_cache.SOURCE}"\npath = "{keys}"\n'
            )
            config = load_config(config_file)
            engine = make_engine(url)
            try:
                profile = (ROOT / "bench" / ".cache" / f"status-{backend}-{n}.prof") if args.profile else None
                out: dict[str, Any] = {"page": bench_page(engine, config, args.repeat, profile)}
            finally:
                engine.dispose()
            out["text"] = bench_cli(config_file, "status")
            if _cli_supports_all():
                out["text_all"] = bench_cli(config_file, "status", "--all")
            out["json"] = bench_cli(config_file, "status", "--json")
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fig(r: dict[str, float]) -> str:
    return f"{1000 * r['wall']:8.1f} ms ({1000 * r['cpu']:8.1f} ms CPU) {r['bytes'] / 1e3:9.1f} kB"


def show(backend: str, n: int, r: dict[str, Any]) -> None:
    page = r["page"]
    line = f"{backend:10} {n:>7,}  page {_fig(page)} {page['queries']:3d} stmts | status {_fig(r['text'])}"
    if "text_all" in r:
        line += f" | --all {_fig(r['text_all'])}"
    line += f" | --json {_fig(r['json'])}  [load {os.getloadavg()[0]:.1f}]"
    print(line, flush=True)


def _pg_cached(n: int) -> bool:
    """A finished PostgreSQL template of N keys exists and none is being built."""
    names = scale_cache._pg_databases()
    done = any(d.startswith(f"keyd_bench_tpl_{scale_cache.NS}_{n}_") for d in names)
    building = any(d.startswith(f"keyd_bench_build_{scale_cache.NS}_{n}_") for d in names)
    return done and not building and bool(list(scale_cache.CACHE.glob(f"postgresql-{n}-*.json")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--pems", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgresql-only", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    pems = key_pems(args.pems)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    trees = {n: scale_cache.tree(n, pems, write_tree) for n in sorted(args.n)}
    chosen = [b for b in backends(args.sqlite_only) if b == "postgresql" or not args.postgresql_only]
    for backend in chosen:
        for n in sorted(args.n):
            if backend == "postgresql" and not _pg_cached(n):
                # never build here: a build drops other checkouts' templates of this N
                print(f"postgresql {n:,}: not cached, or being built (bench/scale.py --build-only); skipped")
                continue
            print(f"{time.strftime('%H:%M:%S')} {backend} {n:,} (load {os.getloadavg()[0]:.1f})", flush=True)
            results[backend, n] = run_one(backend, n, trees[n], args)
            show(backend, n, results[backend, n])
    for backend in sorted({b for b, _ in results}):
        ns = sorted(n for b, n in results if b == backend)
        if len(ns) < 2:
            continue
        lo, hi = results[backend, ns[0]], results[backend, ns[-1]]
        ratios = ", ".join(
            f"{name} {hi[name]['wall'] / lo[name]['wall']:.1f}x time, "
            f"{hi[name]['bytes'] / lo[name]['bytes']:.1f}x bytes"
            for name in ("page", "text", "text_all", "json")
            if name in hi and name in lo
        )
        print(
            f"{backend}: {ns[-1]:,} / {ns[0]:,}: {ratios}; page statements {lo['page']['queries']} -> "
            f"{hi['page']['queries']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
