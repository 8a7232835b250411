"""keyd.report.status and render: pure, from synthetic snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from keyd.exposure import Exposure
from keyd.report import render
from keyd.report.status import build_status, effective_status, render_text, to_json
from keyd.sources.keyfile import NEVER
from keyd.store.inventory import InventorySnapshot
from keyd.store.keys import KeyRecord, Location
from keyd.store.models import SourceState

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ZRH = ZoneInfo("Europe/Zurich")


def loc(
    ref: str,
    status: str = "present",
    *,
    error: str | None = None,
    warnings: tuple[Exposure, ...] = (),
    key_id: str | None = "k1",
    source: str = "dir",
) -> Location:
    return Location(
        source=source, ref=ref, status=status, error=error, warnings=warnings, last_seen=AT, key_id=key_id
    )


def key(
    key_id: str, expires_at: datetime | None, status: str = "active", *locations: Location, **kw: object
) -> KeyRecord:
    fields: dict[str, object] = dict(
        pk=1,
        key_id=key_id,
        kind="serviceaccount",
        principal=f"svc-{key_id}",
        fingerprint="ab" * 32,
        algorithm="RS256",
        status=status,
        expires_at=expires_at,
        first_seen=AT,
        last_seen=AT,
        last_probe_at=None,
        last_probe_outcome=None,
        last_ok_at=None,
        last_error=None,
        locations=locations or (loc(f"/keys/{key_id}.json", key_id=key_id),),
    )
    fields.update(kw)
    return KeyRecord(**fields)  # type: ignore[arg-type]


def snapshot(
    *keys: KeyRecord, orphans: tuple[Location, ...] = (), sources: tuple[SourceState, ...] = ()
) -> InventorySnapshot:
    return InventorySnapshot(tuple(keys), orphans, sources)


def test_json_schema_and_values() -> None:
    dies = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)  # "2026-06-01" picked in Zurich
    snap = snapshot(
        key(
            "k1",
            dies,
            "active",
            last_probe_at=AT - timedelta(hours=3),
            last_probe_outcome="ok",
            last_ok_at=AT - timedelta(hours=3),
        ),
        key("k2", NEVER),
        key("k3", None, "missing"),
        orphans=(loc("/keys/junk.json", "invalid", error="is not valid JSON", key_id=None),),
    )
    rows = to_json(build_status(snap, AT, ZRH))
    assert [r["key_id"] for r in rows] == ["k1", "k2", "k3", None]
    k1 = rows[0]
    assert k1 == {
        "key_id": "k1",
        "kind": "serviceaccount",
        "principal": "svc-k1",
        "fingerprint": "ab" * 32,
        "algorithm": "RS256",
        "status": "active",
        "expiry_status": "valid",
        "expires_at": "2026-05-31T22:00:00Z",
        "last_usable_day": "2026-05-31",
        "seconds_left": 30 * 86400 + 10 * 3600,
        "days_left": 30,
        "locations": [
            {
                "source": "dir",
                "ref": "/keys/k1.json",
                "status": "present",
                "error": None,
                "warning": None,
                "kind": "file",
            }
        ],
        "last_probe_at": "2026-05-01T09:00:00Z",
        "last_probe_outcome": "ok",
        "last_ok_at": "2026-05-01T09:00:00Z",
        "last_error": None,
        "held": True,
        "expiry_source": "file",
        "diagnosis": None,
        "zitadel_created_at": None,
    }
    assert rows[1]["expiry_status"] == "never" and rows[1]["seconds_left"] is None
    assert rows[1]["expires_at"] == "9999-12-31T23:59:59Z"
    assert rows[2]["status"] == "missing" and rows[2]["expiry_status"] == "unknown"
    assert rows[3]["status"] == "invalid" and rows[3]["last_error"] == "is not valid JSON"
    assert set(rows[3]) == set(k1)


def test_status_rederived_at_instant() -> None:
    exp = AT + timedelta(days=1)
    snap = snapshot(
        key("k1", exp, "active"), key("k2", AT - timedelta(days=1), "expired"), key("k3", exp, "rejected")
    )
    later = {r["key_id"]: r["status"] for r in to_json(build_status(snap, exp, UTC))}
    assert later == {"k1": "expired", "k2": "expired", "k3": "rejected"}
    earlier = {r["key_id"]: r["status"] for r in to_json(build_status(snap, AT - timedelta(days=2), UTC))}
    assert earlier == {"k1": "active", "k2": "active", "k3": "rejected"}


def test_effective_status_keeps_inventory_verdicts() -> None:
    from keyd.checks.expiry import evaluate

    dead = evaluate(AT - timedelta(days=1), AT)
    for stored in ("missing", "invalid", "rejected"):
        assert effective_status(stored, dead) == stored
    assert effective_status("active", dead) == "expired"


def test_text_table_and_problems() -> None:
    failing = SourceState(
        name="vault:secret/keys", consecutive_failures=3, last_error="Vault is sealed", error_count=3
    )
    snap = snapshot(
        key(
            "k1",
            AT + timedelta(days=10),
            "active",
            loc("/keys/a.json", warnings=(Exposure("/keys/a.json", "readable by group/other"),)),
            loc("/keys/b.json", "invalid", error="is not valid JSON"),
            last_probe_at=AT - timedelta(hours=2),
            last_probe_outcome="rejected",
            last_error="key revoked or unknown to the issuer",
        ),
        key("k2", None, "missing", loc("/keys/gone.json", "missing", key_id="k2")),
        orphans=(loc("/keys/junk.json", "invalid", error="is empty", key_id=None),),
        sources=(failing,),
    )
    text = render_text(build_status(snap, AT, ZRH))
    lines = text.splitlines()
    assert lines[0].split() == [
        "KEY",
        "ID",
        "PRINCIPAL",
        "SOURCE",
        "EXPIRES",
        "(UTC)",
        "LAST",
        "DAY",
        "(Europe/Zurich)",
        "DAYS",
        "STATUS",
        "LAST",
        "PROBE",
    ]
    assert "2026-05-11T12:00:00Z" in lines[1] and "2026-05-11" in lines[1]
    assert "expiring" in lines[1] and "rejected 2h ago" in lines[1]
    assert "(dir)" in lines[2] and "missing" in lines[2] and "unknown" in lines[2]
    assert "Problems:" in text
    assert "/keys/b.json: INVALID (k1): is not valid JSON" in text
    assert "readable by group/other" in text
    assert "/keys/junk.json: INVALID: is empty" in text
    assert "key k1: key revoked or unknown to the issuer" in text
    assert "source vault:secret/keys: failing (3 scans in a row): Vault is sealed" in text
    assert all(line == line.rstrip() for line in lines)


def test_empty_inventory() -> None:
    assert 'run "keyd scan"' in render_text(build_status(snapshot(), AT, UTC))
    assert to_json(build_status(snapshot(), AT, UTC)) == []


def test_render_helpers() -> None:
    assert render.table(["A", "BB"], [["xxx", "y"], ["z", ""]]) == "A    BB\nxxx  y\nz"
    assert render.instant(None) == "-" and render.day(None) == "-"
    assert render.number(0) == "0"
    assert render.ago(AT - timedelta(minutes=90), AT) == "1h 30m ago"
    assert render.ago(AT + timedelta(minutes=5), AT) == "in 5m"
    assert render.shorten("/etc/keyd/keys/team/a.json", 12) == "/etc/…a.json"
    assert render.shorten("short", 12) == "short"


def test_control_characters_never_reach_the_terminal_and_warnings_stay_whole() -> None:
    """Rows an older keyd (or a direct database write) left with control
    characters; a permission warning whose text holds a comma-separated hint."""
    warnings = (
        Exposure("/keys/a.json", "readable by other users (mode 0644, chmod o-r it)"),
        Exposure("/keys", "readable by other users (mode 0755, chmod o-r it)", directory=True),
    )
    snap = snapshot(
        key(
            "k1\r\nKEYD OK - forged",
            AT + timedelta(days=10),
            "active",
            loc("/keys/a.json", warnings=warnings),
            loc("/keys/b\n.json", "invalid", error="\x1b[2Jis not valid JSON"),
        ),
        sources=(),
    )
    text = render_text(build_status(snap, AT, ZRH))
    assert "\r" not in text and "\x1b" not in text
    assert not any(line.startswith("KEYD OK") for line in text.splitlines())
    assert "k1\\r\\nKEYD OK - forged" in text
    assert "/keys/b\\n.json: INVALID (k1\\r\\nKEYD OK - forged): \\x1b[2Jis not valid JSON" in text
    assert (
        "dir: /keys/a.json: warning: key file /keys/a.json is readable by other users "
        "(mode 0644, chmod o-r it)"
    ) in text
    assert "dir: warning: directory /keys is readable by other users (mode 0755, chmod o-r it)" in text
