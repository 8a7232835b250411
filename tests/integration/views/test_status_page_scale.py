"""The status page and ``keyd status`` stay bounded as the inventory grows
(100,000 keys on one daemon), on SQLite and PostgreSQL.

At 100,000 keys a page view read every key (~6 s) and rendered a row and a
timeline mark per key. Now: the statements one view issues do not depend
on the number of keys, the page lists every key that needs attention and
at most ``PAGE_SIZE`` others, the rest is reachable page by page (and by
principal or key id prefix), and the verdict is the one ``keyd check``
computes from every key."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from keyd.cli import cli
from keyd.cli.inventory import LIST_ALL_UP_TO
from keyd.clock import FakeClock
from keyd.config import Config, TokensConfig
from keyd.report import pages
from keyd.runtime.check import judge
from keyd.runtime.views import StatusViews
from keyd.store import snapshot
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from keyd.store.models import Key, KeyLocation, Rotation, TokenSink
from keyd.store.rotations import unfinished
from tests.support.sql import statements

AT = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
FAR = AT + timedelta(days=300)


@dataclass
class _Services:
    engine: Engine
    config: Config
    clock: FakeClock


def _views(engine: Engine, config: Config | None = None) -> StatusViews:
    services = _Services(engine, config or Config(), FakeClock(AT))
    return StatusViews(lambda: services)  # type: ignore[arg-type,return-value]


def add_keys(engine: Engine, start: int, n: int, *, expires_at: datetime | None = FAR, **extra: Any) -> None:
    """``n`` keys ``k<number>`` (principal ``svc-<number // 10>``) with one
    present location each, in two bulk statements."""
    keys = [
        {
            "key_id": f"k{i:06d}",
            "kind": "serviceaccount",
            "principal": f"svc-{i // 10:05d}",
            "algorithm": "RS256",
            "fingerprint": "f" * 64,
            "expires_at": expires_at,
            "content_hash": "0",
            "status": "active",
            "first_seen": AT,
            "last_seen": AT,
            "updated_at": AT,
            **extra,
        }
        for i in range(start, start + n)
    ]
    with Session(engine) as session, session.begin():
        session.execute(insert(Key), keys)
        found = session.execute(select(Key.key_id, Key.id).where(Key.key_id.in_([k["key_id"] for k in keys])))
        pks = {key_id: pk for key_id, pk in found}
        session.execute(
            insert(KeyLocation),
            [
                {
                    "source": "dir",
                    "ref": f"/k/{k['key_id']}.json",
                    "key_pk": pks[k["key_id"]],
                    "status": "present",
                    "first_seen": AT,
                    "last_seen": AT,
                }
                for k in keys
            ],
        )


def key_pk(engine: Engine, key_id: str) -> int:
    with Session(engine) as session:
        return int(session.scalars(select(Key.id).where(Key.key_id == key_id)).one())


def failed_rotation(old_key_id: str) -> Rotation:
    """A rotation of ``old_key_id`` (principal svc-00000) that failed its proof."""
    return Rotation(
        old_key_id=old_key_id,
        principal="svc-00000",
        state="failed",
        failed_step="proof",
        last_error="the new key did not mint",
        reason="due",
        algorithm="RSA-2048",
        planned_at=AT,
        updated_at=AT,
    )


def rows_of(html: str, table_id: str) -> list[str]:
    part = html.split(f'<table id="{table_id}"', 1)
    if len(part) < 2:
        return []
    return re.findall(r'<tr data-key-id="([^"]+)"', part[1].split("</table>", 1)[0])


def marks(html: str) -> int:
    return html.count('<circle class="mark')


def next_query(html: str) -> dict[str, str] | None:
    found = re.search(r'<a rel="next" href="/\?([^"]+)"', html)
    if found is None:
        return None
    return dict(parse_qsl(unquote(found.group(1).replace("&amp;", "&"))))


def test_a_page_view_issues_the_same_statements_at_any_size(migrated_engine: Engine) -> None:
    views = _views(migrated_engine)
    add_keys(migrated_engine, 0, 20)
    views.index()
    with statements(migrated_engine) as small:
        html_small = views.index()
    add_keys(migrated_engine, 20, 580)  # 30x the keys, beyond a page
    with statements(migrated_engine) as big:
        html_big = views.index()
    assert len(big) == len(small)
    assert len(rows_of(html_small, "keys")) == 20
    assert len(rows_of(html_big, "keys")) == pages.PAGE_SIZE
    assert rows_of(html_big, "attention") == []
    assert marks(html_big) == pages.PAGE_SIZE  # the keys on the page, not one per key
    assert 'data-window="later"' in html_big and ">600<" in html_big.split('id="overview"')[1]


def test_every_key_that_needs_attention_is_listed_and_no_healthy_one(migrated_engine: Engine) -> None:
    add_keys(migrated_engine, 0, 300)
    add_keys(migrated_engine, 900_000, 1, expires_at=AT - timedelta(days=1))  # expired by the clock
    add_keys(migrated_engine, 900_001, 1, expires_at=AT + timedelta(days=3))  # expiring
    add_keys(migrated_engine, 900_002, 1, status="rejected", last_error="revoked")
    add_keys(migrated_engine, 900_003, 1, status="invalid", last_error="bad pem")
    add_keys(migrated_engine, 900_004, 1, status="unheld")
    add_keys(migrated_engine, 900_005, 1, last_error="issuer unavailable")  # failing probe
    add_keys(migrated_engine, 900_008, 1, status="missing")  # gone after a rotation: not attention
    sink_pk = key_pk(migrated_engine, "k000007")
    with Session(migrated_engine) as session, session.begin():
        session.add(
            TokenSink(
                key_pk=sink_pk,
                mount="secret",
                path="t/7",
                state="failed",
                updated_at=AT,
            )
        )
        session.add(
            Rotation(
                old_key_id="k000011",
                principal="svc-00001",
                state="registered",
                reason="due",
                algorithm="RSA-2048",
                new_key_id="k900006",
                planned_at=AT,
                updated_at=AT,
            )
        )
    add_keys(migrated_engine, 900_006, 1)  # the rotation's new key
    html = _views(migrated_engine).index()
    attention = rows_of(html, "attention")
    wanted = {f"k{900_000 + i:06d}" for i in range(7)} | {"k000007", "k000011"}
    assert set(attention) == wanted and len(attention) == len(wanted)
    assert attention[:3] == ["k900000", "k900002", "k900003"]  # expired, rejected, invalid first


def test_the_verdict_is_keyd_checks_from_every_key(migrated_engine: Engine) -> None:
    add_keys(migrated_engine, 0, 250)
    add_keys(migrated_engine, 900_000, 2, expires_at=AT + timedelta(days=5))
    add_keys(migrated_engine, 900_002, 3, status="missing")
    add_keys(migrated_engine, 900_005, 1, status="unheld")
    add_keys(migrated_engine, 900_006, 1, status="rejected", last_error="revoked")
    full = judge(
        Config(),
        AT,
        snapshot.keys(migrated_engine),
        snapshot.location_problems(migrated_engine),
        snapshot.sources(migrated_engine),
    )
    html = _views(migrated_engine).index()
    summary = re.search(r'id="summary">([^<]*)<', html)
    assert summary is not None and summary.group(1) == full.summary()
    assert "keys=253 " in full.summary() and "missing=3 " in full.summary() and "unheld=1 " in full.summary()


def test_the_verdict_counts_rotations_and_token_sinks_as_keyd_check_does(migrated_engine: Engine) -> None:
    """The page's verdict once left out rotations and token write-back:
    a failed rotation or a token expired in its secret showed "ok" on the
    page while ``keyd check`` said critical."""
    config = Config(tokens=TokensConfig())
    add_keys(migrated_engine, 0, 250)
    with Session(migrated_engine) as session, session.begin():
        pks = {key_id: pk for key_id, pk in session.execute(select(Key.key_id, Key.id))}
        session.add_all(
            [
                TokenSink(
                    key_pk=pks["k000001"],
                    mount="secret",
                    path="t/1",
                    state="ok",
                    updated_at=AT,
                    expires_at=AT - timedelta(hours=1),  # the daemon was down: expired in place
                    next_refresh_at=AT - timedelta(hours=5),
                ),
                TokenSink(key_pk=pks["k000002"], mount="secret", path="t/2", state="conflict", updated_at=AT),
                TokenSink(
                    key_pk=pks["k000003"],
                    mount="secret",
                    path="t/3",
                    state="ok",
                    updated_at=AT,
                    expires_at=AT + timedelta(hours=8),  # healthy: no problem
                    next_refresh_at=AT + timedelta(hours=4),
                ),
                failed_rotation("k000004"),
            ]
        )
    full = judge(
        config,
        AT,
        snapshot.keys(migrated_engine),
        snapshot.location_problems(migrated_engine),
        snapshot.sources(migrated_engine),
        rotations=unfinished(migrated_engine),
        tokens=snapshot.tokens(migrated_engine),
    )
    assert full.status == "critical"
    assert {p.kind for p in full.problems} == {"rotation", "token"} and len(full.problems) == 3
    html = _views(migrated_engine, config).index()
    summary = re.search(r'id="summary">([^<]*)<', html)
    assert summary is not None and summary.group(1) == full.summary()
    assert 'class="summary verdict-critical"' in html


def test_pages_reach_every_key_once_and_filters_narrow_them(migrated_engine: Engine) -> None:
    add_keys(migrated_engine, 0, 250)
    views = _views(migrated_engine)
    seen: list[str] = []
    query: dict[str, str] | None = {}
    while query is not None:
        html = views.index(query)
        page = rows_of(html, "keys")
        assert 0 < len(page) <= pages.PAGE_SIZE
        seen += page
        query = next_query(html)
    assert seen == [f"k{i:06d}" for i in range(250)]
    assert rows_of(views.index({"principal": "svc-00003"}), "keys") == [f"k{i:06d}" for i in range(30, 40)]
    assert rows_of(views.index({"key": "k00012"}), "keys") == [f"k{i:06d}" for i in range(120, 130)]
    assert rows_of(views.index({"key": "%_"}), "keys") == []  # a prefix, not a LIKE pattern


def test_keyd_status_lists_attention_and_counts_beyond_the_limit(
    migrated_engine: Engine, db_url: str, tmp_path: Path
) -> None:
    add_keys(migrated_engine, 0, LIST_ALL_UP_TO + 50)
    add_keys(migrated_engine, 900_000, 1, expires_at=AT + timedelta(days=2))
    with Session(migrated_engine) as session, session.begin():
        session.add(failed_rotation("k000003"))
    config = tmp_path / "keyd.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    runner = CliRunner()
    at = ["--config", str(config), "status", "--at", "2026-12-02T03:00:00Z"]
    bounded = runner.invoke(cli, at)
    assert bounded.exit_code == 0, bounded.output
    listed = re.findall(r"^(k\d{6}) ", bounded.output, re.M)
    assert listed == ["k000003", "k900000"]  # the rotating one, the expiring one
    assert f"{LIST_ALL_UP_TO + 51:,} keys: {LIST_ALL_UP_TO + 51:,} active" in bounded.output
    assert '"keyd status --all" lists every key' in bounded.output
    assert "k000003 (svc-00000): FAILED at proof" in bounded.output
    full = runner.invoke(cli, [*at, "--all"])
    assert len(re.findall(r"^k\d{6} ", full.output, re.M)) == LIST_ALL_UP_TO + 51
    doc = json.loads(runner.invoke(cli, [*at, "--json"]).output)
    assert len(doc["keys"]) == LIST_ALL_UP_TO + 51
    assert doc["rotations"] == [
        {
            "old_key_id": "k000003",
            "principal": "svc-00000",
            "state": "failed",
            "failed_step": "proof",
            "last_error": "the new key did not mint",
            "failures": 0,
            "planned_at": "2026-12-02T03:00:00Z",
            "updated_at": "2026-12-02T03:00:00Z",
            "retire_after": None,
        }
    ]
    assert doc["unrotated_application_keys"] == []


@pytest.mark.parametrize("bad", ["after=%ff", "after=a&after=b", "principal=" + "x" * 2000])
def test_a_bad_query_string_is_refused_not_a_crash(bad: str) -> None:
    from keyd.report.http import page_query

    assert page_query(bad) is None
    assert page_query("after=k1&utm=x") == {"after": "k1"}


def test_the_attention_window_and_problem_reads_walk_no_table(tmp_path: Path) -> None:
    """SQLite's plan for each statement of ``attention``, ``expiry_windows``
    and ``location_problems``: index lookups only (a partial index of the
    few failing keys, invalid or warned locations may be walked whole),
    never a scan of ``keys`` or ``key_locations``. SQLite only: its plan is
    fixed by the schema, PostgreSQL's by statistics."""
    from keyd.store import page as page_store
    from keyd.store import views as store_views

    url = f"sqlite:///{tmp_path / 'plan.db'}"
    upgrade(url)
    migrated_engine = make_engine(url)
    request_cleanup = migrated_engine.dispose

    add_keys(migrated_engine, 0, 50)
    with statements(migrated_engine) as sent:
        page_store.attention(migrated_engine, AT, timedelta(days=30))
        page_store.expiry_windows(migrated_engine, AT, Config().alerts.thresholds)
        page_store.location_problems(migrated_engine, 10)
        store_views.recent_events(migrated_engine)
    union = next(s for s in sent if "UNION" in s)
    counts = [s for s in sent if s.lstrip().startswith("SELECT count(*)")]
    assert len(counts) == 2 + len(Config().alerts.thresholds) + 2 + 2
    problems = [s for s in sent if "FROM key_locations LEFT OUTER JOIN" in s]
    assert len(problems) == 2
    events = next(s for s in sent if "FROM events" in s)
    with migrated_engine.connect() as conn:
        # the newest events off the (at, id) index, not a sort of every event
        # (a cold scan writes one per key, all at one instant)
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + events, (100, 0))]
        assert plan == ["SCAN events USING INDEX ix_events_at_id"], plan
        for stmt in [union, *counts, *problems]:
            params = tuple(_params_for(stmt))
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)]
            walks = [p for p in plan if p.startswith("SCAN") and not any(ix in p for ix in PARTIAL)]
            assert walks == [], (stmt, plan)
            if "expires_at" in stmt:  # a range on (status, expires_at), not every key of a status
                assert any("ix_keys_status_expires_at" in p for p in plan), (stmt, plan)
    request_cleanup()


PARTIAL = ("ix_keys_failing", "ix_key_locations_invalid", "ix_key_locations_warned")


def _params_for(stmt: str) -> list[object]:
    """Placeholder values of the right kinds: the plan does not depend on them."""
    return ["x" if i % 2 else "2026-12-02 03:00:00.000000" for i in range(stmt.count("?"))]
