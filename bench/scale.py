"""keyd at scale: cost flat when nothing is due, no write when nothing changed.

For each N (default 1,000, 10,000, 100,000) and each backend (SQLite, and
PostgreSQL on 127.0.0.1:5432 when it answers) takes a tree of N key files
(key material shared between key ids: ``--pems`` distinct RSA-2048 keys,
default 20) and a fresh copy of a database cold-scanned from it, both
built once and cached in ``bench/.cache/scale/`` (``bench/scale_cache.py``:
keyed by N, the PEMs and keyd's schema, so a stale cache is rebuilt; the
cold scan's time is printed when it runs, and shown from the cache
otherwise), then prints side by side:

- ``eval``: alert evaluation with nothing due (median of 5 ticks), and the
  ratio largest N / smallest N (target <= 2: flat in N);
- ``warm``: a warm ``scan_all`` of the unchanged tree, against a plain
  ``os.walk`` + ``os.stat`` of the same tree (target <= 2x; medians of 5
  interleaved runs, CPU and wall seconds), and the bytes each scan wrote
  (SQLite: ``write_bytes`` of ``/proc/self/io``; PostgreSQL: WAL bytes,
  ``pg_current_wal_lsn()``; target ~0);
- ``metrics``: the snapshot refresh (daemon side), a scrape, the body size
  and the series per key (target: scrape <= 0.3 s, <= 2 series per key);
- ``idle``: CPU of a real ``keyd run`` (no issuer) over ``--idle`` seconds
  (default 60) after its start-up work, as % of one core (target <= 0.5 %),
  and its peak RSS (``VmHWM``; target < 300 MiB at 100k);
- ``due``: alert evaluation with every key due and an alert to decide
  for each (thresholds changed to reach every key: a 180-day rung; e-mail
  and webhook configured, so two deliveries per alert): one
  ``evaluate_alerts`` call, wall and CPU seconds and statements sent;
- ``probe``: CPU per probe of a steady-state ``probe_due`` round over
  ``--probes`` keys (default 500; keyd's log handler at INFO, as in the
  daemon) against the test issuer (a separate process, not counted) minus
  a raw RSA-2048 signature (target <= 0.5 ms/probe beyond signing); then
  the same keys once more in the thread pool a proxied issuer gets (the
  round's shape before ``keyd.clients.multiplex``), as the baseline;
  ``--probe-rounds`` (default 3) times, interleaved, each round paired
  with raw signatures measured next to it, medians and range printed.

Usage: python bench/scale.py [--n 1000 10000 100000] [--sqlite-only | --postgresql-only]
                             [--parts eval warm metrics due]
                             [--idle 60] [--probes 500] [--probe-rounds 3]
                             [--rebuild] [--build-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from sqlalchemy import event, text, update  # noqa: E402

from bench import scale_cache  # noqa: E402
from bench.scan import key_pems  # noqa: E402
from keyd.actions.alerts import evaluate_alerts  # noqa: E402
from keyd.actions.probe import ProbeServices, probe_due  # noqa: E402
from keyd.checks.assertion import AssertionSigner  # noqa: E402
from keyd.checks.keyload import make_key_loader  # noqa: E402
from keyd.checks.probe import ProbePolicy  # noqa: E402
from keyd.clients.issuer import IssuerClient  # noqa: E402
from keyd.clock import FakeClock, SystemClock  # noqa: E402
from keyd.config import (  # noqa: E402
    AlertsConfig,
    Config,
    DaemonConfig,
    DirectorySourceConfig,
    EmailConfig,
    WebhookConfig,
)
from keyd.inventory.reconcile import SOURCE_HEARTBEAT  # noqa: E402
from keyd.inventory.scan import scan_all  # noqa: E402
from keyd.log import setup_logging  # noqa: E402
from keyd.report.metrics import KeydMetrics  # noqa: E402
from keyd.store import snapshot  # noqa: E402
from keyd.store.alerts import transaction  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from keyd.store.models import Key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYD = [sys.executable, "-m", "keyd.cli"]  # this checkout's keyd (cwd=ROOT), not whatever the venv installed
SOURCE = scale_cache.SOURCE


PARTS = ("eval", "warm", "metrics", "due")


def write_tree(root: Path, n: int, pems: list[str]) -> None:
    """N key files, 100 per directory, expiries 60+ days ahead (nothing due).

    The documents differ only in key id, user id and expiry, so each is
    spliced from the PEM already JSON-encoded once (``pems`` are shared):
    bytes written with one ``os.write`` per file, no ``json.dump`` per file.
    """
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=60)
    encoded = [json.dumps(p).encode() for p in pems]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        directory = f"{root}/team{i // 100:04d}"
        if i % 100 == 0:
            os.mkdir(directory, 0o700)
        expiry = (base + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
        doc = b"".join(
            (
                b'{"type": "serviceaccount", "keyId": "%d", "userId": "svc-%d", "key": ' % (10**17 + i, i),
                encoded[i % len(encoded)],
                b', "expirationDate": "%s"}' % expiry.encode(),
            )
        )
        fd = os.open(f"{directory}/{i}.json", flags, 0o600)
        try:
            os.write(fd, doc)
        finally:
            os.close(fd)


def walk_stat(root: Path) -> tuple[float, float]:
    """A plain walk and stat of the tree: (wall, CPU) seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(directory, name))
    return time.perf_counter() - start, time.process_time() - cpu


def written_bytes(engine: Any) -> Callable[[], int]:
    """A counter of bytes written since the call (see the module doc)."""
    if engine.dialect.name == "postgresql":

        def lsn() -> Any:
            with engine.connect() as conn:
                return conn.execute(text("SELECT pg_current_wal_lsn()")).scalar()

        start = lsn()

        def wal() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :a)"), {"a": start}
                    ).scalar()
                    or 0
                )

        return wal
    begin = _proc_io()
    return lambda: _proc_io() - begin


def _proc_io() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def bench_eval(engine: Any, config: Config) -> float:
    clock = SystemClock()
    with transaction(engine) as session:  # the first tick after the cold scan: all new
        evaluate_alerts(session, config, clock.now())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        with transaction(engine) as session:
            evaluate_alerts(session, config, clock.now())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


DUE_THRESHOLDS = (180, 30, 14, 7, 3, 1)  # days: the 180d rung is due for every key of the tree


def bench_eval_due(engine: Any, config: Config) -> dict[str, float]:
    """Alert evaluation with every key due *and* an alert to decide for each
    (the thresholds changed so that a rung reaches every key, as after an
    import or a config change): one ``evaluate_alerts`` from the re-arm to
    nothing due, wall and CPU seconds, statements sent, alerts queued."""
    due = dataclasses.replace(
        config,
        alerts=AlertsConfig(
            thresholds=tuple(timedelta(days=d) for d in DUE_THRESHOLDS),
            email=EmailConfig(host="smtp.invalid", from_addr="keyd@example.org", to=("ops@example.org",)),
            webhook=WebhookConfig(url="https://hooks.example.org/keyd"),
        ),
    )
    sent: list[str] = []

    def count(*_args: Any) -> None:
        sent.append("")

    event.listen(engine, "before_cursor_execute", count)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        with transaction(engine) as session:
            new = evaluate_alerts(session, due, SystemClock().now())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return {"wall": wall, "cpu": cpu, "statements": len(sent), "alerts": len(new)}


def bench_metrics(engine: Any, n: int) -> dict[str, float]:
    metrics = KeydMetrics(engine, version="bench")
    start = time.perf_counter()
    metrics.refresh()
    refresh = time.perf_counter() - start
    scrapes = []
    for _ in range(5):
        start = time.perf_counter()
        body, _ = metrics.render()
        scrapes.append(time.perf_counter() - start)
    per_key = sum(1 for line in body.decode().splitlines() if 'key_id="' in line)
    return {
        "refresh": refresh,
        "scrape": statistics.median(scrapes),
        "bytes": len(body),
        "per_key": per_key / n,
    }


#: ``keyd run``'s scan tick in the idle window: short, so that watched ticks
#: (no event: next to nothing) run in it and their CPU is measured; they are
#: amortised over the default ``daemon.scan_interval`` (``_amortised``).
WATCH_TICK = 20


def bench_idle(work: Path, url: str, keys: Path, seconds: float) -> dict[str, Any]:
    """CPU of an idle ``keyd run``: a window of ``seconds`` once its start-up
    work is over (``/healthz``: every tick has run once, the catch-up pass
    and the first ``/metrics`` snapshot included, and none is running),
    and the amortised cost of every periodic tick (see ``_amortised``)."""
    config = work / "keyd.toml"
    port = _free_port()
    config.write_text(  # the source named as in the cold scan: the same inventory, not a move
        f'[database]\nurl = "{url}"\n\n[http]\nlisten = "127.0.0.1:{port}"\n\n'
        f'[daemon]\nscan_interval = "{WATCH_TICK}s"\n\n'
        f'[[sources]]\ntype = "directory"\nname = "{SOURCE}"\npath = "{keys}"\n'
    )
    log = (work / "daemon.log").open("w")
    proc = subprocess.Popen(
        [*KEYD, "--config", str(config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )
    try:
        deadline = time.monotonic() + 900
        while "running:" not in (work / "daemon.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("keyd run did not start: " + (work / "daemon.log").read_text())
            time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            started = time.monotonic()
            while not _settled(health := http.get("/healthz").json()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"keyd run did not settle: {health}")
                time.sleep(0.5)
            settle = time.monotonic() - started
            tick = os.sysconf("SC_CLK_TCK")
            before, ticks_before, watch_before = _cpu_ticks(proc.pid), health["ticks"], health.get("watch")
            time.sleep(seconds)
            used = (_cpu_ticks(proc.pid) - before) / tick
            after = http.get("/healthz").json()
            ticks_after, watch_after = after["ticks"], after.get("watch")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    return {
        "cpu": 100.0 * used / seconds,
        "settle": settle,
        "rss_mib": hwm / 1024,
        "raw": (used, seconds, ticks_before, ticks_after),
        "watch": (watch_before, watch_after),
    }


def heartbeat_rebuilds(engine: Any, config: Config) -> bool:
    """Whether the source heartbeat a scan of the unchanged tree writes
    every ``SOURCE_HEARTBEAT`` moves the ``/metrics`` change marker, i.e.
    makes the daemon rebuild its snapshot: a scan dated one heartbeat on."""
    before = snapshot.change_marker(engine)
    later = datetime.now(UTC) + SOURCE_HEARTBEAT + timedelta(minutes=1)
    report = scan_all(config, engine, FakeClock(later))
    assert report.total("unchanged") == report.keys, report.summary()
    return bool(snapshot.change_marker(engine) != before)


def _settled(health: dict[str, Any]) -> bool:
    """Start-up is over: every registered tick ran at least once and
    none is running (a probe round would show in ``running`` too)."""
    ticks = health["ticks"]
    periodic = [t for t in ticks.values() if t["interval_seconds"] is not None]
    return bool(periodic) and all(t["runs"] > 0 for t in periodic) and not health["running"]


def _amortised(
    used: float,
    seconds: float,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    rebuilds: bool,
    watch: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """What the idle daemon costs on average, as % of one core: the CPU
    outside any tick in the window (scheduler loop, HTTP server, main
    thread), plus for each periodic tick its CPU per run over its
    interval. A tick that ran in the window counts at its mean run there;
    one that did not (scan every 5 min, prune every 6 h) at its last run,
    i.e. its start-up run (the first scan, which the daemon runs itself
    before it says "running", is such a warm scan: the cache's database was
    cold-scanned from the same tree). The ``/metrics`` snapshot rebuild
    (only after the inventory changed) is in the metrics tick's first run;
    it is counted once per ``SOURCE_HEARTBEAT`` when ``rebuilds``, i.e. when
    the heartbeat of a scan of the unchanged tree moves the change marker
    (``heartbeat_rebuilds``), and not at all otherwise. With watched
    directory sources the scan tick is split (``_watched_scan``)."""
    in_window = {
        name: (
            t["runs"] - before.get(name, {}).get("runs", 0),
            t["cpu_seconds"] - before.get(name, {}).get("cpu_seconds", 0.0),
        )
        for name, t in after.items()
    }
    outside = used - sum(cpu for _, cpu in in_window.values())
    per_tick: dict[str, dict[str, float]] = {}
    for name, t in after.items():
        interval = t["interval_seconds"]
        if interval is None:
            continue
        runs, cpu = in_window[name]
        per_run = cpu / runs if runs else (t["last_cpu_seconds"] or 0.0)
        per_tick[name] = {
            "interval": interval,
            "runs_in_window": runs,
            "per_run": per_run,
            "pct": 100.0 * per_run / interval,
        }
    if rebuilds and "metrics" in per_tick and before.get("metrics", {}).get("runs", 0) > 0:
        checks = before["metrics"]["runs"] - 1  # the first refresh is a rebuild, the others mostly checks
        rebuild = before["metrics"]["cpu_seconds"] - checks * per_tick["metrics"]["per_run"]
        every = SOURCE_HEARTBEAT.total_seconds()
        per_tick["metrics rebuild"] = {
            "interval": every,
            "runs_in_window": 0,
            "per_run": rebuild,
            "pct": 100.0 * rebuild / every,
        }
    if watch is not None and watch[0] is not None and watch[1] is not None and "scan" in per_tick:
        per_tick.update(_watched_scan(*watch, in_window["scan"]))
        del per_tick["scan"]
    total = 100.0 * max(outside, 0.0) / seconds + sum(p["pct"] for p in per_tick.values())
    return {"outside_pct": 100.0 * outside / seconds, "ticks": per_tick, "amortised": total}


def _watched_scan(
    before: dict[str, Any], after: dict[str, Any], scan: tuple[int, float]
) -> dict[str, dict[str, float]]:
    """The scan tick of watched directory sources, split as the daemon runs
    it (``/healthz`` ``watch.ticks``): a tick with no event (``watched``)
    over the default ``daemon.scan_interval``, and a full scan (its last
    run: the first scan) over ``daemon.full_scan_interval``. A watched
    tick counts at the whole scan tick's mean CPU in the window (``scan``:
    its runs and CPU there, the full ones taken out), not only the part the
    watchers measure: the tick also counts keys for its summary and
    judges the inventory for ``STATUS=``. The window's own scan tick is
    ``WATCH_TICK`` only so that watched ticks run in it."""
    out: dict[str, dict[str, float]] = {}
    b, a = before["ticks"], after["ticks"]
    fulls = a["full"]["runs"] - b["full"]["runs"]
    runs = scan[0] - fulls
    cpu = scan[1] - (a["full"]["cpu_seconds"] - b["full"]["cpu_seconds"])
    watched = cpu / runs if runs > 0 else (a["watched"]["last_cpu_seconds"] or 0.0)
    interval = DaemonConfig().scan_interval.total_seconds()
    out["scan watched"] = {
        "interval": interval,
        "runs_in_window": runs,
        "per_run": watched,
        "pct": 100.0 * watched / interval,
    }
    full = a["full"]["last_cpu_seconds"] or 0.0
    every = after["full_scan_interval_seconds"]
    out["scan full"] = {
        "interval": every,
        "runs_in_window": a["full"]["runs"] - b["full"]["runs"],
        "per_run": full,
        "pct": 100.0 * full / every,
    }
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def bench_probe(engine: Any, keys: Path, pems: list[str], m: int, rounds: int = 3) -> dict[str, Any]:
    """``rounds`` times, interleaved: a multiplexed round, a thread-pool
    round and ``m`` raw signatures, each pair of a round and the signatures
    next to it in time (one round of 500 on a shared VM moved 0.2-1.2 ms
    per probe from run to run); medians of each, and the range."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.issuer", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    warm = len(pems)  # one key per distinct PEM: the daemon's scan has loaded each once
    multiplexed: list[float] = []
    pooled: list[float] = []
    raws: list[float] = []
    try:
        with transaction(engine) as session:
            chosen = list(
                session.execute(text(f"SELECT key_id, principal FROM keys ORDER BY id LIMIT {m + warm}"))
            )
            session.execute(
                update(Key)
                .where(Key.key_id.not_in([c[0] for c in chosen]))
                .values(next_probe_at=datetime(9999, 1, 1, tzinfo=UTC))
            )
        publics = [
            serialization.load_pem_private_key(p.encode(), None)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
            for p in pems
        ]
        with httpx.Client(base_url=url) as admin:
            for key_id, principal in chosen:
                admin.post(
                    "/_admin/keys",
                    json={
                        "principal": principal,
                        "key_id": key_id,
                        "public_key_pem": publics[(int(key_id) - 10**17) % len(pems)],
                    },
                ).raise_for_status()
        clock = SystemClock()
        with IssuerClient(url, clock=clock, max_connections=8) as client:
            client.discover()
            services = ProbeServices(
                client=client,
                signer=AssertionSigner(clock),
                clock=clock,
                load_key=make_key_loader([DirectorySourceConfig(SOURCE, keys)], None, UTC),
                policy=ProbePolicy(concurrency=8, rate_limit=0),
            )
            # steady state, as in a running daemon: keys loaded, connections
            # open, keyd's log handler at INFO (to /dev/null); a first round
            # in a fresh process also pays one RSA key load per PEM and the
            # connects, which are not per-probe costs
            root = logging.getLogger()
            level = root.level
            with open(os.devnull, "w") as devnull:
                handler = setup_logging("text", "INFO", stream=devnull)
                try:
                    warmed = probe_due(engine, services, clock.now(), limit=warm)
                    for _ in range(rounds):
                        due_again(engine, [c[0] for c in chosen[warm:]])
                        cpu = time.process_time()
                        report = probe_due(engine, services, clock.now())
                        multiplexed.append(time.process_time() - cpu)
                        assert report.counts().get("ok") == m, report.counts()
                        # the same keys again, due again, in the thread pool a
                        # proxied issuer gets (the round before keyd.clients.multiplex)
                        due_again(engine, [c[0] for c in chosen[warm:]])
                        client.multiplexer = _no_multiplexer  # type: ignore[method-assign]
                        try:
                            cpu = time.process_time()
                            threaded = probe_due(engine, services, clock.now())
                            pooled.append(time.process_time() - cpu)
                        finally:
                            del client.multiplexer  # the class's own again
                        assert threaded.counts().get("ok") == m, threaded.counts()
                        raws.append(raw_signatures(pems[0], m))
                finally:
                    root.removeHandler(handler)
                    root.setLevel(level)
        assert warmed.counts().get("ok") == warm, warmed.counts()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    beyond = [1000 * (a - b) / m for a, b in zip(multiplexed, raws, strict=True)]
    beyond_pool = [1000 * (a - b) / m for a, b in zip(pooled, raws, strict=True)]
    return {
        "per_probe_ms": 1000 * statistics.median(multiplexed) / m,
        "sign_ms": 1000 * statistics.median(raws) / m,
        "overhead_ms": statistics.median(beyond),
        "overhead_range": (min(beyond), max(beyond)),
        "threads_overhead_ms": statistics.median(beyond_pool),
        "rounds": rounds,
    }


def due_again(engine: Any, key_ids: list[str]) -> None:
    with transaction(engine) as session:
        session.execute(
            update(Key).where(Key.key_id.in_(key_ids)).values(next_probe_at=datetime(2000, 1, 1, tzinfo=UTC))
        )


def raw_signatures(pem: str, m: int) -> float:
    """CPU seconds for ``m`` bare RSA signatures with the cached key object."""
    key = serialization.load_pem_private_key(pem.encode(), None)
    cpu = time.process_time()
    for i in range(m):
        key.sign(f"assertion {i}".encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return time.process_time() - cpu


@contextmanager
def _no_multiplexer() -> Iterator[None]:
    yield None


def run_one(backend: str, n: int, keys: Path, pems: list[str], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"keyd-scale-{backend}-{n}-"))
    start, load = time.monotonic(), os.getloadavg()[0]
    print(f"{time.strftime('%H:%M:%S')} {backend} {n:,}: measuring (load {load:.1f})", flush=True)
    try:
        with scale_cache.database(backend, n, keys, work) as (url, cold):
            engine = make_engine(url)
            try:
                out = measure(engine, url, n, keys, work, pems, args)
                wall = time.monotonic() - start
                return out | {"cold": cold, "wall": wall, "load": (load, os.getloadavg()[0])}
            finally:
                engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    engine: Any, url: str, n: int, keys: Path, work: Path, pems: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Everything but the build, on a fresh copy of the cold-scanned database
    (``args.parts``: which of eval, warm, metrics, due; idle and probe by
    their own options). ``due`` runs last: it changes the thresholds and
    queues an alert for every key."""
    config = Config(sources=(DirectorySourceConfig(name=SOURCE, path=keys),))
    parts = set(args.parts)
    out: dict[str, Any] = {"eval": bench_eval(engine, config) if "eval" in parts else None}
    out["warm"] = out["walk"] = out["written"] = out["metrics"] = None
    if "warm" in parts:
        scan_all(config, engine, SystemClock())  # settle (heartbeat, caches)
        # interleaved, 5 of each, medians: on a shared machine one run of
        # each is noise; CPU seconds (this process: SQLite's work included,
        # PostgreSQL's server not) are the figure to compare
        walks, warms = [], []
        counter = written_bytes(engine)
        for _ in range(5):
            walks.append(walk_stat(keys))
            start, cpu = time.perf_counter(), time.process_time()
            report = scan_all(config, engine, SystemClock())
            warms.append((time.perf_counter() - start, time.process_time() - cpu))
            assert report.total("unchanged") == n, report.summary()
        out["written"] = counter() / len(warms)
        out["warm"], out["warm_cpu"] = (statistics.median(w[i] for w in warms) for i in (0, 1))
        out["walk"], out["walk_cpu"] = (statistics.median(w[i] for w in walks) for i in (0, 1))
    if "metrics" in parts:
        out["metrics"] = bench_metrics(engine, n)
    out["idle"] = bench_idle(work, url, keys, args.idle) if args.idle > 0 else None
    if out["idle"] is not None:
        rebuilds = heartbeat_rebuilds(engine, config)
        out["idle"] |= {"heartbeat_rebuilds": rebuilds} | _amortised(
            *out["idle"].pop("raw"), rebuilds=rebuilds, watch=out["idle"].pop("watch")
        )
    out["probe"] = (
        bench_probe(engine, keys, pems, min(n, args.probes), args.probe_rounds) if args.probes > 0 else None
    )
    out["due"] = bench_eval_due(engine, config) if "due" in parts else None
    return out


def backends(sqlite_only: bool) -> list[str]:
    if sqlite_only:
        return ["sqlite"]
    try:
        import psycopg

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - the bench still runs on SQLite
        print(f"PostgreSQL not reachable ({exc}); SQLite only", flush=True)
        return ["sqlite"]
    return ["sqlite", "postgresql"]


def show(backend: str, n: int, r: dict[str, Any]) -> None:
    m, idle, probe, due = r["metrics"], r["idle"], r["probe"], r["due"]
    line = f"{backend:10} {n:>7,}  cold {_cold(r['cold'])}"
    if r["eval"] is not None:
        line += f"  eval {1000 * r['eval']:7.1f} ms"
    if r["warm"] is not None:
        line += (
            f"  warm {r['warm_cpu']:6.2f} s CPU = {r['warm_cpu'] / r['walk_cpu']:4.2f}x walk+stat "
            f"({r['walk_cpu']:.2f} s CPU; wall {r['warm']:.2f} s = {r['warm'] / r['walk']:.2f}x), "
            f"wrote {r['written'] / 1024:8.1f} KiB/scan"
        )
    if m:
        line += (
            f"  metrics refresh {m['refresh']:5.2f} s, scrape {1000 * m['scrape']:6.1f} ms, "
            f"{m['bytes'] / 1e6:6.2f} MB, {m['per_key']:.1f} series/key"
        )
    if idle:
        line += (
            f"  idle {idle['cpu']:.2f} % CPU over the window (settled {idle['settle']:.0f} s after"
            f" 'running:'), amortised {idle['amortised']:.2f} % [outside ticks {idle['outside_pct']:.2f} %; "
            + ", ".join(
                f"{name} {1000 * t['per_run']:.0f} ms/{t['interval']:g} s = {t['pct']:.2f} %"
                for name, t in sorted(idle["ticks"].items(), key=lambda kv: -kv[1]["pct"])
            )
            + f"; heartbeat rebuilds /metrics: {'yes' if idle['heartbeat_rebuilds'] else 'no'}]"
            + f", peak RSS {idle['rss_mib']:.0f} MiB"
        )
    if probe:
        line += (
            f"  probe {probe['per_probe_ms']:.2f} ms CPU/probe, "
            f"{probe['overhead_ms']:.2f} ms beyond signing "
            f"({probe['overhead_range'][0]:.2f}-{probe['overhead_range'][1]:.2f}; "
            f"signing {probe['sign_ms']:.2f} ms; "
            f"in a thread pool: {probe['threads_overhead_ms']:.2f} ms; medians of {probe['rounds']} rounds)"
        )
    if due:
        line += (
            f"  eval all due {due['wall']:6.2f} s ({due['cpu']:.2f} s CPU), "
            f"{due['alerts']:,} alerts, {due['statements']:,} statements"
        )
    line += f"  [{r['wall']:.0f} s wall, load {r['load'][0]:.1f} -> {r['load'][1]:.1f}]"
    print(line, flush=True)


def save(path: Path, results: dict[tuple[str, int], dict[str, Any]]) -> None:
    rows = [
        {"backend": b, "n": n, **r, "cold": dataclasses.asdict(r["cold"])} for (b, n), r in results.items()
    ]
    path.write_text(json.dumps(rows, indent=1))


def _cold(cold: scale_cache.Cold) -> str:
    if cold.fresh:
        return f"{cold.seconds:.1f} s (built now)"
    upgraded = f", schema {cold.upgraded_from} migrated to head" if cold.upgraded_from else ""
    return f"{cold.seconds:.1f} s (cached, built {cold.built_at[:16]}{upgraded})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--pems", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds; 0 skips")
    parser.add_argument("--probes", type=int, default=500, help="0 skips")
    parser.add_argument("--probe-rounds", type=int, default=3, help="interleaved rounds of each; medians")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure besides idle, probe"
    )
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgresql-only", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="forget bench/.cache/scale/ first")
    parser.add_argument("--build-only", action="store_true", help="fill the cache, measure nothing")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    pems = key_pems(args.pems)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    if args.rebuild:
        scale_cache.clear()
    trees = {n: scale_cache.tree(n, pems, write_tree) for n in sorted(args.n)}
    for backend in [b for b in backends(args.sqlite_only) if b == "postgresql" or not args.postgresql_only]:
        for n in sorted(args.n):
            if args.build_only:
                with (
                    tempfile.TemporaryDirectory() as work,
                    scale_cache.database(backend, n, trees[n], Path(work)),
                ):
                    continue
            results[backend, n] = run_one(backend, n, trees[n], pems, args)
            show(backend, n, results[backend, n])
            if args.out:  # after each result: a run cut short keeps what it measured
                save(args.out, results)
    for backend in sorted({b for b, _ in results}):
        ns = sorted(n for b, n in results if b == backend and results[b, n]["eval"] is not None)
        if len(ns) > 1:
            ratio = results[backend, ns[-1]]["eval"] / results[backend, ns[0]]["eval"]
            print(f"{backend}: evaluation {ns[-1]:,} / {ns[0]:,} = {ratio:.2f}x (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
