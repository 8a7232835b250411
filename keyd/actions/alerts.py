"""Decide which alerts are due and queue them.

``evaluate_alerts(session, config, now)`` runs inside the caller's
transaction and, for every alert it decides, inserts the ``alerts`` row and
its ``deliveries`` outbox rows together (a transactional outbox): either
both are committed or neither. Sending is ``deliver.drain_outbox``'s job.

What is decided, each at most once (unique (about, kind, threshold,
expires_at), where
``about`` is the key id: two key ids sharing one key pair each have their
own alerts; the fingerprint is only an attribute):

* ``expiring`` / ``expired``: the ladder (``checks.ladder``), each rung
  stored with the expiry instant it belongs to (``alerts.expires_at``);
  rungs of an old expiry are resolved.
* ``rotated``: another active key of the same principal expires later
  while this one still has open alerts (ladder, rejected, untracked) →
  those are resolved and one notice is sent; a superseded key gets no further ladder or rejection
  alerts (after a rotation the old key is *expected* to be refused).
* ``rejected``: key status ``rejected`` (set by the probe), once per
  episode; an episode ends with a successful probe, so it is named by the
  key's ``last_ok_at`` (``ok@<instant>`` or ``never-ok``). Not raised for
  a key that has expired (the ``expired`` rung says it already).
* ``unavailable`` / ``recovered``: issuer outage episodes recorded by
  ``note_issuer_health`` (re-exported here), alerted once the outage lasts
  ``issuer.unavailable_alert_after``; named by the outage start.
* while rotation covers a key (``alert_hold``), only its tightest rung and
  ``expired`` fire: alerts are the fallback for what cannot be rotated.
* ``untracked``: a key without an expiry date (pre-2024 file), once.
* ``unheld`` and ``policy``: from zitadel sources' listings (``findings``);
  a key ZITADEL no longer lists is ``rejected`` (diagnosis ``removed``)
  and alerted as rejections are, with its own subject.

Keys whose status is ``missing`` or ``invalid`` are not evaluated; a
missing key's open alerts are resolved (its unsent ladder mail is then
dropped as superseded). All existing alerts of the evaluated keys are read
in one query (``AlertIndex``); what a batch decides is written at its end
in a few statements, none per key (``_Decided``): its alerts in one
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (multi-row VALUES), the
deliveries of those the database inserted, then the resolutions.

Driven by due times, not by scanning every key: each key carries
``next_alert_at``, the due time of its next rung (``next_alert_at()``),
or "now" once something alert-relevant changed (a new key, its status,
expiry, principal or content; a probe's verdict). A tick reads only the
keys whose instant has passed, through that column's index, plus the other
keys of their principals; with nothing due it costs the same at 100 keys
as at 100,000. Changed thresholds make every key due once; the daemon
then evaluates in chunks of one batch per tick (``evaluate_chunk``,
docs/daemon.md "Watchdog and progress"), each key reported as progress.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from keyd import progress
from keyd.actions.alert_hold import rotation_held
from keyd.actions.decision import Decision
from keyd.actions.findings import zitadel_alerts
from keyd.checks.expiry import evaluate, is_never, seconds_until, time_left
from keyd.checks.ladder import Rung, due_rungs, ladder, rung_expiry
from keyd.config import Config, EmailConfig
from keyd.errors import StoreError
from keyd.redact import scrub
from keyd.store import alerts as store
from keyd.store.alerts import AlertIndex, AlertRecord, note_issuer_health, threshold_text
from keyd.store.keys import KeyRecord
from keyd.timeutil import format_duration, isoformat_z, rfc3339_z
from keyd.urls import display_url
from keyd.vocab import AlertKind, Channel, ExpiryStatus, KeyKind, KeyStatus, LocationStatus, Severity

if TYPE_CHECKING:
    from keyd.store.alerts import Session

__all__ = [
    "evaluate_alerts",
    "evaluate_chunk",
    "EvaluationReport",
    "note_issuer_health",
    "message_id",
    "email_recipients",
    "subject_for_expiry",
]

log = logging.getLogger(__name__)

LADDER_KINDS: Final = (AlertKind.EXPIRING, AlertKind.EXPIRED)
ISSUER: Final = "issuer"
SKIPPED_STATUSES: Final = frozenset({KeyStatus.MISSING, KeyStatus.INVALID})
#: Due keys are evaluated this many principals at a time, so a first tick
#: after a cold start (every key due) never holds the whole inventory.
PRINCIPALS_PER_BATCH: Final = 2000
#: Alerts named in the "decided" log line (the rest are counted).
LOGGED_NAMES: Final = 20
EVALUATING: Final = "evaluating alerts"  # the progress task (/healthz, the CLI)
OPEN_KINDS: Final = (AlertKind.EXPIRING, AlertKind.EXPIRED, AlertKind.REJECTED, AlertKind.UNTRACKED)
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def message_id(about: str, kind: str, threshold: str) -> str:
    """Deterministic RFC 5322 Message-ID, so a repeated send folds into one.
    ``about`` is the key id (or ``issuer``, ``token:…``), slugged like the
    threshold so that no key-file text can break the header."""
    who = _SLUG_RE.sub("-", about.lower()).strip("-")[:40] or "x"
    slug = _SLUG_RE.sub("-", threshold.lower()).strip("-") or "x"
    return f"<alert-{who}-{kind}-{slug}@keyd>"


def email_recipients(email: EmailConfig, principal: str | None, sources: Iterable[str] = ()) -> list[str]:
    """``email.to`` plus routed extras for this principal or any of its
    sources; order kept, duplicates (case-insensitive) dropped."""
    names = set(sources) | ({principal} if principal else set())
    addrs = list(email.to)
    for name, extra in email.routes:
        if name in names:
            addrs.extend(extra)
    seen: set[str] = set()
    out: list[str] = []
    for addr in addrs:
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


@dataclass
class EvaluationReport:
    """One chunk of the evaluation (``evaluate_chunk``): the alerts it
    inserted, the keys it evaluated, and whether keys are still due
    (``more``; then ``remaining`` of them)."""

    new: list[AlertRecord] = field(default_factory=list)
    keys: int = 0
    more: bool = False
    remaining: int | None = None

    @property
    def items(self) -> int:
        """Keys done, for ``runtime.liveness.Rounds``."""
        return self.keys


def evaluate_alerts(session: Session, config: Config, now: datetime) -> list[AlertRecord]:
    """Decide and queue all due alerts in the caller's transaction.

    Returns the alerts newly inserted by *this* call (an alert another
    daemon inserted first is not returned and gets no deliveries here).
    Does not commit.
    """
    store.rearm_if_schedule_changed(session, _schedule(config), now)
    new: list[AlertRecord] = []
    while keys := store.alert_candidates(session, now, limit=PRINCIPALS_PER_BATCH):
        new.extend(_evaluate_keys(session, config, keys, now))
    new.extend(_issuer_alerts(session, config, now))
    _log_new(new)
    return new


def evaluate_chunk(session: Session, config: Config, now: datetime) -> EvaluationReport:
    """The daemon's evaluate tick: at most one batch of due principals
    (``PRINCIPALS_PER_BATCH``), in the caller's transaction, so a tick with
    every key due (after an import, or changed thresholds) holds the work
    thread for one batch, not for the whole inventory. ``more`` when keys
    are still due after it (one indexed COUNT, only when keys were due);
    the daemon then runs the next chunk right away."""
    store.rearm_if_schedule_changed(session, _schedule(config), now)
    keys = store.alert_candidates(session, now, limit=PRINCIPALS_PER_BATCH)
    report = EvaluationReport(keys=len(keys))
    if keys:
        report.new = _evaluate_keys(session, config, keys, now)
        report.remaining = store.due_count(session, now)
        report.more = report.remaining > 0
    report.new.extend(_issuer_alerts(session, config, now))
    _log_new(report.new)
    return report


def _log_new(new: Sequence[AlertRecord]) -> None:
    """One line; the first ``LOGGED_NAMES`` alerts named (an evaluation of
    every key decides one per key)."""
    if not new:
        return
    names = ", ".join(f"{a.kind}:{threshold_text(a.threshold, a.expires_at)}" for a in new[:LOGGED_NAMES])
    more = f" and {len(new) - LOGGED_NAMES} more" if len(new) > LOGGED_NAMES else ""
    log.info("decided %d new alert(s): %s%s", len(new), names, more)


def _evaluate_keys(
    session: Session, config: Config, keys: list[KeyRecord], now: datetime
) -> list[AlertRecord]:
    """One batch of due keys (whole principals); schedules each one ahead,
    so the next batch never sees them again. Decides in memory, then writes
    the batch's alerts, deliveries and resolutions together (``_Decided``):
    a few statements per batch, none per key. Reports each key as progress."""
    by_principal: dict[str, list[KeyRecord]] = defaultdict(list)
    for key in keys:
        by_principal[key.principal].append(key)
    known = store.AlertIndex.load(session, [_about(k) for k in keys])
    out = _Decided(config, now, known)
    removed = store.removed_keys(session, [k.pk for k in keys if k.status == KeyStatus.REJECTED])
    held = rotation_held(session, config, keys, now)
    progress.begin(EVALUATING, len(keys), "keys")
    try:
        for key in keys:
            peers = by_principal[key.principal]
            _decide_key(session, config, key, peers, now, known, out, removed=removed, held=held)
            progress.advance(EVALUATING)
        zitadel_alerts(session, config, keys, now, known, partial(_emit, out, config, now), _about)
        new = out.write(session)
        store.schedule_alerts(session, {k.pk: _next_or_soon(k, config, now) for k in keys})
    finally:
        progress.end(EVALUATING)
    return new


def _decide_key(
    session: Session,
    config: Config,
    key: KeyRecord,
    peers: Sequence[KeyRecord],
    now: datetime,
    known: AlertIndex,
    out: _Decided,
    *,
    removed: set[int],
    held: set[int],
) -> None:
    if key.status in SKIPPED_STATUSES:
        if key.status == KeyStatus.MISSING:  # gone from every source: nothing left to warn about
            known.resolve(known.unresolved(_about(key), OPEN_KINDS), now)
        return
    if key.status == KeyStatus.UNHELD and not config.alerts.unheld_ladder:
        return  # only ZITADEL knows it: its notice comes from findings
    _isolated(
        session,
        key,
        now,
        partial(
            _key_alerts,
            config,
            key,
            peers,
            now,
            known,
            out,
            removed=key.pk in removed,
            held=key.pk in held,
        ),
    )


def _isolated(session: Session, key: KeyRecord, now: datetime, decide: Callable[[], None]) -> None:
    """One key's decisions; an unexpected error is recorded on that key
    (log, ``alert.error`` event) and the stage goes on with the others.
    Database errors still end the stage: its transaction rolls back whole."""
    try:
        decide()
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - one key never blinds the others
        log.exception("alerts for key %s: unexpected error", key.key_id)
        store.record_key_error(
            session,
            key,
            now,
            f"internal error while deciding alerts ({type(exc).__name__}); run with --debug",
        )


def _next_or_soon(key: KeyRecord, config: Config, now: datetime) -> datetime:
    """``next_alert_at``, or in an hour when that cannot be computed (the
    key is then tried again, not forgotten)."""
    try:
        return next_alert_at(key, config, now)
    except Exception:  # noqa: BLE001 - as in _isolated
        log.exception("alerts for key %s: cannot schedule", key.key_id)
        return now + timedelta(hours=1)


def next_alert_at(key: KeyRecord, config: Config, now: datetime) -> datetime:
    """When ``key`` must be looked at again, unless it changes before: the
    due time of its next rung still ahead. Changes (status, expiry, a new
    key of the same principal) make it due at once by themselves
    (``keys.next_alert_at``), so a key with no rung ahead waits for one."""
    if key.status in SKIPPED_STATUSES or key.expires_at is None or is_never(key.expires_at):
        return store.ALERT_NEVER
    ahead = [r.due_at for r in ladder(key.expires_at, config.alerts.thresholds) if r.due_at > now]
    return min(ahead, default=store.ALERT_NEVER)


def _schedule(config: Config) -> str:
    """What the stored due times and decisions depend on in the config: the
    thresholds and the zitadel-source rules."""
    rules = config.alerts
    return repr(
        (
            sorted(int(t.total_seconds()) for t in rules.thresholds),
            rules.unheld_ladder,
            rules.never_expiring,
            rules.max_lifetime,
            rules.max_keys_per_user,
        )
    )


# -- per key ------------------------------------------------------------------


def _key_alerts(
    config: Config,
    key: KeyRecord,
    peers: Sequence[KeyRecord],
    now: datetime,
    known: AlertIndex,
    out: _Decided,
    *,
    removed: bool = False,
    held: bool = False,
) -> None:
    successor = _successor(key, peers)
    if successor is not None:
        _rotated(config, key, successor, now, known, out)
        return
    if key.expires_at is None:
        _emit(
            out,
            config,
            now,
            key,
            Decision(
                AlertKind.UNTRACKED,
                "unknown",
                Severity.WARNING,
                _subject(key, Severity.WARNING, "has no expiry date: not tracked"),
            ),
        )
        return
    known.resolve(known.unresolved(_about(key), (AlertKind.UNTRACKED,)), now)
    if not is_never(key.expires_at):
        _ladder(config, key, key.expires_at, now, known, out, held=held)
    _rejected(config, key, now, known, out, removed=removed)


def _successor(key: KeyRecord, peers: Sequence[KeyRecord]) -> KeyRecord | None:
    """The active key of the same principal that replaces ``key``, if any:
    one expiring later (never counts as latest), or, when ``key``'s expiry
    is unknown, one first seen after it."""
    best: KeyRecord | None = None
    for peer in peers:
        if peer.key_id == key.key_id or peer.status != KeyStatus.ACTIVE or peer.expires_at is None:
            continue
        if key.expires_at is not None:
            later = peer.expires_at > key.expires_at
        else:  # first_seen: never None in a stored key
            later = bool(peer.first_seen and key.first_seen and peer.first_seen > key.first_seen)
        if later and (best is None or peer.expires_at > best.expires_at):  # type: ignore[operator]
            best = peer
    return best


def _ladder(
    config: Config,
    key: KeyRecord,
    expires_at: datetime,
    now: datetime,
    known: AlertIndex,
    out: _Decided,
    *,
    held: bool = False,
) -> None:
    """``held``: rotation covers the key, so only the tightest rung and
    ``expired`` may fire (the safety net when a rotation stalls)."""
    instant = rung_expiry(expires_at)
    about = _about(key)
    stale = known.unresolved(about, LADDER_KINDS, keep_expiry=instant)
    if stale:
        log.info("key %s: expiry changed, resolving %d alert(s) of the old expiry", key.key_id, len(stale))
        known.resolve(stale, now)
    fired = known.fired(about, LADDER_KINDS, instant)
    thresholds = config.alerts.thresholds
    if held:
        thresholds = (min(thresholds),) if thresholds else ()
    rung = due_rungs(expires_at, thresholds, now, fired)
    if rung is None:
        return

    def supersede(alert: AlertRecord) -> None:
        """Once inserted, the tighter rung supersedes the looser ones."""
        known.resolve([a for a in known.unresolved(about, LADDER_KINDS) if a.id != alert.id], now)

    _emit(
        out,
        config,
        now,
        key,
        Decision(
            rung.kind,
            rung.label,
            rung.severity,
            subject_for_expiry(key, rung, expires_at, now),
            {"rung": rung.label},
            rung.expires_at,
        ),
        then=supersede,
    )


def subject_for_expiry(key: KeyRecord, rung: Rung, expires_at: datetime, now: datetime) -> str:
    """``[keyd CRITICAL] key 29… of user 29… expires in 1 day``."""
    if rung.kind == AlertKind.EXPIRED:
        return _subject(key, Severity.CRITICAL, "has expired")
    return _subject(key, rung.severity, f"expires in {time_left(seconds_until(expires_at, now))}")


def _rotated(
    config: Config, key: KeyRecord, successor: KeyRecord, now: datetime, known: AlertIndex, out: _Decided
) -> None:
    open_alerts = known.unresolved(_about(key), OPEN_KINDS)
    if not open_alerts:  # replaced before anyone was warned: nothing to say
        return
    known.resolve(open_alerts, now)
    extra = {"replaced_by": {"key_id": successor.key_id, "expires_at": _iso(successor.expires_at)}}
    _emit(
        out,
        config,
        now,
        key,
        Decision(
            AlertKind.ROTATED,
            "rotated",
            Severity.INFO,
            _subject(key, Severity.INFO, f"was replaced by key {successor.key_id}"),
            extra,
        ),
    )


def _rejected(
    config: Config,
    key: KeyRecord,
    now: datetime,
    known: AlertIndex,
    out: _Decided,
    *,
    removed: bool = False,
) -> None:
    dead = key.expires_at is not None and now >= key.expires_at
    if key.status != KeyStatus.REJECTED or dead:
        known.resolve(known.unresolved(_about(key), (AlertKind.REJECTED,)), now)
        return
    episode = f"ok@{isoformat_z(key.last_ok_at)}" if key.last_ok_at else "never-ok"
    extra = {
        "error": scrub(key.last_error or ""),
        "outcome": key.last_probe_outcome,
        "last_probe_at": _iso(key.last_probe_at),
        "last_ok_at": _iso(key.last_ok_at),
    }
    what = (
        "was removed in ZITADEL; its key file remains"
        if removed  # a zitadel source
        else "is rejected by the issuer"
    )
    extra["diagnosis"] = "removed" if removed else None
    _emit(
        out,
        config,
        now,
        key,
        Decision(
            AlertKind.REJECTED, episode, Severity.CRITICAL, _subject(key, Severity.CRITICAL, what), extra
        ),
    )


# -- issuer episodes ----------------------------------------------------------


def _issuer_alerts(session: Session, config: Config, now: datetime) -> list[AlertRecord]:
    if config.issuer is None:
        return []
    known = store.AlertIndex.load(session, [ISSUER])
    out = _Decided(config, now, known)
    url, after = config.issuer.url, config.issuer.unavailable_alert_after
    context = {"issuer": url, "decided_at": isoformat_z(now), "timezone": config.timezone_name}
    since = store.issuer_outage(session)
    if since is not None and now - since >= after:
        out.emit(
            Decision(
                AlertKind.UNAVAILABLE,
                isoformat_z(since),
                Severity.WARNING,
                f"[keyd WARNING] issuer {url} unavailable for {format_duration(now - since)}",
                {"since": isoformat_z(since)},
            ),
            context,
            Subject(ISSUER),
        )
    recovery = store.issuer_last_recovery(session)
    if recovery is not None:
        start, until = recovery
        threshold = isoformat_z(start)
        alerted = known.exists(ISSUER, AlertKind.UNAVAILABLE, threshold)
        if alerted or until - start >= after:
            known.resolve(known.unresolved(ISSUER, (AlertKind.UNAVAILABLE,)), now)
            out.emit(
                Decision(
                    AlertKind.RECOVERED,
                    threshold,
                    Severity.INFO,
                    f"[keyd INFO] issuer {url} is reachable again after {format_duration(until - start)}",
                    {"since": threshold, "until": isoformat_z(until)},
                ),
                context,
                Subject(ISSUER),
            )
    return out.write(session)


# -- shared -------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """Whom an alert is about, and what routes its e-mail."""

    about: str  # a key id, or ISSUER
    key_pk: int | None = None
    fingerprint: str | None = None
    principal: str | None = None
    sources: Sequence[str] = ()


@dataclass(frozen=True)
class _Queued:
    row: dict[str, Any]  # the alerts row (store.alert_row)
    context: dict[str, Any]  # its context, decoded
    targets: Sequence[tuple[str, str]]  # (channel, recipient) outbox rows
    then: Callable[[AlertRecord], None] | None  # once inserted

    def record(self, alert_id: int) -> AlertRecord:
        """The alert as inserted (what ``AlertRecord.of`` would read back)."""
        r = self.row
        return AlertRecord(
            alert_id,
            r["about"],
            r["fingerprint"],
            r["key_pk"],
            r["kind"],
            r["threshold"],
            r["expires_at"],
            r["severity"],
            r["created_at"],
            r["message_id"],
            r["subject"],
            self.context,
            None,
        )


class _Decided:
    """The alerts one batch decided, written together by ``write``: one
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for all of them (sent
    as multi-row VALUES), one for their deliveries, and the resolutions
    (``AlertIndex.write_resolved``). Only the alerts the database actually
    inserted get deliveries and their ``then``: exactly-once stays the
    unique index's job, across restarts and daemons."""

    def __init__(self, config: Config, now: datetime, known: AlertIndex) -> None:
        self._config, self._now, self._known = config, now, known
        self._queued: dict[tuple[str, ...], _Queued] = {}

    def emit(
        self,
        decision: Decision,
        facts: Mapping[str, Any],
        subject: Subject,
        then: Callable[[AlertRecord], None] | None = None,
    ) -> None:
        kind, severity = decision.kind, decision.severity
        threshold = threshold_text(decision.threshold, decision.expires_at)  # as shown, and in the Message-ID
        unique = store.unique_key(subject.about, kind, decision.threshold, decision.expires_at)
        if unique in self._queued:  # decided twice in one batch: one row, as the unique index would
            return
        context = {**facts, **decision.extra, "kind": kind, "severity": severity, "threshold": threshold}
        row = store.alert_row(
            about=subject.about,
            fingerprint=subject.fingerprint,
            key_pk=subject.key_pk,
            kind=kind,
            threshold=decision.threshold,
            expires_at=decision.expires_at,
            severity=severity,
            created_at=self._now,
            message_id=message_id(subject.about, kind, threshold),
            subject=decision.subject,
            context=context,
        )
        self._queued[unique] = _Queued(row, json.loads(row["context"]), _targets(self._config, subject), then)

    def write(self, session: Session) -> list[AlertRecord]:
        """Insert what was decided, in decision order of the result; the
        alerts inserted now (not those that existed)."""
        new: list[AlertRecord] = []
        if self._queued:
            inserted = store.insert_alerts(session, [q.row for q in self._queued.values()])
            deliveries: list[tuple[int, str, str]] = []
            silent: list[str] = []
            for unique, queued in self._queued.items():
                alert_id = inserted.get(unique)
                if alert_id is None:  # fired before, or another daemon won the race
                    continue
                alert = queued.record(alert_id)
                self._known.add(alert)
                new.append(alert)
                deliveries += [(alert.id, channel, recipient) for channel, recipient in queued.targets]
                if not queued.targets:
                    silent.append(alert.message_id)
                if queued.then is not None:
                    queued.then(alert)
            store.add_delivery_rows(session, deliveries, self._now)
            if silent:
                log.warning(
                    "%d new alert(s) have no delivery channel configured ([alerts.email] or "
                    "[alerts.webhook]): %s%s",
                    len(silent),
                    ", ".join(silent[:LOGGED_NAMES]),
                    ", ..." if len(silent) > LOGGED_NAMES else "",
                )
        self._queued = {}
        self._known.write_resolved(session)
        return new


def _emit(
    out: _Decided,
    config: Config,
    now: datetime,
    key: KeyRecord,
    decision: Decision,
    then: Callable[[AlertRecord], None] | None = None,
) -> None:
    """Queue a decision about ``key`` (written with its batch)."""
    subject = Subject(
        _about(key), key.pk, key.fingerprint, key.principal, [loc.source for loc in key.locations]
    )
    out.emit(decision, key_facts(key, config, now), subject, then)


def _targets(config: Config, subject: Subject) -> list[tuple[str, str]]:
    """The outbox rows of an alert: each e-mail recipient, the webhook."""
    targets: list[tuple[str, str]] = []
    if config.alerts.email is not None:
        targets += [
            (Channel.EMAIL, a)
            for a in email_recipients(config.alerts.email, subject.principal, subject.sources)
        ]
    if config.alerts.webhook is not None:
        targets.append((Channel.WEBHOOK, display_url(config.alerts.webhook.url)))
    return targets


def key_facts(key: KeyRecord, config: Config, now: datetime) -> dict[str, Any]:
    """What a message may say about a key. Never key material: a KeyRecord
    holds none, and free text (``last_error``) is scrubbed by the caller."""
    view = evaluate(key.expires_at, now, config.timezone)
    locations = sorted(key.locations, key=lambda loc: (loc.status != LocationStatus.PRESENT, loc.ref))
    return {
        "key_id": key.key_id,
        "principal": key.principal,
        "key_kind": key.kind,
        "fingerprint": key.fingerprint,
        "status": key.status,
        "expires_at": rfc3339_z(key.expires_at) if key.expires_at else None,
        "never_expires": view.status == ExpiryStatus.NEVER,
        "last_usable_day": view.last_usable_day.isoformat() if view.last_usable_day else None,
        "timezone": config.timezone_name,
        "seconds_left": view.seconds_left,
        "days_left": view.days_left,
        "decided_at": isoformat_z(now),
        "locations": [
            {"source": loc.source, "ref": loc.ref, "status": loc.status, "kind": loc.kind}
            for loc in locations
        ],
    }


def _about(key: KeyRecord) -> str:
    """Alerts belong to a key id (``alerts.about``), not to its key pair."""
    return store.key_about(key.key_id)


def _subject(key: KeyRecord, severity: str, what: str) -> str:
    who = "app" if key.kind == KeyKind.APPLICATION else "user"
    return f"[keyd {severity.upper()}] key {key.key_id} of {who} {key.principal} {what}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else isoformat_z(value)
