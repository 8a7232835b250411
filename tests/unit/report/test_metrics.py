"""/metrics content: a snapshot refreshed from the database, served by scrapes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.report.metrics import KeydMetrics
from keyd.store.engine import make_engine
from keyd.store.models import Alert, Delivery, Key, SourceState, TokenSink

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _key(key_id: str, status: str = "active", expires: datetime | None = None) -> Key:
    return Key(
        key_id=key_id,
        kind="serviceaccount",
        principal=f"user-{key_id}",
        algorithm="RS256",
        fingerprint="f" * 64,
        expires_at=expires,
        content_hash="c" * 64,
        status=status,
        first_seen=NOW,
        last_seen=NOW,
        updated_at=NOW,
        probe_failures=0,
        last_ok_at=NOW - timedelta(hours=1) if status == "active" else None,
    )


def seed(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        good = _key("k1", expires=NOW + timedelta(days=5))
        s.add_all([good, _key("k2", "rejected", NOW + timedelta(days=90)), _key("k3")])
        s.flush()
        s.add(
            TokenSink(
                key_pk=good.id,
                mount="secret",
                path="zitadel/tokens/user-k1",
                state="ok",
                expires_at=NOW + timedelta(hours=12),
                updated_at=NOW,
                failures=0,
            )
        )
        s.add(
            SourceState(
                name="directory:/etc/keyd/keys", error_count=3, consecutive_failures=1, last_error="boom"
            )
        )
        alert = Alert(
            about="key:good",
            key_pk=good.id,
            kind="expiring",
            threshold="7d",
            severity="warning",
            created_at=NOW,
            message_id="<m@keyd>",
            subject="s",
            context="{}",
        )
        s.add(alert)
        s.flush()
        s.add(
            Delivery(
                alert_id=alert.id,
                channel="email",
                recipient="ops@example.org",
                state="pending",
                attempts=0,
                next_attempt_at=NOW,
            )
        )


def samples(metrics: KeydMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_default_series_two_per_key_the_rest_aggregates(engine: Engine) -> None:
    seed(engine)
    metrics = KeydMetrics(engine, version="0.1.0", leader=lambda: True, last_tick=lambda: NOW)
    metrics.observe_probe("ok", 0.2)
    got = samples(metrics)
    k1 = {("key_id", "k1"), ("principal", "user-k1")}
    k2 = {("key_id", "k2"), ("principal", "user-k2")}
    assert (
        got[("keyd_key_expiration_timestamp_seconds", frozenset(k1))] == (NOW + timedelta(days=5)).timestamp()
    )
    assert (
        "keyd_key_expiration_timestamp_seconds",
        frozenset({("key_id", "k3"), ("principal", "user-k3")}),
    ) not in got  # unknown expiry
    assert got[("keyd_key_status_code", frozenset(k1))] == 0
    assert got[("keyd_key_status_code", frozenset(k2))] == 2  # rejected
    per_key = [name for name, labels in got if dict(labels).get("key_id")]
    assert sorted(set(per_key)) == ["keyd_key_expiration_timestamp_seconds", "keyd_key_status_code"]
    assert len(per_key) <= 2 * 3
    assert got[("keyd_keys", frozenset({("status", "active")}))] == 2
    assert got[("keyd_keys", frozenset({("status", "rejected")}))] == 1
    assert got[("keyd_keys", frozenset({("status", "missing")}))] == 0
    assert (
        got[("keyd_key_last_probe_success_oldest_timestamp_seconds", frozenset())]
        == (NOW - timedelta(hours=1)).timestamp()
    )
    assert got[("keyd_keys_without_probe_success", frozenset())] == 0
    assert got[("keyd_tokens", frozenset({("state", "ok")}))] == 1
    assert (
        got[("keyd_token_expiration_earliest_timestamp_seconds", frozenset())]
        == (NOW + timedelta(hours=12)).timestamp()
    )
    assert got[("keyd_source_errors_total", frozenset({("source", "directory:/etc/keyd/keys")}))] == 3
    assert got[("keyd_alert_deliveries_unsent", frozenset())] == 1
    assert got[("keyd_leader", frozenset())] == 1
    assert got[("keyd_db_up", frozenset())] == 1
    assert got[("keyd_build_info", frozenset({("version", "0.1.0")}))] == 1
    assert got[("keyd_last_tick_timestamp_seconds", frozenset())] == NOW.timestamp()
    assert got[("keyd_probe_duration_seconds_count", frozenset())] == 1


def test_per_key_detail_behind_the_option(engine: Engine) -> None:
    seed(engine)
    got = samples(KeydMetrics(engine, version="0.1.0", per_key=True))
    k1 = {("key_id", "k1"), ("principal", "user-k1")}
    k2 = {("key_id", "k2"), ("principal", "user-k2")}
    assert (
        got[("keyd_key_last_probe_success_timestamp_seconds", frozenset(k1))]
        == (NOW - timedelta(hours=1)).timestamp()
    )
    assert got[("keyd_key_status", frozenset(k2 | {("status", "rejected")}))] == 1
    assert got[("keyd_key_status", frozenset(k2 | {("status", "active")}))] == 0
    assert (
        got[
            (
                "keyd_token_expiration_timestamp_seconds",
                frozenset(k1 | {("sink", "secret/zitadel/tokens/user-k1")}),
            )
        ]
        == (NOW + timedelta(hours=12)).timestamp()
    )
    assert got[("keyd_key_status_code", frozenset(k1))] == 0  # the defaults stay


def test_a_scrape_reads_the_snapshot_not_the_database(engine: Engine) -> None:
    """After a refresh, scrapes issue no SQL; a refresh with nothing
    changed issues only the change-marker statement and rebuilds nothing;
    a change shows after the next refresh."""
    seed(engine)
    metrics = KeydMetrics(engine, version="0.1.0")
    assert metrics.refresh() is True
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            body, _ = metrics.render()
        assert statements == []
        assert metrics.refresh() is False  # nothing changed
        queries = [s for s in statements if s.startswith("SELECT")]
        assert len(queries) == 1 and "count" in queries[0] and "max" in queries[0]  # the marker
    finally:
        event.remove(engine, "before_cursor_execute", count)
    with Session(engine) as s, s.begin():
        s.execute(
            update(Key)
            .where(Key.key_id == "k3")
            .values(status="missing", updated_at=NOW + timedelta(minutes=1))
        )
    k3 = frozenset({("key_id", "k3"), ("principal", "user-k3")})
    assert samples(metrics)[("keyd_key_status_code", k3)] == 0  # the snapshot, until...
    assert metrics.refresh() is True
    assert samples(metrics)[("keyd_key_status_code", k3)] == 4


def test_one_bad_row_does_not_break_metrics(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    seed(engine)
    with engine.begin() as conn:  # what a corrupt or foreign write could leave behind
        conn.execute(text("UPDATE keys SET expires_at = 'not a date' WHERE key_id = 'k2'"))
    metrics = KeydMetrics(engine, version="0.1.0")
    with caplog.at_level(logging.ERROR):
        got = samples(metrics)
    names = {name for name, _ in got}
    assert ("keyd_key_status_code", frozenset({("key_id", "k1"), ("principal", "user-k1")})) in got
    assert not any(dict(labels).get("key_id") == "k2" for _, labels in got)
    assert "keyd_leader" not in names  # unknown yet: not exported as 0
    assert any("unreadable keys row" in r.getMessage() for r in caplog.records)


def test_database_down_still_answers(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no schema at all
    try:
        got = samples(KeydMetrics(eng, version="0.1.0", leader=lambda: False))
        assert got[("keyd_db_up", frozenset())] == 0
        assert got[("keyd_leader", frozenset())] == 0
    finally:
        eng.dispose()


def test_own_registry_per_instance(engine: Engine) -> None:
    a, b = KeydMetrics(engine, version="1"), KeydMetrics(engine, version="2")
    a.observe_probe("ok", 1)
    assert samples(b)[("keyd_probe_duration_seconds_count", frozenset())] == 0


def test_per_key_series_kept_rendered_not_as_samples(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot holds the default per-key series as rendered lines, built
    a few keys at a time (here 2 per chunk, 5 keys): no per-key ``Sample``
    survives the refresh, each family is announced once, and the text and
    OpenMetrics bodies carry the same per-key samples (both parse strictly)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

    from keyd.report import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "SERIES_CHUNK", 2)
    with Session(engine) as s, s.begin():
        s.add_all([_key(f"k{i}", expires=NOW + timedelta(days=i)) for i in range(5)])
        s.add(_key('odd"\\\nkey'))  # a label value the encoders must escape
    metrics = KeydMetrics(engine, version="0.1.0")
    assert metrics.refresh() is True
    current = metrics._snapshot
    assert current is not None
    held = [s for family in current.families for s in family.samples if "key_id" in s.labels]
    assert held == []
    assert [r.header.name for r in current.per_key] == [
        "keyd_key_expiration_timestamp_seconds",
        "keyd_key_status_code",
    ]
    assert all(r.header.samples == [] for r in current.per_key)

    def per_key(families: object) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]]:
        out: dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
        for family in families:  # type: ignore[attr-defined]
            for s in family.samples:
                if "key_id" in s.labels:
                    out.setdefault(family.name, set()).add((s.name, tuple(sorted(s.labels.items())), s.value))
        return out

    text_body, _ = metrics.render()
    om_body, om_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text")
    assert text_body.count(b"# TYPE keyd_key_status_code gauge") == 1
    assert om_body.count(b"# EOF") == 1 and om_body.endswith(b"# EOF\n")
    from_text = per_key(text_string_to_metric_families(text_body.decode()))
    assert from_text == per_key(parse_om(om_body.decode()))
    assert len(from_text["keyd_key_status_code"]) == 6
    assert len(from_text["keyd_key_expiration_timestamp_seconds"]) == 5  # one expiry unknown
    assert ("keyd_key_status_code", (("key_id", 'odd"\\\nkey'), ("principal", 'user-odd"\\\nkey')), 0.0) in (
        from_text["keyd_key_status_code"]
    )
