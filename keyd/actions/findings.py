"""Alerts from what zitadel sources list (README "ZITADEL as a source"):

* ``unheld``: a key ZITADEL lists that no file or Vault location holds,
  once per key ("deployed somewhere unwatched, or forgotten"); resolved
  when a file holding it appears. Its expiry ladder runs only with
  ``alerts.unheld_ladder``. A key an unfinished rotation is handling (the
  old key during its overlap, the new key before it is published) is not
  unheld in that sense and gets no notice.
* ``policy``, each optional and each once: a listed key that never expires
  (``alerts.never_expiring``), a listed key whose lifetime (expiry −
  ZITADEL's creation date) exceeds ``alerts.max_lifetime``, a user with
  more than ``alerts.max_keys_per_user`` live keys listed (carried by the
  user's newest key). ``policy_findings`` gives the same findings to
  ``keyd check`` as warnings.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keyd.actions.decision import Decision
from keyd.checks.expiry import is_never
from keyd.config import Config
from keyd.store.alerts import AlertIndex
from keyd.store.keys import KeyRecord
from keyd.store.rotations import in_flight_key_ids
from keyd.timeutil import format_duration
from keyd.vocab import AlertKind, KeyStatus, LocationKind, LocationStatus, Severity

if TYPE_CHECKING:
    from keyd.store.alerts import Session

Emit = Callable[[KeyRecord, Decision], None]  # queues the alert (alerts._emit, bound to its batch)


@dataclass(frozen=True)
class Finding:
    key: KeyRecord
    rule: str  # never_expiring | max_lifetime | max_keys_per_user
    threshold: str  # the alert's threshold: the rule and its limit
    text: str  # "never expires", "lives 730 days (limit 400 days)", ...


def is_listed(key: KeyRecord) -> bool:
    """A zitadel source lists this key right now."""
    return any(
        loc.kind == LocationKind.ZITADEL and loc.status == LocationStatus.PRESENT for loc in key.locations
    )


def policy_findings(config: Config, keys: Iterable[KeyRecord], now: datetime) -> list[Finding]:
    """The policy findings over the keys zitadel sources list."""
    rules = config.alerts
    out: list[Finding] = []
    live: dict[str, list[KeyRecord]] = defaultdict(list)
    for key in keys:
        if not is_listed(key) or key.expires_at is None:
            continue
        never = is_never(key.expires_at)
        if rules.never_expiring and never:
            out.append(Finding(key, "never_expiring", "never_expiring", "never expires"))
        lifetime = key.expires_at - key.zitadel_created_at if key.zitadel_created_at else None
        if (
            rules.max_lifetime is not None
            and lifetime is not None
            and not never
            and lifetime > rules.max_lifetime
        ):
            limit = format_duration(rules.max_lifetime)
            out.append(
                Finding(
                    key,
                    "max_lifetime",
                    f"max_lifetime>{limit}",
                    f"lives {format_duration(lifetime)} (limit {limit})",
                )
            )
        if never or key.expires_at > now:
            live[key.principal].append(key)
    limit_n = rules.max_keys_per_user
    for user_keys in live.values():
        if limit_n is not None and len(user_keys) > limit_n:
            newest = max(user_keys, key=lambda k: (k.zitadel_created_at or k.first_seen, k.key_id))
            out.append(
                Finding(
                    newest,
                    "max_keys_per_user",
                    f"max_keys_per_user>{limit_n}",
                    f"is the newest of {len(user_keys)} live keys of its user (limit {limit_n})",
                )
            )
    return out


def zitadel_alerts(
    session: Session,
    config: Config,
    keys: Sequence[KeyRecord],
    now: datetime,
    known: AlertIndex,
    emit: Emit,
    about: Callable[[KeyRecord], str],
) -> None:
    """Unheld notices and policy alerts, each at most once (``emit`` queues
    them; the caller writes its batch)."""
    rotating = in_flight_key_ids(session, [k.key_id for k in keys if k.status == KeyStatus.UNHELD])
    for key in keys:
        if key.key_id in rotating:
            continue  # keyd's own rotation holds it (old key in its overlap, or new key before publish)
        if key.status == KeyStatus.UNHELD:
            emit(
                key,
                Decision(
                    AlertKind.UNHELD,
                    "unheld",
                    Severity.WARNING,
                    _subject(key, "exists in ZITADEL but keyd finds it nowhere"),
                    {
                        "held": False,
                        "hint": "deployed somewhere keyd does not watch, or "
                        "forgotten: remove it in ZITADEL if unused",
                    },
                ),
            )
        else:
            known.resolve(known.unresolved(about(key), (AlertKind.UNHELD,)), now)
    for finding in policy_findings(config, keys, now):
        extra: dict[str, Any] = {"rule": finding.rule, "finding": finding.text}
        emit(
            finding.key,
            Decision(
                AlertKind.POLICY,
                finding.threshold,
                Severity.WARNING,
                _subject(finding.key, f"{finding.text}: policy"),
                extra,
            ),
        )


def _subject(key: KeyRecord, what: str) -> str:
    return f"[keyd WARNING] key {key.key_id} of user {key.principal} {what}"
