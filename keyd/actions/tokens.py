"""Token write-back: keep a fresh access token per service user in Vault
KV v2 (and optionally a file) (README "Validation probe and token write-back", docs/architecture.md §5).

Per sink (one row in ``tokens`` per target path):
- refresh at ``issued + 2/3·TTL − random[0, TTL/20)``;
- mint with the key (fast retries inside the round), then write with
  check-and-set against the version keyd last wrote; on a mismatch look at
  what is there (``tokenvault.judge``): keyd's own lost write is taken
  over, a foreign write or an unmanaged secret is refused (event + alert)
  unless ``tokens.adopt``;
- read back, record the version; the file sink follows Vault. A round
  first does all its CAS writes, then reads them back with ONE OpenBao
  detailed-metadata listing per folder: KV v2 versions are immutable and
  the write was check-and-set, so "current version is still the N the
  write returned" proves Vault serves what keyd wrote
  (``tokenvault.listed``). Where the listing cannot tell (HashiCorp Vault,
  no ``list`` in the policy, no entry, a pending deletion) the secret is
  read back. A read-back showing another version is handled like a CAS
  mismatch (``_recover``: look, judge, write once more).
- On failure the old token stays in place and the sink retries with
  backoff; a token is never replaced by an older or empty one.

Tokens live only in ``Secret`` and in the Vault write payload; never in
logs, the database, exceptions or metrics.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from keyd.actions import tokenvault as tv
from keyd.actions.filesink import safe_join
from keyd.actions.tokensink import (
    Outcome,
    TokenPolicy,
    TokenResult,
    TokenServices,
    Written,
    confirm_one,
    refresh_at,
    write_one,
)
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.checks.probe import RateLimiter
from keyd.clients.issuer import IssuerClient
from keyd.clock import Clock
from keyd.config import Config, TokensConfig
from keyd.errors import ConfigError
from keyd.store import tokens as store
from keyd.store.keys import KeyRecord
from keyd.store.snapshot import Engine
from keyd.store.tokens import Assignment, SinkTarget, SinkUpdate
from keyd.vocab import TokenOutcome

__all__ = [
    "TokenPolicy",
    "TokenReport",
    "TokenResult",
    "TokenServices",
    "build_token_services",
    "plan_lines",
    "plan_sinks",
    "refresh_at",
    "refresh_tokens",
]

log = logging.getLogger(__name__)
_In = TypeVar("_In")
_Out = TypeVar("_Out")

FLUSH_EVERY = 100  # record outcomes in batches (see store.tokens.apply_updates)


@dataclass
class TokenReport:
    at: datetime
    results: list[TokenResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # keys that cannot get a sink
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


def build_token_services(
    config: Config,
    clock: Clock,
    client: IssuerClient,
    vault: tv.TokenVault | None,
    *,
    signer: AssertionSigner | None = None,
    limiter: RateLimiter | None = None,
) -> TokenServices:
    """``TokenServices`` for ``config`` (``[tokens]``, ``[issuer]`` and
    ``[vault]`` required). Pass the probe's ``limiter`` so both stages
    share one request budget at the issuer."""
    if config.tokens is None:
        raise ConfigError("tokens", "token write-back is off (no [tokens] section)")
    if config.issuer is None or vault is None:
        raise ConfigError("tokens", "token write-back needs [issuer] and [vault]")
    tv.check_template(config.tokens.path)
    issuer = config.issuer
    signer = signer or AssertionSigner(clock, lifetime=issuer.assertion_lifetime, skew=issuer.clock_skew)
    scopes = tuple(dict.fromkeys((*issuer.scopes, *config.tokens.scopes)))
    return TokenServices(
        tokens=config.tokens,
        client=client,
        signer=signer,
        vault=vault,
        clock=clock,
        load_key=make_key_loader(config.sources, vault, config.timezone),
        scopes=scopes,
        policy=TokenPolicy(concurrency=max(1, issuer.concurrency)),
        limiter=limiter or RateLimiter(issuer.rate_limit, clock),
        alerts=config.alerts,
    )


def plan_lines(report: TokenReport) -> list[str]:
    """One line per sink a dry run found new or due (for ``keyd check --dry-run``)."""
    return [
        f"would {'create' if r.outcome == TokenOutcome.NEW else 'refresh'} the token of key "
        f"{r.key_id} at {r.ref}"
        for r in report.results
    ]


def plan_sinks(candidates: Sequence[KeyRecord], cfg: TokensConfig) -> tuple[list[Assignment], list[str]]:
    """Which key feeds which path. Selectors narrow the keys; when several
    keys of one principal map to one path (rotation overlap), the one that
    expires last wins (unknown expiry counts as earliest)."""
    tv.check_template(cfg.path)
    best: dict[str, tuple[KeyRecord, str]] = {}
    errors: list[str] = []
    for key in candidates:
        if not _selected(key, cfg):
            continue
        try:
            path = tv.render_path(cfg.path, principal=key.principal, key_id=key.key_id)
        except tv.TokenPathError as exc:
            errors.append(f"key {key.key_id}: {exc}")
            continue
        held = best.get(path)
        if held is None or _rank(key) > _rank(held[0]):
            best[path] = (key, path)
    out = []
    for key, path in best.values():
        file_path = None
        if cfg.file_dir is not None:
            file_path = str(safe_join(cfg.file_dir, path + ".json"))
        out.append(Assignment(key.pk, cfg.mount, path, file_path))
    return out, errors


def _rank(key: KeyRecord) -> tuple[float, str]:
    return (key.expires_at.timestamp() if key.expires_at else 0.0, key.key_id)


def _selected(key: KeyRecord, cfg: TokensConfig) -> bool:
    if cfg.principals and key.principal not in cfg.principals:
        return False
    if cfg.sources:
        return any(
            loc.source == sel or fnmatch.fnmatch(loc.ref, sel) for loc in key.files for sel in cfg.sources
        )
    return True


def refresh_tokens(
    engine: Engine, services: TokenServices, now: datetime, *, dry_run: bool = False, limit: int | None = None
) -> TokenReport:
    """Bring every due token sink up to date at ``now``.

    First the sink rows are made to match the config (every active,
    selected service-user key gets one), then each due sink is minted and
    written in a bounded pool, then the writes are read back (one listing
    per folder, see module doc) and recorded. Outcomes are committed in
    batches of ``FLUSH_EVERY`` (one transaction each, not one per sink: on
    SQLite each commit is an fsync), so a crash loses at most the records
    of the writes not yet read back plus one batch, which the next run
    repairs from Vault (keyd's own unrecorded write is recognised). ``dry_run``
    writes nothing (neither DB nor Vault) and reports which sinks are new
    or due. Raises only for an unusable template (``TokenPathError``) or a
    broken database.
    """
    report = TokenReport(at=now, dry_run=dry_run)
    candidates = store.token_candidates(engine)
    assignments, report.errors = plan_sinks(candidates, services.tokens)
    for problem in report.errors:
        log.error("token write-back: %s", problem)
    if dry_run:
        return _dry_run(engine, assignments, now, report, candidates)
    store.ensure_sinks(engine, assignments, now)
    due = store.due_sinks(engine, now, limit=limit, keys={k.pk: k for k in candidates})
    if not due:
        return report
    pending: list[SinkUpdate] = []
    try:
        for result, update in _round(due, services):
            report.results.append(result)
            pending.append(update)
            if len(pending) >= FLUSH_EVERY:
                store.apply_updates(engine, pending)
                pending = []
    finally:
        store.apply_updates(engine, pending)  # what finished is kept even if a worker died
    log.info("token write-back: %s", report.counts())
    return report


def _round(due: Sequence[SinkTarget], services: TokenServices) -> Iterator[Outcome]:
    """Mint and write every due sink in a bounded pool, then read all the
    writes back (one listing per folder, module doc); outcomes as they come."""
    workers = max(1, min(services.policy.concurrency, len(due)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyd-token") as pool:
        unconfirmed: list[Written] = []
        for step in _pooled(pool, lambda s: write_one(s, services), due):
            if isinstance(step, Written):
                unconfirmed.append(step)
            else:
                yield step
        listings = tv.folder_listings(services.vault, [w.folder for w in unconfirmed])
        yield from _pooled(pool, lambda w: confirm_one(w, listings.get(w.folder), services), unconfirmed)


def _pooled(pool: Executor, fn: Callable[[_In], _Out], items: Iterable[_In]) -> Iterator[_Out]:
    for future in as_completed([pool.submit(fn, item) for item in items]):
        yield future.result()


def _dry_run(
    engine: Engine,
    assignments: list[Assignment],
    now: datetime,
    report: TokenReport,
    candidates: Sequence[KeyRecord],
) -> TokenReport:
    known = {(s.mount, s.path) for s in store.all_sinks(engine)}
    keys = {k.pk: k for k in candidates}
    for a in assignments:
        if (a.mount, a.path) not in known:
            key = keys[a.key_pk]
            report.results.append(
                TokenResult(
                    key_id=key.key_id,
                    principal=key.principal,
                    ref=f"{a.mount}/{a.path}",
                    outcome=TokenOutcome.NEW,
                )
            )
    for s in store.due_sinks(engine, now):
        report.results.append(
            TokenResult(
                key_id=s.key.key_id,
                principal=s.key.principal,
                ref=s.ref,
                outcome=TokenOutcome.DUE,
                vault_version=s.vault_version,
                expires_at=s.expires_at,
            )
        )
    return report
