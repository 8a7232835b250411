"""keyd check's verdict: the Nagios mapping, table-driven."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.checks.probe import ProbeReport, ProbeResult
from keyd.config import AlertsConfig, Config, DirectorySourceConfig, TokensConfig
from keyd.runtime.check import judge
from keyd.runtime.cycle import CycleReport, StageReport
from keyd.store.keys import KeyRecord, Location
from keyd.store.snapshot import LocationProblem, SourceSnapshot, TokenSnapshot

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
SRC = DirectorySourceConfig(name="directory:/keys", path=Path("/keys"))
CONFIG = Config(sources=(SRC,))


def key(
    key_id: str,
    *,
    status: str = "active",
    left: timedelta | None = timedelta(days=90),
    error: str | None = None,
) -> KeyRecord:
    return KeyRecord(
        pk=1,
        key_id=key_id,
        kind="serviceaccount",
        principal=f"user-{key_id}",
        status=status,
        expires_at=None if left is None else NOW + left,
        last_error=error,
        locations=(Location(SRC.name, f"/keys/{key_id}.json"),),
    )


def source(failures: int = 0) -> SourceSnapshot:
    return SourceSnapshot(
        SRC.name,
        NOW,
        NOW if not failures else None,
        "permission denied" if failures else None,
        failures,
        failures,
    )


@pytest.mark.parametrize(
    ("keys", "locations", "sources", "status", "headline"),
    [
        (
            [key("a"), key("b", left=None)],
            [],
            [source()],
            "ok",
            "KEYD OK - 2 keys, none expiring within 30d | keys=2 expiring=0 expired=0 rejected=0 "
            "invalid=0 missing=0 source_errors=0 unheld=0 gone=0",
        ),
        (
            [key("a", left=timedelta(days=5, hours=1)), key("b")],
            [],
            [source()],
            "warning",
            "KEYD WARNING - 1 key expiring in 5d, 0 rejected | keys=2 expiring=1 expired=0 "
            "rejected=0 invalid=0 missing=0 source_errors=0 unheld=0 gone=0",
        ),
        (
            [key("a", left=timedelta(hours=3))],
            [],
            [],
            "warning",
            "KEYD WARNING - 1 key expiring in 3h, 0 rejected | keys=1 expiring=1 expired=0 "
            "rejected=0 invalid=0 missing=0 source_errors=0 unheld=0 gone=0",
        ),
        (
            [
                key("a", left=-timedelta(seconds=1)),
                key("b", status="rejected", error="invalid_grant"),
                key("c", left=timedelta(days=2)),
            ],
            [],
            [source(2)],
            "critical",
            "KEYD CRITICAL - 1 expired, 1 rejected, 0 invalid, 1 expiring | keys=3 expiring=1 "
            "expired=1 rejected=1 invalid=0 missing=0 source_errors=1 unheld=0 gone=0",
        ),
        (
            [key("a")],
            [LocationProblem(SRC.name, "/keys/bad.json", "invalid", "not JSON")],
            [],
            "critical",
            None,
        ),
        (
            [key("a")],
            [],
            [source(1)],
            "unknown",
            "KEYD UNKNOWN - source directory:/keys failing: permission denied | keys=1 expiring=0 "
            "expired=0 rejected=0 invalid=0 missing=0 source_errors=1 unheld=0 gone=0",
        ),
        # a removed, expired key is a finished rotation: not a problem
        ([key("old", status="missing", left=-timedelta(days=3)), key("new")], [], [], "ok", None),
    ],
)
def test_mapping(
    keys: list[KeyRecord],
    locations: list[LocationProblem],
    sources: list[SourceSnapshot],
    status: str,
    headline: str | None,
) -> None:
    verdict = judge(CONFIG, NOW, keys, locations, sources)
    assert verdict.status == status
    assert verdict.exit_code == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[status]
    if headline:
        assert verdict.summary() == headline


def test_expiry_at_the_instant_is_expired_even_if_status_lags() -> None:
    verdict = judge(CONFIG, NOW, [key("a", left=timedelta(0))], [], [])
    assert verdict.status == "critical" and verdict.counts["expired"] == 1
    assert verdict.details()[0].startswith("CRITICAL: key a (user-a) expired at 2026-03-01T12")


def test_failed_stage_and_unreachable_issuer_are_unknown() -> None:
    class Probe:
        issuer_reachable = False

    cycle = CycleReport(
        started=NOW,
        stages=[
            StageReport("scan"),
            StageReport("probe", result=Probe()),
            StageReport("outbox", ok=False, error="SMTP down"),
        ],
    )
    verdict = judge(CONFIG, NOW, [key("a")], [], [], cycle)
    assert verdict.status == "unknown"
    assert "stage outbox failed: SMTP down; issuer unavailable" in verdict.summary()


def test_json_schema_is_stable() -> None:
    cycle = CycleReport(
        started=NOW,
        dry_run=True,
        stages=[StageReport("outbox", skipped=True)],
        skipped_side_effects=["outbox: would send email to ops@x: s"],
    )
    doc = judge(CONFIG, NOW, [key("a", left=timedelta(days=1))], [], [source()], cycle).to_json()
    assert list(doc) == [
        "schema",
        "status",
        "exit_code",
        "summary",
        "at",
        "dry_run",
        "warn_within_seconds",
        "counts",
        "problems",
        "sources",
        "stages",
        "skipped_side_effects",
    ]
    assert doc["schema"] == "keyd.check/1" and doc["dry_run"] is True
    assert doc["problems"][0] == {
        "severity": "warning",
        "kind": "expiring",
        "key_id": "a",
        "principal": "user-a",
        "expires_at": "2026-03-02T12:00:00Z",
        "seconds_left": 86400,
        "ref": "/keys/a.json",
        "message": doc["problems"][0]["message"],
    }
    assert doc["skipped_side_effects"] == ["outbox: would send email to ops@x: s"]


def test_largest_threshold_sets_the_warning_window() -> None:
    config = Config(alerts=AlertsConfig(thresholds=(timedelta(days=7), timedelta(days=2))))
    assert judge(config, NOW, [key("a", left=timedelta(days=8))], [], []).status == "ok"
    assert judge(config, NOW, [key("a", left=timedelta(days=6))], [], []).status == "warning"


def test_dry_run_reports_the_stored_issuer_outage() -> None:
    """A dry run does not probe: an outage the last real round recorded
    makes the verdict unknown, but never hides a warning."""
    since = NOW - timedelta(minutes=20)
    verdict = judge(CONFIG, NOW, [key("a")], [], [], issuer_down_since=since)
    assert verdict.status == "unknown"
    assert verdict.summary().startswith(
        "KEYD UNKNOWN - issuer unavailable since 2026-03-01T11:40:00Z (last probe round; "
        "a dry run does not probe) | "
    )
    soon = judge(CONFIG, NOW, [key("a", left=timedelta(days=2))], [], [], issuer_down_since=since)
    assert soon.status == "warning"
    assert [p.kind for p in soon.problems] == ["expiring", "issuer"]


def sink(state: str, left: timedelta) -> TokenSnapshot:
    return TokenSnapshot(
        "a", "user-a", "secret/tokens/user-a", state, NOW + left, "Vault at http://vault: permission denied"
    )


TOKENS = replace(CONFIG, tokens=TokensConfig(mount="secret", path="tokens/{principal}"))


@pytest.mark.parametrize(
    ("sinks", "status"),
    [
        ([sink("ok", timedelta(hours=1))], "ok"),
        ([sink("failed", timedelta(hours=1))], "warning"),
        ([sink("conflict", timedelta(hours=1))], "warning"),
        ([sink("ok", -timedelta(seconds=1))], "critical"),  # serving an expired token
        ([sink("failed", -timedelta(hours=1))], "critical"),
    ],
)
def test_token_write_back_counts(sinks: list[TokenSnapshot], status: str) -> None:
    verdict = judge(TOKENS, NOW, [key("a")], [], [], tokens=sinks)
    assert verdict.status == status
    assert judge(CONFIG, NOW, [key("a")], [], [], tokens=sinks).status == "ok"  # no [tokens]


def test_a_round_that_proves_no_key_is_not_ok() -> None:
    round_ = ProbeReport(
        at=NOW,
        results=[
            ProbeResult(
                key_id=k, principal=f"user-{k}", kind="serviceaccount", outcome="bad_response", at=NOW
            )
            for k in ("a", "b")
        ],
    )
    cycle = CycleReport(started=NOW, stages=[StageReport("probe", result=round_)])
    verdict = judge(CONFIG, NOW, [key("a"), key("b")], [], [], cycle)
    assert verdict.status == "unknown"
    assert "no key could be proven: 2 bad answer(s), 0 unavailable" in verdict.summary()
