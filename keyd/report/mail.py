"""Alert e-mails: multipart/alternative, plain text + HTML.

Pure: a function of alert records (``store.alerts.AlertRecord``), the
sender and the recipients. Everything shown comes from the alert's
``context`` facts, which never hold key material; HTML is escaped.

* One alert → one message whose ``Message-ID`` is the alert's
  deterministic id and whose ``Date`` is the decision time, so a repeated
  send (crash between send and "sent") is byte-identical and folds.
* Several alerts → a digest: one message listing all of them, highest
  severity in the subject, ``Message-ID`` derived from the alert ids.

Each alert says what happened, the expiry instant in UTC and the last
usable local day (docs/zitadel.md §2), where the key lives and what to do.
"""

from __future__ import annotations

import email.policy
import hashlib
import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Final

from keyd.checks.expiry import time_left
from keyd.store.alerts import AlertRecord
from keyd.text import escape
from keyd.timeutil import isoformat_z
from keyd.vocab import AlertKind, KeyKind, LocationKind, LocationStatus, Severity

_SEVERITY_ORDER: Final[dict[str, int]] = {severity: rank for rank, severity in enumerate(Severity)}
_TAG = "[keyd "
# CRLF for SMTP; headers up to RFC 5322's hard limit instead of folding at 78,
# because Python folds a long single-line subject right after "Subject:",
# which some readers then show with a leading blank.
_POLICY: Final = email.policy.SMTP.clone(max_line_length=998)


def render_message(alerts: Sequence[AlertRecord], *, sender: str, to: Sequence[str]) -> EmailMessage:
    """The e-mail for one alert, or a digest for several."""
    if not alerts:
        raise ValueError("render_message needs at least one alert")
    if len(alerts) == 1:
        alert = alerts[0]
        subject, msgid, date = alert.subject, alert.message_id, alert.created_at
        intro = ""
    else:
        top = max(alerts, key=lambda a: _SEVERITY_ORDER.get(a.severity, 0)).severity
        subject = f"[keyd {top.upper()}] {len(alerts)} key alerts"
        ids = ",".join(str(a.id) for a in sorted(alerts, key=lambda a: a.id))
        msgid = f"<digest-{hashlib.sha256(ids.encode()).hexdigest()[:16]}@keyd>"
        date = max(a.created_at for a in alerts)
        intro = f"keyd decided {len(alerts)} alerts:"
    blocks = [_block(a) for a in alerts]
    return _assemble(subject, msgid, date, sender, to, intro, blocks)


def render_test_message(*, sender: str, to: Sequence[str], now: datetime, server: str) -> EmailMessage:
    """What ``keyd alert test`` sends."""
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    lines = [("Sent", isoformat_z(now)), ("Server", server)]
    block = _Block("keyd can send you e-mail. No action is needed.", lines, [])
    return _assemble(
        "[keyd TEST] test message from keyd", f"<test-{stamp}@keyd>", now, sender, to, "", [block]
    )


class _Block:
    """One alert's content, rendered twice (plain and HTML)."""

    def __init__(self, headline: str, facts: list[tuple[str, str]], todo: list[str]) -> None:
        self.headline = headline
        self.facts = facts
        self.todo = todo

    def plain(self) -> str:
        width = max((len(k) for k, _ in self.facts), default=0)
        out = [escape(self.headline), ""] + [f"  {k + ':':<{width + 1}} {escape(v)}" for k, v in self.facts]
        if self.todo:
            out += ["", "What to do:"] + [f"  {n}. {escape(step)}" for n, step in enumerate(self.todo, 1)]
        return "\n".join(out)

    def html(self) -> str:
        def e(text: str) -> str:
            return html.escape(escape(text))

        rows = "".join(f'<tr><th align="left">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in self.facts)
        out = f"<h3>{e(self.headline)}</h3><table>{rows}</table>"
        if self.todo:
            items = "".join(f"<li>{e(step)}</li>" for step in self.todo)
            out += f"<p>What to do:</p><ol>{items}</ol>"
        return out


def _assemble(
    subject: str,
    msgid: str,
    date: datetime,
    sender: str,
    to: Sequence[str],
    intro: str,
    blocks: Sequence[_Block],
) -> EmailMessage:
    msg = EmailMessage(policy=_POLICY)
    # Facts come from key files: a CR/LF in a key id must not end the header.
    msg["Subject"] = escape(subject)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = msgid
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
    msg["X-Mailer"] = "keyd"
    sep = "\n\n" + "-" * 60 + "\n\n"
    plain = (intro + "\n\n" if intro else "") + sep.join(b.plain() for b in blocks)
    msg.set_content(plain + "\n\n-- \nkeyd\n")
    body = (f"<p>{html.escape(intro)}</p>" if intro else "") + "<hr>".join(b.html() for b in blocks)
    msg.add_alternative(
        f"<!DOCTYPE html><html><body>{body}<p>-- <br>keyd</p></body></html>\n", subtype="html"
    )
    # deterministic boundary: a repeated send is byte-identical, not just same-id
    msg.set_boundary("keyd-" + hashlib.sha256(msgid.encode()).hexdigest()[:24])
    return msg


def _headline(alert: AlertRecord) -> str:
    subject = alert.subject
    if subject.startswith(_TAG) and "] " in subject:
        return subject.split("] ", 1)[1]
    return subject


def _block(alert: AlertRecord) -> _Block:
    ctx = alert.context
    if alert.kind in (AlertKind.UNAVAILABLE, AlertKind.RECOVERED):
        return _issuer_block(alert, ctx)
    facts: list[tuple[str, str]] = [
        ("Severity", alert.severity.upper()),
        ("Key id", str(ctx.get("key_id"))),
        (_who(ctx).capitalize(), str(ctx.get("principal"))),
    ]
    facts += _expiry_facts(ctx)
    if alert.kind == AlertKind.ROTATED:
        new = _mapping(ctx.get("replaced_by")) or {
            "key_id": ctx.get("new_key_id"),
            "expires_at": ctx.get("new_expires_at"),
        }
        facts.append(
            ("Replaced by", f"key {new.get('key_id')} (expires {new.get('expires_at') or 'unknown'})")
        )
    if alert.kind in ROTATION_PROBLEMS:
        facts.append(("Failed step", str(ctx.get("step"))))
        facts.append(("Problem", str(ctx.get("problem"))))
        if ctx.get("new_key_id"):
            facts.append(
                (
                    "New key",
                    f"{ctx.get('new_key_id')} ("
                    f"{'removed again' if ctx.get('new_key_removed') else 'registered'}, "
                    f"written to {ctx.get('locations_written', 0)} location(s))",
                )
            )
    if alert.kind == AlertKind.REJECTED:
        facts.append(("Issuer said", str(ctx.get("error") or "key revoked or unknown")))
        facts.append(("Last probe", str(ctx.get("last_probe_at") or "?")))
    for n, loc in enumerate(_locations(ctx), 1):
        facts.append((f"Location {n}", _location(loc)))
    facts.append(("Fingerprint", f"SHA-256 {ctx.get('fingerprint')}"))
    return _Block(_headline(alert), facts, _todo(alert.kind, ctx))


def _expiry_facts(ctx: Mapping[str, Any]) -> list[tuple[str, str]]:
    if ctx.get("never_expires"):
        return [("Expires", "never")]
    if not ctx.get("expires_at"):
        return [("Expires", "unknown (the key file has no expirationDate)")]
    facts = [
        ("Expires at", f"{ctx['expires_at']} (UTC); the key is dead from this instant"),
        (
            "Last usable day",
            f"{ctx.get('last_usable_day')} ({ctx.get('timezone')}), the "
            "last calendar day on which the key works",
        ),
    ]
    seconds = ctx.get("seconds_left")
    if isinstance(seconds, int) and seconds > 0:
        facts.append(("Time left", f"{time_left(seconds, 'exact')} (at {ctx.get('decided_at')})"))
    return facts


def _issuer_block(alert: AlertRecord, ctx: Mapping[str, Any]) -> _Block:
    facts = [
        ("Severity", alert.severity.upper()),
        ("Issuer", str(ctx.get("issuer"))),
        ("Unavailable since", str(ctx.get("since"))),
    ]
    if alert.kind == AlertKind.RECOVERED:
        facts.append(("Reachable again at", str(ctx.get("until"))))
        todo: list[str] = []
    else:
        todo = [
            "Probes and token refreshes wait until the issuer answers again; keys are "
            "not affected by the outage itself.",
            "Check DNS, network, TLS and the issuer's status; `keyd config check` reaches every dependency.",
            'keyd sends one "reachable again" notice when it recovers.',
        ]
    return _Block(_headline(alert), facts, todo)


def _who(ctx: Mapping[str, Any]) -> str:
    return "app" if ctx.get("key_kind") == KeyKind.APPLICATION else "user"


def _mapping(value: object) -> Mapping[str, Any]:
    """The renderer is total: a context written by an older keyd (or
    damaged) renders as "?" facts, never as an exception."""
    return value if isinstance(value, Mapping) else {}


def _locations(ctx: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = ctx.get("locations")
    return [_mapping(loc) for loc in found] if isinstance(found, list) else []


def _location(loc: Mapping[str, Any]) -> str:
    source, ref = str(loc.get("source", "")), str(loc.get("ref", ""))
    if loc.get("kind") == LocationKind.ZITADEL:
        return f"listed by ZITADEL ({ref}, source {source})"
    where = f"Vault {ref}" if source.startswith("vault") else f"file {ref}"
    status = loc.get("status")
    return f"{where} (source {source}{'' if status == LocationStatus.PRESENT else f', {status}'})"


def _zitadel_todo(kind: str, ctx: Mapping[str, Any]) -> list[str]:
    key_id, principal = ctx.get("key_id"), ctx.get("principal")
    if kind == AlertKind.UNHELD:
        return [
            f"keyd watches no file or Vault secret holding key {key_id} of {principal}.",
            "If it is deployed on a host or in a store keyd does not watch, add that place as a source;",
            f"if nothing uses it, delete it: ZITADEL console → Users → Service Users → {principal} → Keys.",
        ]
    return [
        f"Key {key_id} {ctx.get('finding', 'breaks a key policy')} (as ZITADEL lists it).",
        _console_steps(ctx) + " with an expiration date inside the policy, deploy it,",
        f"then delete key {key_id} in the console.",
    ]


def _console_steps(ctx: Mapping[str, Any]) -> str:
    principal = ctx.get("principal")
    if ctx.get("key_kind") == KeyKind.APPLICATION:
        return (
            f"ZITADEL console → Projects → <project> → Applications → {principal} → Keys → "
            "New, and download the key JSON"
        )
    return f"ZITADEL console → Users → Service Users → {principal} → Keys → New, and download the key JSON"


ROTATION_PROBLEMS = (AlertKind.ROTATION_FAILED, AlertKind.ROTATION_BLOCKED)


def _todo(kind: str, ctx: Mapping[str, Any]) -> list[str]:
    key_id = ctx.get("key_id")
    where = (
        "; ".join(str(loc.get("ref")) for loc in _locations(ctx) if loc.get("kind") != LocationKind.ZITADEL)
        or "its source"
    )
    if kind in (AlertKind.UNHELD, AlertKind.POLICY):
        return _zitadel_todo(kind, ctx)
    if kind == AlertKind.REJECTED and ctx.get("diagnosis") == "removed":
        return [
            f"ZITADEL no longer lists key {key_id}: it was deleted there, so it cannot mint tokens any more.",
            f"Delete the key file ({where}), or replace it with a current key of "
            f"{ctx.get('principal')} if something still uses it.",
        ]
    if kind == AlertKind.ROTATED and ctx.get("new_key_id"):
        return [
            f"Nothing to do: keyd rotated key {key_id}; key {ctx.get('new_key_id')} is in "
            f"its place ({where}).",
            "`keyd rotations` shows the history.",
        ]
    if kind in ROTATION_PROBLEMS:
        return [
            "The old key is untouched and still registered; it keeps working until it expires.",
            "Fix the problem above (a location changed since keyd scanned it, keyd's "
            "service user lacks user.write, a hook failed …), then run "
            f"`keyd rotate {key_id}` to resume.",
            "Or rotate by hand: " + _console_steps(ctx) + ".",
        ]
    if kind == AlertKind.ROTATED:
        return [
            f"Nothing urgent: key {key_id} has a successor. Remove the old key file "
            f"({where}) once nothing uses it,",
            f"then delete key {key_id} in the ZITADEL console (…→ Keys).",
            "`keyd status` shows what keyd still tracks.",
        ]
    steps = [
        _console_steps(ctx) + ".",
        f"Replace the key where it lives ({where}) and deploy it to what uses it.",
        "Check the new file with `keyd inspect NEW.json`; `keyd status` shows the "
        "inventory after the next scan.",
        f"Delete the old key {key_id} in the console once nothing uses it.",
    ]
    if kind == AlertKind.UNTRACKED:
        steps.insert(
            0,
            "This key file has no expirationDate (created before 2024): keyd "
            "cannot tell when it expires. Replace it with a new key.",
        )
    if kind == AlertKind.REJECTED:
        steps.insert(
            0,
            "The issuer refuses this key (revoked, deleted or unknown). Services using it cannot get tokens.",
        )
    return steps
