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

import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from keyd import progress
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import KeyLoader, SecretReader, make_key_loader
from keyd.checks.mint import explained, proof_request
from keyd.checks.probe import (
    HealthHook,
    ProbePolicy,
    ProbeReport,
    ProbeResult,
    RateLimiter,
    classify,
)
from keyd.clients.issuer import IssuerClient, Prepared
from keyd.clients.multiplex import Completed, Multiplexer
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
from keyd.retry import Random, backoff_delay, next_attempt_in, retry_call
from keyd.sources.keyfile import KeyFile
from keyd.store import probes as store
from keyd.store.alerts import note_issuer_health
from keyd.store.keys import KeyRecord
from keyd.store.probes import ProbeRecord
from keyd.store.snapshot import Engine
from keyd.timeutil import isoformat_z
from keyd.vocab import KeyStatus, ProbeOutcome

log = logging.getLogger(__name__)

Outcome = tuple[ProbeRecord, ProbeResult]
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

    def remote(self, target: KeyRecord) -> bool:
        """Whether loading ``target``'s key may wait on the network (Vault),
        as ``SourceKeyLoader`` tells; a loader that cannot tell is local."""
        remote = getattr(self.load_key, "remote", None)
        return bool(remote(target)) if callable(remote) else False


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
    progress.begin("probing", len(targets), "keys")
    with services.client.multiplexer() as mux:
        outcomes = _threaded(targets, services) if mux is None else _Round(targets, services, mux).run()
        for record, result in outcomes:
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


def _threaded(targets: list[KeyRecord], services: ProbeServices) -> Iterator[Outcome]:
    """The round in ``concurrency`` worker threads, each probing one key at
    a time with blocking requests: where the issuer client has no
    ``Multiplexer`` (a proxied issuer, a test's transport)."""
    workers = min(services.policy.concurrency, len(targets))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyd-probe") as pool:
        futures = [pool.submit(probe_one, t, services) for t in targets]
        for future in as_completed(futures):
            yield future.result()


def probe_one(target: KeyRecord, services: ProbeServices) -> Outcome:
    """Probe one key (fast retries included) and decide its new state.
    Never raises for issuer or key problems."""
    clock = services.clock
    try:
        keyfile = services.load_key(target)
    except Exception as exc:  # noqa: BLE001 - KeydError, or a surprise: this key only
        return _unreadable(target, services, exc)
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
    except Exception as exc:  # noqa: BLE001 - one key's surprise never ends the round
        outcome, error = _failure(target, exc)
        return _decide(
            target,
            services,
            clock.now(),
            outcome,
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
        try:  # the same request a multiplexed round sends; a token is dropped unused
            explained(
                keyfile, s.signer, lambda: s.client.send(proof_request(keyfile, s.client, s.signer, s.scopes))
            )
        finally:
            self.latency_ms = round((s.clock.monotonic() - start) * 1000.0, 3)


class _Probe:
    """One key's probe in a multiplexed round."""

    __slots__ = ("target", "keyfile", "attempts", "started", "latency_ms")

    def __init__(self, target: KeyRecord, keyfile: KeyFile) -> None:
        self.target, self.keyfile = target, keyfile
        self.attempts = 0
        self.started = 0.0
        self.latency_ms: float | None = None


class _Round:
    """A probe round on the calling thread: up to ``concurrency`` keys at a
    time, each loaded, signed and sent, then the next one while the issuer
    answers (``keyd.clients.multiplex``: no thread hands the GIL to another
    at every system call). The rate limit and the fast retries wait on
    timers, not in a sleeping thread; a key in Vault is read in a worker
    thread, so a slow Vault holds its places, not the round; decisions are
    ``probe_one``'s."""

    def __init__(self, targets: list[KeyRecord], services: ProbeServices, mux: Multiplexer) -> None:
        self.services, self.mux = services, mux
        self.todo = deque(targets)
        self.places = min(services.policy.concurrency, len(targets))
        self.busy = 0  # keys taken and not yet decided
        self.done: deque[Outcome] = deque()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        #: keys read from Vault in worker threads (a network read would hold
        #: the round), handed back through ``arrived`` and ``mux.wake``
        self.loaders: ThreadPoolExecutor | None = None
        self.loading = 0
        self.arrived: deque[tuple[KeyRecord, Future[KeyFile]]] = deque()

    def run(self) -> Iterator[Outcome]:
        clock = self.services.clock
        try:
            while True:
                self._fill()
                while self.done:
                    yield self.done.popleft()
                if not self.busy and not self.todo:
                    return
                now = clock.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    heapq.heappop(self.timers)[2]()
                if self.done or self.arrived or (self.todo and self.busy < self.places):
                    continue
                wait = self.timers[0][0] - now if self.timers else None
                if self.mux.active or self.loading:
                    self.mux.poll(wait)
                elif wait is not None:
                    clock.sleep(wait)  # only timers left: a rate-limit slot or a retry's backoff
        finally:  # also when the caller stops early (a failed flush)
            self.mux.cancel()
            if self.loaders is not None:
                self.loaders.shutdown(wait=True)

    def _fill(self) -> None:
        while self.arrived:
            target, future = self.arrived.popleft()
            self.loading -= 1
            self._loaded(target, future.result)
        while self.busy < self.places and self.todo:
            target = self.todo.popleft()
            self.busy += 1
            if self.services.remote(target):
                self._load_elsewhere(target)
            else:
                self._loaded(target, partial(self.services.load_key, target))

    def _load_elsewhere(self, target: KeyRecord) -> None:
        if self.loaders is None:
            self.loaders = ThreadPoolExecutor(self.places, thread_name_prefix="keyd-probe-load")
        self.loading += 1
        future = self.loaders.submit(self.services.load_key, target)

        def arrived(done: Future[KeyFile]) -> None:
            self.arrived.append((target, done))
            self.mux.wake()

        future.add_done_callback(arrived)

    def _loaded(self, target: KeyRecord, load: Callable[[], KeyFile]) -> None:
        try:
            keyfile = load()
        except Exception as exc:  # noqa: BLE001 - KeydError, or a surprise: this key only
            self.busy -= 1
            self.done.append(_unreadable(target, self.services, exc))
            return
        self._attempt(_Probe(target, keyfile))

    def _later(self, seconds: float, then: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (self.services.clock.monotonic() + seconds, next(self._order), then))

    def _attempt(self, probe: _Probe) -> None:
        probe.attempts += 1
        limiter = self.services.limiter
        wait = limiter.reserve() if limiter is not None else 0.0
        if wait > 0:
            self._later(wait, lambda: self._send(probe))
        else:
            self._send(probe)

    def _send(self, probe: _Probe) -> None:
        s = self.services
        probe.started = s.clock.monotonic()
        try:
            prepared = proof_request(probe.keyfile, s.client, s.signer, s.scopes)
            wire = s.client.wire(prepared)
        except Exception as exc:  # noqa: BLE001 - e.g. a key the signer cannot use
            self._failed(probe, exc)
            return
        self.mux.start(wire, lambda result: self._answered(probe, prepared, result))

    def _answered(self, probe: _Probe, prepared: Prepared[Any], result: Completed | Exception) -> None:
        s = self.services
        probe.latency_ms = round((s.clock.monotonic() - probe.started) * 1000.0, 3)
        try:
            explained(probe.keyfile, s.signer, lambda: s.client.conclude(prepared, result))
        except Exception as exc:  # noqa: BLE001 - classified, or one key's surprise
            self._failed(probe, exc)
            return
        self._decided(probe, ProbeOutcome.OK, None)

    def _failed(self, probe: _Probe, exc: Exception) -> None:
        s = self.services
        policy = s.policy
        delay = next_attempt_in(
            exc,
            probe.attempts,
            policy.fast_attempts,
            policy.fast_base,
            policy.fast_cap,
            s.rng,
            what=f"probe {probe.target.key_id}",
        )
        if delay is not None:
            self._later(delay, lambda: self._attempt(probe))
            return
        outcome, error = _failure(probe.target, exc)
        self._decided(probe, outcome, error)

    def _decided(self, probe: _Probe, outcome: str, exc: KeydError | None) -> None:
        self.busy -= 1
        at = self.services.clock.now()
        self.done.append(
            _decide(
                probe.target,
                self.services,
                at,
                outcome,
                exc,
                attempts=probe.attempts,
                latency=probe.latency_ms,
            )
        )


def _unreadable(target: KeyRecord, services: ProbeServices, exc: Exception) -> Outcome:
    """The key's file could not be read now: no request was made."""
    if not isinstance(exc, KeydError):
        log.error("probe %s: unexpected error reading the key", target.key_id, exc_info=exc)
        exc = KeydError(f"internal error while reading the key ({type(exc).__name__})")
    log.warning("probe %s: key file unavailable: %s", target.key_id, exc)
    return _decide(
        target, services, services.clock.now(), ProbeOutcome.UNREADABLE, exc, attempts=0, latency=None
    )


def _failure(target: KeyRecord, exc: Exception) -> tuple[str, KeydError]:
    """The outcome a probe's last failed attempt stands for, and its error."""
    if isinstance(exc, IssuerRejected | IssuerUnavailable | IssuerBadResponse):
        return classify(exc), exc
    if isinstance(exc, KeydError):  # e.g. a key the signer cannot use
        log.warning("probe %s: %s", target.key_id, exc)
        return ProbeOutcome.UNREADABLE, exc
    log.error("probe %s: unexpected error", target.key_id, exc_info=exc)
    return ProbeOutcome.UNREADABLE, KeydError(
        f"internal error while probing ({type(exc).__name__}); run with --debug and report it"
    )


def _decide(
    target: KeyRecord,
    services: ProbeServices,
    at: datetime,
    outcome: str,
    exc: KeydError | None,
    *,
    attempts: int,
    latency: float | None,
) -> Outcome:
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
