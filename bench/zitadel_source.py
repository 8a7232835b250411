"""The zitadel source at scale: 5,000 keys over many ListKeys pages.

Writes the test issuer's state file with ``--keys`` keys (default 5,000)
of ``--users`` service users (default 500) in one organization,
``--held`` of them (default 500) also as key files in a directory, and
keyd's own API user, then starts the issuer in its own process
(``python -m tests.support.issuer --state-file``) so that this process
measures keyd alone. Each phase is run twice: once for wall time, once
under ``tracemalloc`` for its peak Python heap (a scan on a fresh SQLite
database each time):

- baseline: the bare paginated listing — one pooled ``httpx.Client``, the
  same bearer token, ``POST /v2/users/keys/search`` page after page with
  ``json.loads`` and nothing else (what any client has to pay);
- keyd's client: ``ZitadelKeyAPI.list_keys`` (strict parsing into frozen
  values, totalResult checked on every page);
- cold scan: ``scan_all`` with the directory and the zitadel source into a
  fresh SQLite database (every key new: 4,500 unheld rows and 5,000
  zitadel locations written);
- warm scan: the same again (nothing changed).

Prints the times, the ratios to the baseline, peak heap per phase and the
process's peak RSS. Usage::

    python bench/zitadel_source.py [--keys 5000] [--users 500] [--held 500] [--page 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from keyd.checks.apitoken import ApiTokenProvider  # noqa: E402
from keyd.checks.assertion import AssertionSigner  # noqa: E402
from keyd.clients.issuer import IssuerClient  # noqa: E402
from keyd.clients.zitadel import SEARCH_PATH, ZitadelKeyAPI  # noqa: E402
from keyd.clock import SystemClock  # noqa: E402
from keyd.config import load_config  # noqa: E402
from keyd.inventory.scan import scan_all  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from keyd.store.inventory import Engine  # noqa: E402
from keyd.store.migrate import upgrade  # noqa: E402
from tests.support.issuer import IssuerServer  # noqa: E402
from tests.support.keys import make_key_file, rsa_key, zitadel_id  # noqa: E402
from tests.support.zitadel_api import DEFAULT_ORG, make_api_user  # noqa: E402


def measure(name: str, fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """Wall time of one run, peak traced heap of a second run."""
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  {name:<34} {seconds:8.3f} s   peak heap {peak / 2**20:7.1f} MiB", flush=True)
    return seconds, peak, result


def populate(registry: IssuerServer, keys_dir: Path, n_keys: int, n_users: int, n_held: int) -> None:
    shared = rsa_key()  # one key pair behind every key id: registration stays cheap
    users = [zitadel_id() for _ in range(n_users)]
    for user in users:
        registry.key_api.add_user(user, DEFAULT_ORG)
    for i in range(n_keys):
        user = users[i % n_users]
        if i < n_held:
            make_key_file(keys_dir, user_id=user, private_key=shared, register_with=registry)
        else:
            registry.add_key(user, zitadel_id(), shared.public_key())


@contextmanager
def standalone(state: Path) -> Iterator[str]:
    """The issuer in its own process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.issuer", "--state-file", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bare_listing(url: str, token: str, page: int) -> int:
    seen, offset, total = 0, 0, None
    with httpx.Client(timeout=30) as client:
        while total is None or offset < total:
            body = {
                "pagination": {"offset": str(offset), "limit": page, "asc": True},
                "filters": [{"organizationIdFilter": {"id": DEFAULT_ORG}}],
            }
            doc = json.loads(
                client.post(
                    url + SEARCH_PATH, content=json.dumps(body), headers={"Authorization": f"Bearer {token}"}
                ).content
            )
            total = int(doc["pagination"]["totalResult"])
            seen += len(doc["result"])
            offset += page
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--held", type=int, default=500)
    parser.add_argument("--page", type=int, default=100)
    args = parser.parse_args()
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys_dir = root / "keys"
        keys_dir.mkdir(mode=0o700)
        state = root / "issuer-state.json"
        registry = IssuerServer(state_file=state)  # never started: writes the state file
        own = make_api_user(registry, root)
        print(f"registering {args.keys} keys of {args.users} users ({args.held} held in files)")
        populate(registry, keys_dir, args.keys, args.users, args.held)
        registry.stop()
        with standalone(state) as url:
            return run(args, root, keys_dir, own.path, url, clock)


def run(
    args: argparse.Namespace,
    root: Path,
    keys_dir: Path,
    credential: Path | None,
    url: str,
    clock: SystemClock,
) -> int:
    assert credential is not None
    toml = root / "keyd.toml"
    toml.write_text(f"""
[issuer]
url = "{url}"
[rotation]
credential = "{credential}"
[[sources]]
type = "directory"
path = "{keys_dir}"
[[sources]]
type = "zitadel"
organizations = ["{DEFAULT_ORG}"]
""")
    config = load_config(toml, {})
    databases = iter(range(1000))

    def fresh() -> Engine:
        engine = make_engine(f"sqlite:///{root / f'keyd-{next(databases)}.db'}")
        upgrade(engine)
        return engine

    with IssuerClient(url, clock=clock) as issuer_client:
        tokens = ApiTokenProvider(credential, issuer_client, AssertionSigner(clock), clock)
        token = tokens.token().reveal()
        api = ZitadelKeyAPI(url, tokens, clock=clock, page_size=args.page)
        apis = {config.sources[1].name: api}
        pages = -(-(args.keys + 1) // args.page)
        print(f"{args.keys + 1} keys in {pages} pages of {args.page}:")
        base, base_mem, n = measure(
            "baseline: bare httpx + json.loads", lambda: bare_listing(url, token, args.page)
        )
        listed, list_mem, keys = measure(
            "keyd ZitadelKeyAPI.list_keys", lambda: api.list_keys(organization_id=DEFAULT_ORG)
        )
        assert n == len(keys) == args.keys + 1, (n, len(keys))
        cold, cold_mem, report = measure(
            "keyd cold scan (files + zitadel)", lambda: scan_all(config, fresh(), clock, key_apis=apis)
        )
        assert not report.failed, report.summary()
        warm_db = fresh()
        scan_all(config, warm_db, clock, key_apis=apis)
        warm, warm_mem, report = measure(
            "keyd warm scan (nothing changed)", lambda: scan_all(config, warm_db, clock, key_apis=apis)
        )
        print(f"  scan: {report.summary()}")
        api.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"ratios to the baseline listing: client {listed / base:.2f}x, cold scan "
        f"{cold / base:.2f}x, warm scan {warm / base:.2f}x"
    )
    print(
        f"peak heap: baseline {base_mem / 2**20:.1f} MiB, client {list_mem / 2**20:.1f} MiB, "
        f"cold {cold_mem / 2**20:.1f} MiB, warm {warm_mem / 2**20:.1f} MiB; "
        f"process peak RSS {rss:.0f} MiB (the test server runs in its own process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
