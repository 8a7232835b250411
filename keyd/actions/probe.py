"""Run probe rounds (README "Validation probe and token write-back"): the side-effect half of
``keyd.checks.probe`` (outcome classes, policy, rate limiter, report types
live there; this module talks to the issuer and writes the outcome, which
is an action on the inventory).

``probe_due`` selects due keys, probes them in a bounded thread pool over
the one shared ``IssuerClient`` (fast retries inside the round, full
jitter), decides each key's new state and schedule, and records it all in
batches. A failure never advances the schedule as if it had succeeded.

``plan_probes`` is the dry-run half (``keyd check --dry-run``): it lists
the keys a round would probe and contacts nobody, because a probe is not
a read: it mints a real token, which the issuer records.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from keyd import progress
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import KeyLoader, SecretReader, make_key_loader
from keyd.checks.mint import mint, prove_application_key
from keyd.checks.probe import (
    HealthHook,
    ProbePolicy,
    ProbeReport,
    ProbeResult,
    RateLimiter,
    classify,
)
from keyd.clients.issuer import IssuerClient
from keyd.clock import Clock
from keyd.config import Config
from keyd.errors import (
    ConfigError,
    IssuerBadResponse,
    IssuerRejected,
    IssuerUnavailable,
    KeydError,
)
from keyd.redact import scrub
from keyd.retry import Random, backoff_delay, retry_call
from keyd.sources.keyfile import KeyFile
from keyd.store import probes as store
from keyd.store.alerts import note_issuer_health
from keyd.store.keys import KeyRecord
from keyd.store.probes import ProbeRecord
from keyd.store.snapshot import Engine
from keyd.timeutil import isoformat_z
from keyd.vocab import KeyKind, KeyStatus, ProbeOutcome

log = logging.getLogger(__name__)

FLUSH_EVERY = 200  # write results in batches: a killed round loses little
PLAN_CAP: Final = 20  # a dry run names this many due keys, then counts the rest


@dataclass
class ProbeServices:
    """Everything a probe round uses. Build once per daemon; thread-safe.

    ``on_round`` is called inside the transaction that records a round in
    which the issuer was contacted, with whether it was reachable; the
    daemon passes ``keyd.actions.alerts.note_issuer_health`` (checks may not
    import actions, so it is injected).
    """

    client: IssuerClient
    signer: AssertionSigner
    clock: Clock
    load_key: KeyLoader
    scopes: tuple[str, ...] = ("openid",)
    policy: ProbePolicy = field(default_factory=ProbePolicy)
    rng: Random = field(default_factory=random.Random)
    on_round: HealthHook | None = None
    limiter: RateLimiter | None = None

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.policy.rate_limit, self.clock)


def build_probe_services(
    config: Config,
    clock: Clock,
    client: IssuerClient,
    vault: SecretReader | None,
    *,
    on_round: HealthHook | None = note_issuer_health,
) -> ProbeServices:
    """``ProbeServices`` for ``config`` (``[issuer]`` required): signer with
    the configured assertion lifetime and skew, key loader over the
    configured sources, policy and rate limit from ``[issuer]``, and issuer
    health recorded for the alerts stage after every round."""
    issuer = config.issuer
    if issuer is None:
        raise ConfigError("issuer", "probes need an [issuer] section with url")
    signer = AssertionSigner(clock, lifetime=issuer.assertion_lifetime, skew=issuer.clock_skew)
    return ProbeServices(
        client=client,
        signer=signer,
        clock=clock,
        load_key=make_key_loader(config.sources, vault, config.timezone),
        scopes=issuer.scopes,
        policy=ProbePolicy.from_config(issuer),
        on_round=on_round,
    )


def probe_due(
    engine: Engine,
    services: ProbeServices,
    now: datetime,
    *,
    force_key_id: str | None = None,
    limit: int | None = None,
) -> ProbeReport:
    """Probe every active key due at ``now`` (or only ``force_key_id``,
    ignoring its schedule, backoff and any earlier rejection) and record the
    outcomes: one ``probes`` row per probe, the key's status, ``last_ok_at``,
    consecutive failures and next due time.

    Raises only for a broken database or an unknown ``force_key_id``
    (``UsageError``); issuer and key problems are outcomes, not exceptions.
    """
    if force_key_id is not None:
        targets = [store.target_by_key_id(engine, force_key_id)]
    else:
        targets = store.due_targets(engine, now, limit=limit)
    report = ProbeReport(at=now, more=limit is not None and len(targets) >= limit)
    if not targets:
        return report
    log.info("probing %d key(s)", len(targets))
    pending: list[ProbeRecord] = []
    workers = min(services.policy.concurrency, len(targets))
    progress.begin("probing", len(targets), "keys")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyd-probe") as pool:
        futures = [pool.submit(probe_one, t, services) for t in targets]
        for future in as_completed(futures):
            record, result = future.result()
            progress.advance("probing")
            pending.append(record)
            report.results.append(result)
            if len(pending) >= FLUSH_EVERY:
                store.record_probe_results(engine, pending)
                pending = []
    progress.end("probing")
    _flush_last(engine, pending, report, services)
    log.info("probe round done: %s", report.counts())
    return report


def plan_probes(engine: Engine, issuer_url: str, now: datetime, *, cap: int = PLAN_CAP) -> list[str]:
    """What ``probe_due`` would do at ``now``, without doing it: a headline
    with the number of due keys, then the first ``cap`` of them in probe
    order and how many more. No request reaches the issuer and nothing is
    written. Empty when no key is due (nothing was skipped)."""
    total, keys = store.due_preview(engine, now, limit=cap)
    if not total:
        return []
    lines = [f"would probe {total} key(s) at {issuer_url} (skipped: a probe mints a real token)"]
    for key in keys:
        last = (
            "never probed"
            if key.last_probe_at is None
            else f"last probe {key.last_probe_outcome or 'unreadable'} at {isoformat_z(key.last_probe_at)}"
        )
        lines.append(f"would probe key {key.key_id} ({key.principal}): {last}")
    if total > len(keys):
        lines.append(f"... and {total - len(keys)} more key(s) due")
    return lines


def _flush_last(
    engine: Engine, pending: list[ProbeRecord], report: ProbeReport, services: ProbeServices
) -> None:
    reachable = report.issuer_reachable
    hook = services.on_round
    after = None
    if hook is not None and reachable is not None:
        at = services.clock.now()

        def after(session: Any) -> None:
            hook(session, reachable, at)

    store.record_probe_results(engine, pending, after=after)


def probe_one(target: KeyRecord, services: ProbeServices) -> tuple[ProbeRecord, ProbeResult]:
    """Probe one key (fast retries included) and decide its new state.
    Never raises for issuer or key problems."""
    clock = services.clock
    try:
        keyfile = services.load_key(target)
    except Exception as exc:  # noqa: BLE001 - KeydError, or a surprise: this key only
        if not isinstance(exc, KeydError):
            log.exception("probe %s: unexpected error reading the key", target.key_id)
            exc = KeydError(f"internal error while reading the key ({type(exc).__name__})")
        log.warning("probe %s: key file unavailable: %s", target.key_id, exc)
        return _decide(target, services, clock.now(), ProbeOutcome.UNREADABLE, exc, attempts=0, latency=None)
    counter = _Attempts(services)
    try:
        retry_call(
            lambda: counter.run(keyfile),
            attempts=services.policy.fast_attempts,
            base=services.policy.fast_base,
            cap=services.policy.fast_cap,
            sleep=clock.sleep,
            rng=services.rng,
            what=f"probe {target.key_id}",
        )
    except (IssuerRejected, IssuerUnavailable, IssuerBadResponse) as exc:
        return _decide(
            target,
            services,
            clock.now(),
            classify(exc),
            exc,
            attempts=counter.attempts,
            latency=counter.latency_ms,
        )
    except KeydError as exc:  # e.g. a key the signer cannot use
        log.warning("probe %s: %s", target.key_id, exc)
        return _decide(
            target,
            services,
            clock.now(),
            ProbeOutcome.UNREADABLE,
            exc,
            attempts=counter.attempts,
            latency=counter.latency_ms,
        )
    except Exception as exc:  # noqa: BLE001 - one key's surprise never ends the round
        log.exception("probe %s: unexpected error", target.key_id)
        error = KeydError(
            f"internal error while probing ({type(exc).__name__}); run with --debug and report it"
        )
        return _decide(
            target,
            services,
            clock.now(),
            ProbeOutcome.UNREADABLE,
            error,
            attempts=counter.attempts,
            latency=counter.latency_ms,
        )
    return _decide(
        target,
        services,
        clock.now(),
        ProbeOutcome.OK,
        None,
        attempts=counter.attempts,
        latency=counter.latency_ms,
    )


class _Attempts:
    """Runs one attempt (rate-limited) and remembers count and latency."""

    def __init__(self, services: ProbeServices) -> None:
        self.services = services
        self.attempts = 0
        self.latency_ms: float | None = None

    def run(self, keyfile: KeyFile) -> None:
        s = self.services
        self.attempts += 1
        if s.limiter is not None:
            s.limiter.acquire()
        start = s.clock.monotonic()
        try:
            if keyfile.kind == KeyKind.APPLICATION:
                prove_application_key(keyfile, s.client, s.signer)
            else:
                mint(keyfile, s.client, s.signer, s.scopes)  # the token is dropped unused
        finally:
            self.latency_ms = round((s.clock.monotonic() - start) * 1000.0, 3)


def _decide(
    target: KeyRecord,
    services: ProbeServices,
    at: datetime,
    outcome: str,
    exc: KeydError | None,
    *,
    attempts: int,
    latency: float | None,
) -> tuple[ProbeRecord, ProbeResult]:
    policy, rng = services.policy, services.rng
    status: str | None = None
    failures = target.probe_failures + 1
    next_at: datetime | None
    if outcome == ProbeOutcome.OK:
        failures = 0
        status = KeyStatus.ACTIVE if target.status == KeyStatus.REJECTED else None
        next_at = at + policy.interval - policy.interval * (policy.jitter * rng.random())
    elif outcome == ProbeOutcome.REJECTED:
        status = KeyStatus.REJECTED if target.status in (KeyStatus.ACTIVE, KeyStatus.REJECTED) else None
        next_at = None  # final until the key changes or an operator forces a probe
    else:
        cap = min(policy.slow_cap, policy.interval)
        delay = max(policy.slow_base.total_seconds() / 2, backoff_delay(failures, policy.slow_base, cap, rng))
        next_at = at + timedelta(seconds=delay)
    message = scrub(str(exc))[:1000] if exc is not None else None
    issuer_exc = exc if isinstance(exc, IssuerRejected | IssuerUnavailable | IssuerBadResponse) else None
    diagnosis = exc.diagnosis if isinstance(exc, IssuerRejected) else None
    status_code = issuer_exc.status if issuer_exc else None
    error_code = issuer_exc.error_code if issuer_exc else None
    _log_outcome(target, outcome, diagnosis, message, attempts)
    record = ProbeRecord(
        key_pk=target.pk,
        content_hash=target.content_hash,
        at=at,
        outcome=None if outcome == ProbeOutcome.UNREADABLE else outcome,
        http_status=status_code,
        error_code=error_code,
        diagnosis=diagnosis,
        message=message,
        latency_ms=latency,
        attempts=max(attempts, 1),
        next_probe_at=next_at,
        failures=failures,
        status=status,
        ok=outcome == ProbeOutcome.OK,
    )
    result = ProbeResult(
        key_id=target.key_id,
        principal=target.principal,
        kind=target.kind,
        outcome=outcome,
        at=at,
        diagnosis=diagnosis,
        message=message,
        http_status=status_code,
        error_code=error_code,
        attempts=attempts,
        latency_ms=latency,
        next_probe_at=next_at,
    )
    return record, result


def _log_outcome(
    target: KeyRecord, outcome: str, diagnosis: str | None, message: str | None, attempts: int
) -> None:
    if outcome == ProbeOutcome.OK:
        # DEBUG: an INFO line per key costs a round more CPU than the rest
        # of its bookkeeping; the round's summary line counts the oks
        log.debug("probe %s (%s): ok after %d attempt(s)", target.key_id, target.principal, attempts)
    elif outcome == ProbeOutcome.REJECTED:
        log.warning("probe %s (%s): rejected (%s): %s", target.key_id, target.principal, diagnosis, message)
    else:
        log.warning(
            "probe %s (%s): %s after %d attempt(s): %s",
            target.key_id,
            target.principal,
            outcome,
            attempts,
            message,
        )
