"""``keyd check``'s verdict: Nagios plugin convention (0 ok, 1 warning,
2 critical, 3 unknown), a one-line summary with perfdata, details, and a
stable JSON document (``schema: "keyd.check/1"``).

Mapping (documented in the README):

* CRITICAL: any present key expired (by the clock, whatever its status
  column says), rejected by the issuer, or an invalid key file/secret; a
  rotation that failed, or is stuck (not published an hour after its last
  step, or three failed attempts in a row).
* WARNING: any present key expiring within the *largest* alert threshold
  (default 30d): the first alert mail is on its way, so the monitor
  agrees with the mailbox; an old key still not retired a day after its
  rotation's overlap ended.
* Token write-back (when ``[tokens]`` is configured): a sink that is
  failing, conflicting or unmanaged is WARNING; the token in place having
  expired (whatever the sink's state) is CRITICAL: a consumer reads a
  dead token.
* UNKNOWN: no critical or warning signal, but a configured source failed
  its last scan, the issuer was unreachable, a probe round proved no key
  at all (every answer unusable or missing: a bad answer means the issuer
  is up, not that the keys work), or a stage of the cycle failed: "all
  fine" cannot be claimed.

A dry run does not probe (a probe mints a real token), so its verdict
rests on the stored probe results: the keys' status (``rejected``) and
last error as the last real probe left them, and the issuer outage the
last real round recorded (``issuer.unavailable_since``).
* OK otherwise. Keys no longer found (``missing``) are not a problem by
  themselves: that is what a finished rotation looks like. They are
  counted in the perfdata only, as are ``unheld`` keys (ZITADEL lists
  them, no file holds them: each gets one alert). ``gone`` counts the
  rejected keys ZITADEL no longer lists (CRITICAL as every rejection);
  a policy finding of a zitadel source is a WARNING.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final

from keyd.actions.findings import policy_findings
from keyd.checks.expiry import evaluate, time_left, warn_window
from keyd.config import Config, ZitadelSourceConfig
from keyd.errors import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN, EXIT_WARNING
from keyd.redact import scrub
from keyd.report.render import line
from keyd.runtime import wiring
from keyd.runtime.cycle import CycleReport, Stage, run_cycle
from keyd.runtime.wiring import Services
from keyd.store import alerts as alert_store
from keyd.store import snapshot
from keyd.store.keys import KeyRecord
from keyd.store.rotations import RotationSnapshot, unfinished
from keyd.store.snapshot import LocationProblem, SourceSnapshot, TokenSnapshot
from keyd.timeutil import format_duration, isoformat_z, rfc3339_z
from keyd.vocab import CheckStatus, ExpiryStatus, KeyStatus, ProblemKind, RotationState, SinkState

SCHEMA: Final = "keyd.check/1"
EXIT_FOR: Final[dict[str, int]] = {
    CheckStatus.OK: EXIT_OK,
    CheckStatus.WARNING: EXIT_WARNING,
    CheckStatus.CRITICAL: EXIT_CRITICAL,
    CheckStatus.UNKNOWN: EXIT_UNKNOWN,
}
ROTATION_STUCK: Final = timedelta(hours=1)  # planned … proven should take minutes
ROTATION_STUCK_FAILURES: Final = 3
ROTATION_RETIRE_LATE: Final = timedelta(days=1)
COUNTERS: Final = (
    "keys",
    "expiring",
    "expired",
    "rejected",
    "invalid",
    "missing",
    "source_errors",
    "unheld",
    "gone",
)


@dataclass(frozen=True)
class Problem:
    severity: str  # vocab.CheckStatus, never OK
    kind: ProblemKind
    message: str
    key_id: str | None = None
    principal: str | None = None
    expires_at: datetime | None = None
    seconds_left: int | None = None
    ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "key_id": self.key_id,
            "principal": self.principal,
            "expires_at": rfc3339_z(self.expires_at) if self.expires_at else None,
            "seconds_left": self.seconds_left,
            "ref": self.ref,
        }


@dataclass
class Verdict:
    status: str
    at: datetime
    warn_within: timedelta
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    problems: list[Problem] = field(default_factory=list)
    sources: list[SourceSnapshot] = field(default_factory=list)
    cycle: CycleReport | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FOR[self.status]

    def summary(self) -> str:
        """``KEYD WARNING - 1 key expiring in 5d, 0 rejected | keys=12 ...``"""
        perf = " ".join(f"{name}={self.counts[name]}" for name in COUNTERS)
        return line(f"KEYD {self.status.upper()} - {self._headline()} | {perf}")

    def details(self) -> list[str]:
        lines = [f"{p.severity.upper()}: {p.message}" for p in self.problems]
        if self.cycle is not None and self.cycle.dry_run:
            lines += [f"dry run: skipped {text}" for text in self.cycle.skipped_side_effects]
        return [line(text) for text in lines]

    def to_json(self) -> dict[str, Any]:
        cycle = self.cycle
        return {
            "schema": SCHEMA,
            "status": self.status,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "at": isoformat_z(self.at),
            "dry_run": bool(cycle and cycle.dry_run),
            "warn_within_seconds": int(self.warn_within.total_seconds()),
            "counts": dict(self.counts),
            "problems": [p.to_json() for p in self.problems],
            "sources": [
                {
                    "name": s.name,
                    "ok": s.consecutive_failures == 0,
                    "consecutive_failures": s.consecutive_failures,
                    "last_error": scrub(s.last_error) if s.last_error else None,
                    "last_success_at": isoformat_z(s.last_success_at) if s.last_success_at else None,
                }
                for s in self.sources
            ],
            "stages": [s.to_json() for s in cycle.stages] if cycle else [],
            "skipped_side_effects": list(cycle.skipped_side_effects) if cycle else [],
        }

    def _headline(self) -> str:
        c = self.counts
        expiring = [p for p in self.problems if p.kind == ProblemKind.EXPIRING]
        soonest = min((p.seconds_left for p in expiring if p.seconds_left is not None), default=None)
        tokens = {
            s: sum(p.kind == ProblemKind.TOKEN and p.severity == s for p in self.problems)
            for s in (CheckStatus.CRITICAL, CheckStatus.WARNING)
        }
        if self.status == CheckStatus.CRITICAL:
            text = f"{c['expired']} expired, {c['rejected']} rejected, {c['invalid']} invalid"
            if tokens[CheckStatus.CRITICAL]:
                text += f", {tokens[CheckStatus.CRITICAL]} token(s) expired in place"
            return text + (f", {c['expiring']} expiring" if c["expiring"] else "")
        if self.status == CheckStatus.WARNING:
            when = f" in {time_left(soonest, 'short')}" if soonest is not None else ""
            noun = "key" if c["expiring"] == 1 else "keys"
            text = f"{c['expiring']} {noun} expiring{when}, {c['rejected']} rejected"
            return text + (
                f", {tokens[CheckStatus.WARNING]} token sink(s) failing"
                if tokens[CheckStatus.WARNING]
                else ""
            )
        if self.status == CheckStatus.UNKNOWN:
            return "; ".join(p.message for p in self.problems if p.severity == CheckStatus.UNKNOWN)
        noun = "key" if c["keys"] == 1 else "keys"
        return f"{c['keys']} {noun}, none expiring within {format_duration(self.warn_within)}"


@dataclass(frozen=True)
class PolicyFinding:
    key_id: str
    principal: str
    text: str  # "never expires", "lives 730d (limit 400d)", ...


def judge(
    config: Config,
    at: datetime,
    keys: Iterable[KeyRecord],
    locations: Sequence[LocationProblem],
    sources: Sequence[SourceSnapshot],
    cycle: CycleReport | None = None,
    *,
    issuer_down_since: datetime | None = None,
    gone: frozenset[str] = frozenset(),
    policy: Sequence[PolicyFinding] = (),
    rotations: Sequence[RotationSnapshot] = (),
    tokens: Sequence[TokenSnapshot] = (),
    counted: Mapping[str, int] | None = None,
) -> Verdict:
    """The verdict for this inventory at ``at`` (module docstring).
    ``issuer_down_since``: a stored outage to report when this cycle did
    not probe (dry run). ``counted``: keys not in ``keys`` because they
    cannot be a problem (the status page passes only the keys that need
    attention, ``keyd.store.page.attention``; the status line leaves out
    the quiet ones, ``snapshot.quiet``), added to the counts as they are
    (``keys``, ``missing``, ``unheld``)."""
    warn = warn_within(config)
    configured = {s.name for s in config.sources}
    verdict = Verdict(
        CheckStatus.OK, at, warn, cycle=cycle, sources=[s for s in sources if s.name in configured]
    )
    for key in keys:
        _judge_key(verdict, key, at, warn, config.timezone, removed=key.key_id in gone)
    for name, n in (counted or {}).items():
        verdict.counts[name] += n
    for finding in policy:
        verdict.problems.append(
            Problem(
                CheckStatus.WARNING,
                ProblemKind.POLICY,
                f"key {finding.key_id} ({finding.principal}) {finding.text} (policy, as ZITADEL lists it)",
                key_id=finding.key_id,
                principal=finding.principal,
            )
        )
    for loc in locations:
        verdict.counts["invalid"] += 1
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.INVALID,
                f"invalid key file {loc.ref} ({loc.source}): {_clean(loc.error)}",
                ref=loc.ref,
            )
        )
    for rotation in rotations:
        _judge_rotation(verdict, rotation, at)
    if config.tokens is not None:
        for sink in tokens:
            _judge_sink(verdict, sink, at)
    _judge_unknowns(verdict)
    if issuer_down_since is not None:
        verdict.problems.append(
            Problem(
                CheckStatus.UNKNOWN,
                ProblemKind.ISSUER,
                f"issuer unavailable since {isoformat_z(issuer_down_since)} "
                "(last probe round; a dry run does not probe)",
            )
        )
    verdict.status = _status(verdict)
    order: dict[str, int] = {CheckStatus.CRITICAL: 0, CheckStatus.WARNING: 1, CheckStatus.UNKNOWN: 2}
    verdict.problems.sort(key=lambda p: (order[p.severity], p.seconds_left or 0))
    return verdict


def warn_within(config: Config) -> timedelta:
    """How far ahead a verdict calls a key expiring (``warn_window``)."""
    return warn_window(config.alerts.thresholds)


def inventory_verdict(config: Config, engine: snapshot.Engine, at: datetime) -> Verdict:
    """``judge`` of the inventory alone (keys, invalid locations, sources;
    no cycle), for the daemon's status line after every scan. A key that is
    active and expires beyond the warning window (or never says when) adds
    only to ``counts["keys"]``, no problem, whatever else it holds: those
    are counted in SQL (``snapshot.quiet_keys``) and only the others are
    read and judged, so an idle inventory of 10^5 keys costs two queries,
    not 10^5 records (the same counts and status as judging them all)."""
    bound = at + warn_within(config)
    quiet = snapshot.quiet_keys(engine, bound)
    verdict = judge(
        config,
        at,
        snapshot.keys(engine, unless_quiet_after=bound),
        snapshot.location_problems(engine),
        snapshot.sources(engine),
        counted={"keys": quiet},
    )
    return verdict


def _judge_key(
    verdict: Verdict, key: KeyRecord, at: datetime, warn: timedelta, tz: tzinfo, *, removed: bool = False
) -> None:
    if key.status == KeyStatus.MISSING:
        verdict.counts["missing"] += 1
        return
    if key.status == KeyStatus.UNHELD:  # only ZITADEL knows it: nothing here can expire or fail
        verdict.counts["unheld"] += 1
        return
    verdict.counts["keys"] += 1
    view = evaluate(key.expires_at, at, tz, warn_before=warn)
    who = f"key {key.key_id} ({key.principal})"
    where = f" [{', '.join(key.refs)}]" if key.refs else ""
    common: dict[str, Any] = {
        "key_id": key.key_id,
        "principal": key.principal,
        "expires_at": view.expires_at,
        "seconds_left": view.seconds_left,
        "ref": key.refs[0] if key.refs else None,
    }
    if key.status == KeyStatus.EXPIRED or view.status == ExpiryStatus.EXPIRED:
        verdict.counts["expired"] += 1
        stamp = rfc3339_z(view.expires_at) if view.expires_at else "an unknown time"
        verdict.problems.append(
            Problem(CheckStatus.CRITICAL, ProblemKind.EXPIRED, f"{who} expired at {stamp}{where}", **common)
        )
    elif key.status == KeyStatus.REJECTED:
        verdict.counts["rejected"] += 1
        verdict.counts["gone"] += removed
        what = "was removed in ZITADEL" if removed else "is rejected by the issuer"
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.REJECTED,
                f"{who} {what}: {_clean(key.last_error)}{where}",
                **common,
            )
        )
    elif key.status == KeyStatus.INVALID:
        verdict.counts["invalid"] += 1
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.INVALID,
                f"{who} is invalid: {_clean(key.last_error)}{where}",
                **common,
            )
        )
    elif view.status == ExpiryStatus.EXPIRING and view.expires_at is not None:
        verdict.counts["expiring"] += 1
        verdict.problems.append(
            Problem(
                CheckStatus.WARNING,
                ProblemKind.EXPIRING,
                f"{who} expires at {rfc3339_z(view.expires_at)} (in {time_left(view.seconds_left, 'short')}, "
                f"last usable day {view.last_usable_day}){where}",
                **common,
            )
        )


def _judge_rotation(verdict: Verdict, row: RotationSnapshot, at: datetime) -> None:
    """A failed or stuck rotation is CRITICAL; a published one that should
    have retired long ago a WARNING (README "Rotation")."""
    who = f"rotation of key {row.old_key_id} ({row.principal})"
    common: dict[str, Any] = {"key_id": row.old_key_id, "principal": row.principal}
    if row.state == RotationState.FAILED:
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.ROTATION,
                f"{who} failed at {row.failed_step}: {_clean(row.last_error)}",
                **common,
            )
        )
    elif row.state != RotationState.PUBLISHED and (
        at - row.updated_at > ROTATION_STUCK or row.failures >= ROTATION_STUCK_FAILURES
    ):
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.ROTATION,
                f"{who} stuck in state {row.state} since "
                f"{isoformat_z(row.updated_at)} ({row.failures} failure(s)): "
                f"{_clean(row.last_error)}",
                **common,
            )
        )
    elif (
        row.state == RotationState.PUBLISHED
        and row.retire_after is not None
        and at - row.retire_after > ROTATION_RETIRE_LATE
    ):
        verdict.problems.append(
            Problem(
                CheckStatus.WARNING,
                ProblemKind.ROTATION,
                f"{who}: the old key is not retired yet ({_clean(row.last_error)})",
                **common,
            )
        )


def _judge_sink(verdict: Verdict, sink: TokenSnapshot, at: datetime) -> None:
    who = f"token write-back for key {sink.key_id} ({sink.principal}) to {sink.sink}"
    if sink.expires_at is not None and sink.expires_at <= at:
        verdict.problems.append(
            Problem(
                CheckStatus.CRITICAL,
                ProblemKind.TOKEN,
                f"{who}: the token in place expired at "
                f"{isoformat_z(sink.expires_at)} ({sink.state}: {_clean(sink.last_error)})",
                key_id=sink.key_id,
                principal=sink.principal,
                ref=sink.sink,
            )
        )
    elif sink.state in (SinkState.FAILED, SinkState.CONFLICT, SinkState.UNMANAGED):
        verdict.problems.append(
            Problem(
                CheckStatus.WARNING,
                ProblemKind.TOKEN,
                f"{who} is {sink.state}: {_clean(sink.last_error)}",
                key_id=sink.key_id,
                principal=sink.principal,
                ref=sink.sink,
            )
        )


def _unproven(result: object) -> str | None:
    """Why a probe round proved no key (None if it proved one, or probed
    none): every contacted key got a bad answer or no answer."""
    counts = getattr(result, "counts", None)
    if not callable(counts):
        return None
    seen: dict[str, int] = counts()
    failed = seen.get("bad_response", 0) + seen.get("unavailable", 0)
    if seen.get("ok", 0) or seen.get("rejected", 0) or not failed:
        return None
    return (
        f"no key could be proven: {seen.get('bad_response', 0)} bad answer(s), "
        f"{seen.get('unavailable', 0)} unavailable"
    )


def _judge_unknowns(verdict: Verdict) -> None:
    for source in verdict.sources:
        if source.consecutive_failures:
            verdict.counts["source_errors"] += 1
            verdict.problems.append(
                Problem(
                    CheckStatus.UNKNOWN,
                    ProblemKind.SOURCE,
                    f"source {source.name} failing: {_clean(source.last_error)}",
                )
            )
    cycle = verdict.cycle
    if cycle is None:
        return
    for stage in cycle.failed:
        verdict.problems.append(
            Problem(
                CheckStatus.UNKNOWN, ProblemKind.STAGE, f"stage {stage.name} failed: {_clean(stage.error)}"
            )
        )
    for stage in cycle.stages:
        if getattr(stage.result, "issuer_reachable", None) is False:
            verdict.problems.append(Problem(CheckStatus.UNKNOWN, ProblemKind.ISSUER, "issuer unavailable"))
        elif (why := _unproven(stage.result)) is not None:
            verdict.problems.append(Problem(CheckStatus.UNKNOWN, ProblemKind.ISSUER, why))


def _status(verdict: Verdict) -> str:
    severities = {p.severity for p in verdict.problems}
    for status in (CheckStatus.CRITICAL, CheckStatus.WARNING, CheckStatus.UNKNOWN):
        if status in severities:
            return status
    return CheckStatus.OK


def _clean(text: str | None) -> str:
    return scrub(text).splitlines()[0] if text else "no detail"


def run_check(services: Services, stages: Sequence[Stage], *, dry_run: bool = False) -> Verdict:
    """One full cycle, then the verdict read from what it left behind (in
    a dry run: from the sandbox, before it is rolled back)."""
    if not dry_run:
        report = run_cycle(services, stages)
        return _verdict_from_db(services, report)
    with wiring.dry_run(services) as sandboxed:
        report = run_cycle(sandboxed, stages, dry_run=True)
        return _verdict_from_db(sandboxed, report)


def _verdict_from_db(services: Services, report: CycleReport) -> Verdict:
    engine, now = services.engine, services.clock.now()
    gone, policy = _zitadel_findings(services, now)
    return judge(
        services.config,
        now,
        snapshot.keys(engine),
        snapshot.location_problems(engine),
        snapshot.sources(engine),
        report,
        issuer_down_since=_stored_outage(services, report),
        gone=gone,
        policy=policy,
        rotations=unfinished(engine),
        tokens=snapshot.tokens(engine),
    )


def _zitadel_findings(services: Services, now: datetime) -> tuple[frozenset[str], list[PolicyFinding]]:
    """Keys ZITADEL no longer lists, and the policy findings of what it lists."""
    if not any(isinstance(s, ZitadelSourceConfig) for s in services.config.sources):
        return frozenset(), []
    with alert_store.transaction(services.engine) as session:
        keys = alert_store.all_keys(session)
        removed = alert_store.removed_keys(session, [k.pk for k in keys if k.status == KeyStatus.REJECTED])
        gone = frozenset(k.key_id for k in keys if k.pk in removed)
        found = [
            PolicyFinding(f.key.key_id, f.key.principal, f.text)
            for f in policy_findings(services.config, keys, now)
        ]
    return gone, found


def _stored_outage(services: Services, report: CycleReport) -> datetime | None:
    """The issuer outage the last real probe round recorded, when this
    cycle skipped the probe (dry run); None otherwise: a real round
    reports reachability itself (``issuer_reachable``)."""
    probe = report.stage("probe")
    if probe is None or not probe.skipped:
        return None
    with alert_store.transaction(services.engine) as session:
        return alert_store.issuer_outage(session)
