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
in one query (``AlertIndex``).

Driven by due times, not by scanning every key: each key carries
``next_alert_at``, the due time of its next rung (``next_alert_at()``),
or "now" once something alert-relevant changed (a new key, its status,
expiry, principal or content; a probe's verdict). A tick reads only the
keys whose instant has passed, through that column's index, plus the other
keys of their principals; with nothing due it costs the same at 100 keys
as at 100,000. Changed thresholds make every key due once.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

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

__all__ = ["evaluate_alerts", "note_issuer_health", "message_id", "email_recipients", "subject_for_expiry"]

log = logging.getLogger(__name__)

LADDER_KINDS: Final = (AlertKind.EXPIRING, AlertKind.EXPIRED)
ISSUER: Final = "issuer"
SKIPPED_STATUSES: Final = frozenset({KeyStatus.MISSING, KeyStatus.INVALID})
#: Due keys are evaluated this many principals at a time, so a first tick
#: after a cold start (every key due) never holds the whole inventory.
PRINCIPALS_PER_BATCH: Final = 2000
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
    new.extend(_issuer_alerts(session, config, now, store.AlertIndex.load(session, [ISSUER])))
    if new:
        names = ", ".join(f"{a.kind}:{threshold_text(a.threshold, a.expires_at)}" for a in new)
        log.info("decided %d new alert(s): %s", len(new), names)
    return new


def _evaluate_keys(
    session: Session, config: Config, keys: list[KeyRecord], now: datetime
) -> list[AlertRecord]:
    """One batch of due keys (whole principals); schedules each one ahead,
    so the next batch never sees them again."""
    by_principal: dict[str, list[KeyRecord]] = defaultdict(list)
    for key in keys:
        by_principal[key.principal].append(key)
    known = store.AlertIndex.load(session, [_about(k) for k in keys])
    new: list[AlertRecord] = []
    removed = store.removed_keys(session, [k.pk for k in keys if k.status == KeyStatus.REJECTED])
    held = rotation_held(session, config, keys, now)
    for key in keys:
        if key.status in SKIPPED_STATUSES:
            if key.status == KeyStatus.MISSING:  # gone from every source: nothing left to warn about
                known.resolve(session, known.unresolved(_about(key), OPEN_KINDS), now)
            continue
        if key.status == KeyStatus.UNHELD and not config.alerts.unheld_ladder:
            continue  # only ZITADEL knows it: its notice comes from findings
        new.extend(
            _isolated(
                session,
                key,
                now,
                partial(
                    _key_alerts,
                    session,
                    config,
                    key,
                    by_principal[key.principal],
                    now,
                    known,
                    removed=key.pk in removed,
                    held=key.pk in held,
                ),
            )
        )
    new.extend(zitadel_alerts(session, config, keys, now, known, _emit, _about))
    store.schedule_alerts(session, {k.pk: _next_or_soon(k, config, now) for k in keys})
    return new


def _isolated(
    session: Session, key: KeyRecord, now: datetime, decide: Callable[[], list[AlertRecord]]
) -> list[AlertRecord]:
    """One key's decisions; an unexpected error is recorded on that key
    (log, ``alert.error`` event) and the stage goes on with the others.
    Database errors still end the stage: its transaction rolls back whole."""
    try:
        return decide()
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
        return []


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
    session: Session,
    config: Config,
    key: KeyRecord,
    peers: Sequence[KeyRecord],
    now: datetime,
    known: AlertIndex,
    *,
    removed: bool = False,
    held: bool = False,
) -> list[AlertRecord]:
    successor = _successor(key, peers)
    if successor is not None:
        return _rotated(session, config, key, successor, now, known)
    if key.expires_at is None:
        alert = _emit(
            session,
            config,
            key,
            now,
            known,
            Decision(
                AlertKind.UNTRACKED,
                "unknown",
                Severity.WARNING,
                _subject(key, Severity.WARNING, "has no expiry date: not tracked"),
            ),
        )
        return [alert] if alert else []
    known.resolve(session, known.unresolved(_about(key), (AlertKind.UNTRACKED,)), now)
    out: list[AlertRecord] = []
    if not is_never(key.expires_at):
        ladder_alert = _ladder(session, config, key, key.expires_at, now, known, held=held)
        if ladder_alert is not None:
            out.append(ladder_alert)
    rejected = _rejected(session, config, key, now, known, removed=removed)
    if rejected is not None:
        out.append(rejected)
    return out


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
    session: Session,
    config: Config,
    key: KeyRecord,
    expires_at: datetime,
    now: datetime,
    known: AlertIndex,
    *,
    held: bool = False,
) -> AlertRecord | None:
    """``held``: rotation covers the key, so only the tightest rung and
    ``expired`` may fire (the safety net when a rotation stalls)."""
    instant = rung_expiry(expires_at)
    stale = known.unresolved(_about(key), LADDER_KINDS, keep_expiry=instant)
    if stale:
        log.info("key %s: expiry changed, resolving %d alert(s) of the old expiry", key.key_id, len(stale))
        known.resolve(session, stale, now)
    fired = known.fired(_about(key), LADDER_KINDS, instant)
    thresholds = config.alerts.thresholds
    if held:
        thresholds = (min(thresholds),) if thresholds else ()
    rung = due_rungs(expires_at, thresholds, now, fired)
    if rung is None:
        return None
    alert = _emit(
        session,
        config,
        key,
        now,
        known,
        Decision(
            rung.kind,
            rung.label,
            rung.severity,
            subject_for_expiry(key, rung, expires_at, now),
            {"rung": rung.label},
            rung.expires_at,
        ),
    )
    if alert is not None:  # the tighter rung supersedes the looser ones
        older = [a for a in known.unresolved(_about(key), LADDER_KINDS) if a.id != alert.id]
        known.resolve(session, older, now)
    return alert


def subject_for_expiry(key: KeyRecord, rung: Rung, expires_at: datetime, now: datetime) -> str:
    """``[keyd CRITICAL] key 29… of user 29… expires in 1 day``."""
    if rung.kind == AlertKind.EXPIRED:
        return _subject(key, Severity.CRITICAL, "has expired")
    return _subject(key, rung.severity, f"expires in {time_left(seconds_until(expires_at, now))}")


def _rotated(
    session: Session, config: Config, key: KeyRecord, successor: KeyRecord, now: datetime, known: AlertIndex
) -> list[AlertRecord]:
    open_alerts = known.unresolved(_about(key), OPEN_KINDS)
    if not open_alerts:  # replaced before anyone was warned: nothing to say
        return []
    known.resolve(session, open_alerts, now)
    extra = {"replaced_by": {"key_id": successor.key_id, "expires_at": _iso(successor.expires_at)}}
    alert = _emit(
        session,
        config,
        key,
        now,
        known,
        Decision(
            AlertKind.ROTATED,
            "rotated",
            Severity.INFO,
            _subject(key, Severity.INFO, f"was replaced by key {successor.key_id}"),
            extra,
        ),
    )
    return [alert] if alert else []


def _rejected(
    session: Session,
    config: Config,
    key: KeyRecord,
    now: datetime,
    known: AlertIndex,
    *,
    removed: bool = False,
) -> AlertRecord | None:
    dead = key.expires_at is not None and now >= key.expires_at
    if key.status != KeyStatus.REJECTED or dead:
        known.resolve(session, known.unresolved(_about(key), (AlertKind.REJECTED,)), now)
        return None
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
    return _emit(
        session,
        config,
        key,
        now,
        known,
        Decision(
            AlertKind.REJECTED, episode, Severity.CRITICAL, _subject(key, Severity.CRITICAL, what), extra
        ),
    )


# -- issuer episodes ----------------------------------------------------------


def _issuer_alerts(session: Session, config: Config, now: datetime, known: AlertIndex) -> list[AlertRecord]:
    if config.issuer is None:
        return []
    url, after = config.issuer.url, config.issuer.unavailable_alert_after
    out: list[AlertRecord] = []
    since = store.issuer_outage(session)
    if since is not None and now - since >= after:
        alert = _emit_issuer(
            session,
            config,
            now,
            known,
            Decision(
                AlertKind.UNAVAILABLE,
                isoformat_z(since),
                Severity.WARNING,
                f"[keyd WARNING] issuer {url} unavailable for {format_duration(now - since)}",
                {"since": isoformat_z(since)},
            ),
        )
        out.extend([alert] if alert else [])
    recovery = store.issuer_last_recovery(session)
    if recovery is not None:
        start, until = recovery
        threshold = isoformat_z(start)
        alerted = known.exists(ISSUER, AlertKind.UNAVAILABLE, threshold)
        if alerted or until - start >= after:
            known.resolve(session, known.unresolved(ISSUER, (AlertKind.UNAVAILABLE,)), now)
            alert = _emit_issuer(
                session,
                config,
                now,
                known,
                Decision(
                    AlertKind.RECOVERED,
                    threshold,
                    Severity.INFO,
                    f"[keyd INFO] issuer {url} is reachable again after {format_duration(until - start)}",
                    {"since": threshold, "until": isoformat_z(until)},
                ),
            )
            out.extend([alert] if alert else [])
    return out


def _emit_issuer(
    session: Session, config: Config, now: datetime, known: AlertIndex, decision: Decision
) -> AlertRecord | None:
    assert config.issuer is not None
    context = {"issuer": config.issuer.url, "decided_at": isoformat_z(now), "timezone": config.timezone_name}
    alert = _insert(session, config, now, decision, context, Subject(ISSUER))
    if alert is not None:
        known.add(alert)
    return alert


# -- shared -------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """Whom an alert is about, and what routes its e-mail."""

    about: str  # a key id, or ISSUER
    key_pk: int | None = None
    fingerprint: str | None = None
    principal: str | None = None
    sources: Sequence[str] = ()


def _emit(
    session: Session, config: Config, key: KeyRecord, now: datetime, known: AlertIndex, decision: Decision
) -> AlertRecord | None:
    subject = Subject(
        _about(key), key.pk, key.fingerprint, key.principal, [loc.source for loc in key.locations]
    )
    alert = _insert(session, config, now, decision, key_facts(key, config, now), subject)
    if alert is not None:
        known.add(alert)
    return alert


def _insert(
    session: Session,
    config: Config,
    now: datetime,
    decision: Decision,
    facts: Mapping[str, Any],
    subject: Subject,
) -> AlertRecord | None:
    kind, severity = decision.kind, decision.severity
    threshold = threshold_text(decision.threshold, decision.expires_at)  # as shown, and in the Message-ID
    alert = store.insert_alert(
        session,
        about=subject.about,
        fingerprint=subject.fingerprint,
        key_pk=subject.key_pk,
        kind=kind,
        threshold=decision.threshold,
        expires_at=decision.expires_at,
        severity=severity,
        created_at=now,
        message_id=message_id(subject.about, kind, threshold),
        subject=decision.subject,
        context={**facts, **decision.extra, "kind": kind, "severity": severity, "threshold": threshold},
    )
    if alert is None:
        return None
    targets: list[tuple[str, str]] = []
    if config.alerts.email is not None:
        targets += [
            (Channel.EMAIL, a)
            for a in email_recipients(config.alerts.email, subject.principal, subject.sources)
        ]
    if config.alerts.webhook is not None:
        targets.append((Channel.WEBHOOK, display_url(config.alerts.webhook.url)))
    store.add_deliveries(session, alert.id, targets, now)
    if not targets:
        log.warning(
            "alert %s has no delivery channel configured ([alerts.email] or [alerts.webhook])",
            alert.message_id,
        )
    return alert


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
