"""keyd.report.mail: plain + HTML, escaped, deterministic, no key material."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

from keyd.report.mail import render_message, render_test_message
from keyd.store.alerts import AlertRecord

AT = datetime(2026, 12, 24, 23, 0, tzinfo=UTC)


def _record(id: int = 1, kind: str = "expiring", severity: str = "critical", **ctx: Any) -> AlertRecord:
    context = {
        "key_id": "292834923480293",
        "principal": "292834923480001",
        "key_kind": "serviceaccount",
        "fingerprint": "ab" * 32,
        "expires_at": "2026-12-31T23:00:00Z",
        "last_usable_day": "2026-12-31",
        "timezone": "Europe/Zurich",
        "seconds_left": 3 * 86400,
        "decided_at": "x",
        "locations": [{"source": "vault:secret/zitadel", "ref": "secret/zitadel/<a&b>", "status": "present"}],
        **ctx,
    }
    return AlertRecord(
        id,
        "key:292834923480293",
        "ab" * 32,
        1,
        kind,
        "3d",
        datetime(2026, 12, 31, 23, tzinfo=UTC) + timedelta(seconds=id),
        severity,
        AT,
        f"<alert-{id}@keyd>",
        f"[keyd {severity.upper()}] key 292834923480293 of user 292834923480001 expires in 3 days <b>",
        context,
        None,
    )


def _bodies(msg: Any) -> tuple[str, str]:
    parsed = message_from_bytes(bytes(msg), policy=policy.default)
    plain = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    return plain, html


def test_single_alert() -> None:
    msg = render_message([_record()], sender="keyd@example.org", to=["ops@example.org"])
    assert msg["Message-ID"] == "<alert-1@keyd>"
    assert msg["Subject"].startswith("[keyd CRITICAL] key 292834923480293 of user")
    assert msg["Date"] == "Thu, 24 Dec 2026 23:00:00 +0000"
    plain, html = _bodies(msg)
    assert "Vault secret/zitadel/<a&b>" in plain
    assert "secret/zitadel/&lt;a&amp;b&gt;" in html and "<a&b>" not in html
    assert "expires in 3 days &lt;b&gt;" in html
    assert "Last usable day" in plain and "2026-12-31 (Europe/Zurich)" in plain
    assert "ZITADEL console → Users → Service Users → 292834923480001 → Keys → New" in plain


def test_same_alert_renders_identically() -> None:
    one = render_message([_record()], sender="k@x", to=["o@x"])
    two = render_message([_record()], sender="k@x", to=["o@x"])
    assert bytes(one) == bytes(two)


def test_digest() -> None:
    msg = render_message([_record(1, severity="warning"), _record(2)], sender="k@x", to=["o@x"])
    assert msg["Subject"] == "[keyd CRITICAL] 2 key alerts"
    assert msg["Message-ID"].startswith("<digest-")
    plain, _ = _bodies(msg)
    assert plain.count("key 292834923480293 of user 292834923480001 expires") == 2


def test_application_key_console_path() -> None:
    plain, _ = _bodies(render_message([_record(key_kind="application")], sender="k@x", to=["o@x"]))
    assert "Projects → <project> → Applications → 292834923480001 → Keys → New" in plain


def test_issuer_alert() -> None:
    rec = AlertRecord(
        1,
        "issuer",
        None,
        None,
        "unavailable",
        "t",
        None,
        "warning",
        AT,
        "<a@keyd>",
        "[keyd WARNING] issuer https://i.example unavailable for 35m",
        {"issuer": "https://i.example", "since": "2026-12-24T22:25:00Z"},
        None,
    )
    plain, _ = _bodies(render_message([rec], sender="k@x", to=["o@x"]))
    assert "Unavailable since" in plain and "keyd config check" in plain


def test_test_message() -> None:
    msg = render_test_message(sender="k@x", to=["a@x", "b@x"], now=AT, server="h:25 (none)")
    assert msg["To"] == "a@x, b@x" and msg["Subject"] == "[keyd TEST] test message from keyd"
