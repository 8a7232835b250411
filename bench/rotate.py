"""Rotation end to end (README "Rotation"): N due keys (default 100), one per
service user, in a directory; each is rotated against the test issuer with
its v2 key API (AddKey with the public key, a proof token, the file
replaced atomically, then RemoveKey of the old key after a probe of the new
one). The baseline, measured in the same run on the same keys: one
validation probe per key (``probe_due``). Printed: seconds per rotation,
per probe, and their ratio.

The issuer runs in this process (threads), so its CPU is charged to both
sides alike. Usage: python bench/rotate.py [--keys 100] [--algorithm rsa-2048]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keyd.actions.probe import build_probe_services, probe_due  # noqa: E402
from keyd.actions.publish import Publisher  # noqa: E402
from keyd.actions.rotate import rotate_due, rotate_key  # noqa: E402
from keyd.actions.rotation_services import RotationServices, probe_prover  # noqa: E402
from keyd.checks.apitoken import ApiTokenProvider  # noqa: E402
from keyd.checks.assertion import AssertionSigner  # noqa: E402
from keyd.checks.rotation import RotationPolicy  # noqa: E402
from keyd.clients.issuer import IssuerClient  # noqa: E402
from keyd.clients.zitadel import ZitadelKeyAPI  # noqa: E402
from keyd.clock import SystemClock  # noqa: E402
from keyd.config import Config, DatabaseConfig, DirectorySourceConfig, IssuerConfig  # noqa: E402
from keyd.inventory.scan import scan_all  # noqa: E402
from keyd.store import rotations as store  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from keyd.store.migrate import upgrade  # noqa: E402
from tests.support.issuer import IssuerServer  # noqa: E402
from tests.support.keys import make_key_file  # noqa: E402
from tests.support.zitadel_api import make_api_user  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--algorithm", default="rsa-2048")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="keyd-bench-rotate-") as tmp, IssuerServer() as issuer:
        root = Path(tmp)
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        manager = make_api_user(issuer, root)
        for _ in range(args.keys):
            made = make_key_file(keys, register_with=issuer, expires_at=datetime.now(UTC) + timedelta(days=5))
            issuer.key_api.add_user(made.principal)
        db = f"sqlite:///{root / 'keyd.db'}"
        upgrade(db)
        engine = make_engine(db)
        config = Config(
            database=DatabaseConfig(db),
            issuer=IssuerConfig(url=issuer.url, rate_limit=0),
            sources=(DirectorySourceConfig("dir", keys),),
        )
        with IssuerClient(issuer.url, clock=clock) as client:
            probe = build_probe_services(config, clock, client, None, on_round=None)
            tokens = ApiTokenProvider(manager.path, client, AssertionSigner(clock), clock)
            with ZitadelKeyAPI(issuer.url, tokens, clock=clock) as api:
                policy = RotationPolicy(overlap=timedelta(0), algorithm=args.algorithm)
                services = RotationServices(
                    api=api,
                    publisher=Publisher(config.sources, None),
                    prove=probe_prover(probe, policy),
                    clock=clock,
                    policy=policy,
                )
                scan_all(config, engine, clock)
                start = time.perf_counter()
                report = probe_due(engine, replace(probe), clock.now())
                probe_seconds = time.perf_counter() - start
                assert report.counts() == {"ok": args.keys}, report.counts()

                start = time.perf_counter()
                published = rotate_due(engine, services, clock.now()).rows
                scan_all(config, engine, clock)  # the new key files are seen …
                probe_due(engine, probe, clock.now())  # … probed …
                retired = [rotate_key(engine, services, r.old_key_id) for r in published]  # … retired
                rotate_seconds = time.perf_counter() - start
        states = {r.state for r in store.all_rotations(engine)}
        assert states == {"retired"} and len(retired) == args.keys, states
        assert len(issuer.keys()) == args.keys + 1  # one per user, plus keyd's own
        engine.dispose()
    per_rotation, per_probe = rotate_seconds / args.keys, probe_seconds / args.keys
    print(
        f"{args.keys} rotations ({args.algorithm}) end to end: {rotate_seconds:.2f} s, "
        f"{per_rotation * 1000:.1f} ms per rotation"
    )
    print(
        f"{args.keys} probes (one per key, same run): {probe_seconds:.2f} s, "
        f"{per_probe * 1000:.1f} ms per probe (8 in parallel)"
    )
    print(f"rotation / probe: {per_rotation / per_probe:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
