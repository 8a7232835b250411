"""Probe and write-back throughput (README "Validation probe and token write-back").

Part 1, probes: N keys (default 1,000) probed against the loopback test
authorization server (a separate process, so server CPU is not charged to
the client's GIL):
- keyd: ``probe_due`` over a SQLite inventory (history rows and schedule
  written), bounded pool over one pooled ``IssuerClient``, keys loaded
  once by the inventory scan and re-read from their files per probe;
- naive, sequential, the official SDK's way (docs/zitadel.md §6): read the key
  file, hand the PEM string to PyJWT for every assertion, a new HTTP
  connection per request.
Target: keyd ≥ 10 × naive.

Part 2, Vault write-backs to an OpenBao dev server: keyd's
``refresh_tokens`` for N sinks (tokens from a stub issuer, so only signing
and the Vault work are timed: inspect + mark + CAS write + read-back on
the first round, CAS write per sink + one detailed-metadata listing per
folder as the read-back on a refresh round) vs N bare sequential hvac
writes of the same payload. Target: keyd ≤ 1.5 × bare.

The RSA keys come from a pool of 32 (generation is slow); key ids and
principals are distinct. HTTP requests per sink are counted for both
sides of part 2. Usage: python bench/probe.py [--keys 1000]
[--naive-keys 1000] [--concurrency 8] [--skip-vault | --vault-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import jwt  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from keyd.actions.probe import ProbeServices, probe_due
from keyd.actions.tokens import TokenPolicy, TokenServices, refresh_tokens  # noqa: E402
from keyd.checks.assertion import AssertionSigner  # noqa: E402
from keyd.checks.keyload import make_key_loader  # noqa: E402
from keyd.checks.probe import ProbePolicy  # noqa: E402
from keyd.clients.issuer import Discovery, IssuerClient, TokenResponse  # noqa: E402
from keyd.clients.vault import VaultClient  # noqa: E402
from keyd.clock import Clock, SystemClock  # noqa: E402
from keyd.config import DirectorySourceConfig, TokensConfig  # noqa: E402
from keyd.redact import Secret  # noqa: E402
from keyd.sources.keyfile import read_keyfile  # noqa: E402
from keyd.store.engine import make_engine  # noqa: E402
from keyd.store.models import Base  # noqa: E402
from tests.support.keyrows import add_key  # noqa: E402
from tests.support.keys import make_key_file  # noqa: E402
from tests.support.openbao import OpenBao  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def start_issuer() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.issuer", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def make_keys(n: int, keydir: Path, url: str) -> list[Any]:
    made = []
    with httpx.Client(base_url=url) as admin:
        for _ in range(n):
            key = make_key_file(keydir, expires_at=None)
            pem = key.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            admin.post(
                "/_admin/keys",
                json={"principal": key.principal, "key_id": key.key_id, "public_key_pem": pem.decode()},
            ).raise_for_status()
            made.append(key)
    return made


def inventory(db: Path, keys: list[Any], clock: Clock) -> Any:
    engine = make_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)
    for key in keys:  # the scan: full validation once, cached by PEM hash
        add_key(engine, read_keyfile(key.path), ref=str(key.path), now=clock.now())
    return engine


def bench_keyd(engine: Any, url: str, keydir: Path, concurrency: int) -> tuple[float, dict]:
    clock = SystemClock()
    with IssuerClient(url, clock=clock, max_connections=concurrency) as client:
        client.discover()
        services = ProbeServices(
            client=client,
            signer=AssertionSigner(clock),
            clock=clock,
            load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, UTC),
            policy=ProbePolicy(concurrency=concurrency, rate_limit=0),
        )
        start = time.perf_counter()
        report = probe_due(engine, services, clock.now())
        return time.perf_counter() - start, report.counts()


def bench_naive(keys: list[Any], url: str) -> tuple[float, int]:
    ok = 0
    start = time.perf_counter()
    for key in keys:
        doc = json.loads(Path(key.path).read_text())  # the SDK reads the file per assertion
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": doc["userId"], "sub": doc["userId"], "aud": url, "iat": now, "exp": now + 3600},
            doc["key"],
            algorithm="RS256",
            headers={"kid": doc["keyId"]},
        )
        resp = httpx.post(
            url + "/oauth/v2/token",
            data={  # new connection per request
                "grant_type": GRANT,
                "assertion": assertion,
                "scope": "openid",
            },
        )
        ok += resp.status_code == 200 and "access_token" in resp.json()
    return time.perf_counter() - start, ok


@dataclass
class StubIssuer:
    """Hands out tokens instantly: isolates the Vault half of write-back."""

    clock: Clock
    n: int = 0

    def discover(self) -> Discovery:
        return Discovery("http://127.0.0.1:1", "http://127.0.0.1:1/t", None, None)

    def request_token(self, assertion: Secret, scopes: Any) -> TokenResponse:
        self.n += 1
        return TokenResponse(
            Secret(f"zat_bench_{self.n:06d}_{'x' * 40}"), "Bearer", 43200, "openid", self.clock.now()
        )


class RequestCounter:
    """Counts HTTP requests sent through ``requests`` (hvac's transport), by
    method and KV v2 endpoint, so the Vault figures can be explained."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._send = requests.Session.send

    def __enter__(self) -> RequestCounter:
        counts, send = self.counts, self._send

        def counting(session: requests.Session, request: Any, **kw: Any) -> Any:
            parts = urlsplit(request.url).path.split("/")  # /v1/<mount>/<endpoint>/...
            what = "/".join(parts[2:]) if parts[2:3] == ["auth"] else "/".join(parts[3:4])
            counts[f"{request.method} {what}"] += 1
            return send(session, request, **kw)

        requests.Session.send = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        requests.Session.send = self._send  # type: ignore[method-assign]

    def per(self, n: int) -> str:
        total = sum(self.counts.values())
        detail = ", ".join(f"{k} {v / n:g}" for k, v in sorted(self.counts.items()))
        return f"{total / n:g} requests each: {detail}"


def timed(fn: Any) -> tuple[float, RequestCounter]:
    with RequestCounter() as counter:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, counter


def bench_vault(engine: Any, keydir: Path, n: int, concurrency: int) -> dict[str, Any]:
    clock = SystemClock()
    with OpenBao.start() as bao, VaultClient(bao.vault_config(), clock) as vault:
        services = TokenServices(
            tokens=TokensConfig(path="bench/keyd/{principal}"),
            client=StubIssuer(clock),  # type: ignore[arg-type]
            signer=AssertionSigner(clock),
            vault=vault,
            clock=clock,
            load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, UTC),
            policy=TokenPolicy(concurrency=concurrency),
            rng=random.Random(1),
        )
        out: dict[str, Any] = {}
        rounds = [("first", clock.now()), ("refresh", clock.now() + timedelta(hours=9))]
        for name, at in rounds:
            report: list[Any] = []
            out[name] = timed(
                lambda at=at, report=report: report.append(refresh_tokens(engine, services, at))
            )
            assert report[0].counts() == {"written": n}, report[0].counts()
        # the same payload shape keyd writes (a 57-character token, a 18-digit key id)
        payload = {
            "access_token": "zat_bench_000001_" + "x" * 40,
            "token_type": "Bearer",
            "expires_at": "2030-01-01T00:00:00Z",
            "issued_at": "2029-12-31T12:00:00Z",
            "key_id": "3" * 18,
            "scope": "openid",
        }
        kv = bao.client.secrets.kv.v2  # hvac's defaults: one keep-alive session
        bao.client.adapter.close()

        def bare(prefix: str) -> None:
            for i in range(n):
                kv.create_or_update_secret(path=f"bench/{prefix}/{i}", secret=payload, mount_point="secret")

        out["bare"] = timed(lambda: bare("bare"))
        bao.client.adapter.session.trust_env = False  # what keyd's session does (vault.py)
        out["bare_pinned"] = timed(lambda: bare("pinned"))
    return out


def print_vault(v: dict[str, Any], n: int, concurrency: int) -> None:
    (t_first, c_first), (t_again, c_again) = v["first"], v["refresh"]
    (t_bare, c_bare), (t_pinned, _) = v["bare"], v["bare_pinned"]
    print(
        f"vault: keyd first write  {n} sinks in {t_first:.2f}s ({t_first / t_bare:.2f}x bare; "
        f"{c_first.per(n)})"
    )
    print(
        f"vault: keyd refresh      {n} sinks in {t_again:.2f}s ({t_again / t_bare:.2f}x bare; "
        f"target <= 1.5x; {c_again.per(n)}; pool of {concurrency})"
    )
    print(f"vault: bare hvac writes  {n} in {t_bare:.2f}s (sequential, hvac defaults; {c_bare.per(n)})")
    print(
        f"vault: bare, env pinned  {n} in {t_pinned:.2f}s (hvac with trust_env off, as keyd; "
        f"refresh = {t_again / t_pinned:.2f}x this)"
    )


def run_probes(engine: Any, keys: list[Any], url: str, keydir: Path, args: argparse.Namespace) -> None:
    t_keyd, counts = bench_keyd(engine, url, keydir, args.concurrency)
    t_naive, ok = bench_naive(keys[: args.naive_keys], url)
    keyd_rate, naive_rate = args.keys / t_keyd, args.naive_keys / t_naive
    print(
        f"probe: keyd  {args.keys} keys in {t_keyd:.2f}s = {keyd_rate:.0f} keys/s "
        f"({counts}, concurrency {args.concurrency})"
    )
    print(
        f"probe: naive {args.naive_keys} keys in {t_naive:.2f}s = "
        f"{naive_rate:.1f} keys/s ({ok} ok, sequential, PEM per assertion, "
        "new connection per request)"
    )
    print(f"probe: ratio {keyd_rate / naive_rate:.1f}x (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--naive-keys", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-vault", action="store_true")
    parser.add_argument(
        "--vault-only",
        action="store_true",
        help="skip the probe part (keys are still registered and inventoried)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    proc, url = start_issuer()
    try:
        with tempfile.TemporaryDirectory(prefix="keyd-bench-") as tmp:
            keydir = Path(tmp) / "keys"
            keys = make_keys(args.keys, keydir, url)
            engine = inventory(Path(tmp) / "keyd.db", keys, SystemClock())
            if not args.vault_only:
                run_probes(engine, keys, url, keydir, args)
            if not args.skip_vault:
                v = bench_vault(engine, keydir, args.keys, args.concurrency)
                print_vault(v, args.keys, args.concurrency)
            engine.dispose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("note: shared, noisy 2-core machine; figures vary between runs")


if __name__ == "__main__":
    main()
