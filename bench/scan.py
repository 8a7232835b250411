"""Inventory scan speed (README "Inventory"): keyd's incremental scan vs the
naive loop.

Generates ``--files`` key files (default 10,000) over ``--keys`` distinct
RSA-2048 keys (default 1,000; generated once and cached in
``bench/.cache/``, git-ignored), each file a distinct key id, in a two-level
directory tree, then prints:

- cold scan into a fresh SQLite database (empty in-process key cache):
  seconds and ms per file;
- warm rescan, nothing changed (every file stat'ed, none read);
- rescan after touching 1 % of the files (re-read, known content: quick
  validation; in-process key cache cleared first, as in a fresh CLI run);
- peak RSS of the process (``resource.getrusage``);
- the naive way on a sample of ``--sample`` files (default 200): read,
  ``json.loads``, ``load_pem_private_key`` with full validation, per file;
- ratios. Targets: warm ≤ 5 % of cold; cold per file ≤ 1/5 of naive;
  peak RSS < 150 MB.

Usage: python bench/scan.py [--files 10000] [--keys 1000] [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from keyd.clock import SystemClock  # noqa: E402
from keyd.config import Config, DatabaseConfig, DirectorySourceConfig  # noqa: E402
from keyd.inventory.scan import ScanReport, scan_all  # noqa: E402
from keyd.sources.keyfile import clear_key_cache  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from keyd.store.migrate import upgrade  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def key_pems(n: int) -> list[str]:
    """``n`` RSA-2048 PEMs, generated once and cached across runs."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / "rsa2048-pems.json"
    pems: list[str] = json.loads(path.read_text()) if path.exists() else []
    if len(pems) < n:
        print(f"generating {n - len(pems)} RSA-2048 keys (cached in {path}) ...", flush=True)
        start = time.perf_counter()
        while len(pems) < n:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pems.append(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                ).decode()
            )
        path.write_text(json.dumps(pems))
        os.chmod(path, 0o600)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return pems[:n]


def write_tree(root: Path, files: int, pems: list[str]) -> list[Path]:
    base = datetime(2027, 1, 1, tzinfo=UTC)
    paths = []
    for i in range(files):
        directory = root / f"team{i % 100:02d}"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"key-{i:05d}.json"
        doc = {
            "type": "serviceaccount",
            "keyId": str(10**17 + i),
            "userId": f"svc-{i % 2500}",
            "key": pems[i % len(pems)],
            "expirationDate": (base + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        paths.append(path)
    return paths


def timed_scan(config: Config, engine: object) -> tuple[float, ScanReport]:
    start = time.perf_counter()
    report = scan_all(config, engine, SystemClock())  # type: ignore[arg-type]
    return time.perf_counter() - start, report


def naive_per_file(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        doc = json.loads(path.read_bytes())
        serialization.load_pem_private_key(doc["key"].encode(), password=None)
    return (time.perf_counter() - start) / len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    pems = key_pems(args.keys)
    work = Path(tempfile.mkdtemp(prefix="keyd-bench-scan-"))
    try:
        return run(work, args, pems)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace, pems: list[str]) -> int:
    root = work / "keys"
    root.mkdir(mode=0o700)
    paths = write_tree(root, args.files, pems)
    source = DirectorySourceConfig(name=f"directory:{root}", path=root)
    config = Config(database=DatabaseConfig(f"sqlite:///{work / 'keyd.db'}"), sources=(source,))
    engine = make_engine(config.database.url)
    try:
        upgrade(engine)
        clear_key_cache()
        cold, report = timed_scan(config, engine)
        print(f"files: {args.files} over {args.keys} distinct RSA-2048 keys")
        print(f"cold scan:   {cold:8.2f} s  {cold / args.files * 1000:7.3f} ms/file   [{report.summary()}]")
        warm, report = timed_scan(config, engine)
        print(f"warm rescan: {warm:8.2f} s  {warm / args.files * 1000:7.3f} ms/file   [{report.summary()}]")
        step = max(1, len(paths) // max(1, len(paths) // 100))
        touched = paths[::step][: max(1, len(paths) // 100)]
        for path in touched:
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        clear_key_cache()
        touch, report = timed_scan(config, engine)
        print(f"1% touched:  {touch:8.2f} s  ({len(touched)} files re-read)   [{report.summary()}]")
    finally:
        engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS:    {peak_mb:8.1f} MB")
    sample = paths[: args.sample]
    naive = naive_per_file(sample)
    cold_per_file = cold / args.files
    print(
        f"naive loop:  {naive * 1000:7.3f} ms/file over {len(sample)} files "
        f"(read, json.loads, load_pem_private_key with full validation)"
    )
    print(
        f"ratios: warm/cold = {warm / cold:.3%} (target <= 5%); "
        f"cold per file / naive = 1/{naive / cold_per_file:.1f} (target <= 1/5); "
        f"peak RSS {peak_mb:.0f} MB (target < 150 MB)"
    )
    ok = warm / cold <= 0.05 and naive / cold_per_file >= 5 and peak_mb < 150
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
