"""The zitadel source against the real test server and a real directory,
on SQLite and PostgreSQL: unheld, gone, expiry filled for an old file,
a 403 and a garbage page mid-listing as source errors that change nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keyd.store.engine import session_scope
from keyd.store.inventory import inventory_snapshot
from keyd.store.models import Probe
from tests.support.zitadel_api import SEARCH_PATH, make_api_user
from tests.support.zitadel_world import T0, World

pytestmark = pytest.mark.issuer
ORG_B = "200000000000000002"


@pytest.fixture
def world(zitadel_world: World) -> World:
    return zitadel_world


def test_unheld_held_expiry_fill_and_gone(world: World) -> None:
    user = world.user()
    unheld = next(k.key_id for k in world.issuer.keys() if k.principal == user)
    held = world.held(user)
    zitadel_expiry = T0 + timedelta(days=200)
    old = world.held(world.user(), expires_at=None, listed_expiry=zitadel_expiry)
    doomed = world.held(user)
    report = world.scan()
    assert not report.failed, report.summary()
    rows = world.rows()
    assert rows[unheld].status == "unheld" and not rows[unheld].held
    assert [(loc.kind, loc.source) for loc in rows[unheld].locations] == [("zitadel", "zitadel")]
    assert rows[unheld].expires_at is not None and rows[unheld].expiry_source == "zitadel"
    assert rows[unheld].zitadel_created_at == T0 == rows[held.key_id].zitadel_created_at
    assert rows[held.key_id].status == "active" and rows[held.key_id].held
    assert {loc.kind for loc in rows[held.key_id].locations} == {None, "zitadel"}
    assert rows[held.key_id].expiry_source is None
    assert rows[old.key_id].expires_at == zitadel_expiry
    assert rows[old.key_id].expiry_source == "zitadel"
    assert rows[world.api_user.key_id].status == "unheld"  # keyd's own key: in ZITADEL only
    assert "unheld" in report.summary()

    world.issuer.remove_key(doomed.key_id)  # removed in the console; its file lingers
    report = world.scan()
    assert "1 gone" in report.summary()
    gone = world.rows()[doomed.key_id]
    assert gone.status == "rejected" and gone.diagnosis == "removed" and gone.held
    assert gone.last_error is not None and "no longer lists" in gone.last_error
    with session_scope(world.engine) as session:
        probe = session.scalars(select(Probe).where(Probe.diagnosis == "removed")).one()
        assert probe.attempts == 0 and probe.outcome == "rejected"
    assert world.issuer.attempts_by_key[doomed.key_id] == 0  # no probe was sent
    world.scan()  # stays rejected, no second probe row or event storm
    with session_scope(world.engine) as session:
        assert len(session.scalars(select(Probe)).all()) == 1

    (world.keys / f"{old.key_id}.json").unlink()  # the old file is gone, ZITADEL still lists it
    world.scan()
    assert world.rows()[old.key_id].status == "unheld"


def test_listing_by_users_sees_only_those_users(world: World) -> None:
    mine, other = world.user(), world.user()
    held = world.held(mine)
    report = world.scan(world.config(f'users = ["{mine}"]'))
    assert not report.failed
    rows = world.rows()
    assert {r.principal for r in rows.values() if r.status == "unheld"} == {mine}
    assert other not in {r.principal for r in rows.values()}
    world.issuer.remove_key(held.key_id)
    world.scan(world.config(f'users = ["{mine}"]'))
    assert world.rows()[held.key_id].diagnosis == "removed"


def test_a_user_without_keys_left_is_still_covered_in_its_organization(world: World) -> None:
    user = world.user()
    for k in world.issuer.keys():
        if k.principal == user:
            world.issuer.remove_key(k.key_id)  # only the held key stays
    held = world.held(user)
    world.scan()
    world.issuer.remove_key(held.key_id)  # its last key: the user lists nothing now
    world.scan()
    assert world.rows()[held.key_id].status == "rejected"


def snapshot(world: World) -> list[tuple[object, ...]]:
    return [
        (
            r.key_id,
            r.status,
            r.expires_at,
            r.expiry_source,
            r.last_error,
            tuple((loc.source, loc.status) for loc in r.locations),
        )
        for r in world.rows().values()
    ]


def test_403_is_a_source_error_that_changes_no_key(world: World, tmp_path: Path) -> None:
    user = world.user()
    doomed = world.held(user)
    world.scan()
    before = snapshot(world)
    world.issuer.remove_key(doomed.key_id)
    outsider = make_api_user(world.issuer, tmp_path / "outsider", role="ORG_OWNER_VIEWER", org=ORG_B)
    assert outsider.path is not None
    report = world.scan(world.config(credential=outsider.path))
    failed = [s for s in report.sources if not s.ok]
    assert [s.source for s in failed] == ["zitadel"]
    assert "lacks user.read on organization" in str(failed[0].error)
    assert snapshot(world) == before  # nothing gone, nothing unheld changed
    state = next(s for s in inventory_snapshot(world.engine).sources if s.name == "zitadel")
    assert state.consecutive_failures == 1 and "ORG_USER_MANAGER" in (state.last_error or "")


def test_garbage_page_mid_listing_changes_nothing(world: World) -> None:
    user = world.user()
    for _ in range(5):
        world.held(user)
    doomed = world.held(user)
    world.scan(page_size=2)
    before = snapshot(world)
    world.issuer.remove_key(doomed.key_id)
    world.issuer.fault_paths = {SEARCH_PATH}
    world.issuer.fail_next(1, "pass")
    world.issuer.fail_next(1, "garbage")
    report = world.scan(page_size=2)
    assert [s.source for s in report.failed] == ["zitadel"]
    assert "HTML" in str(report.failed[0].error)
    assert snapshot(world) == before
    report = world.scan(page_size=2)  # the next complete listing applies
    assert not report.failed and world.rows()[doomed.key_id].status == "rejected"


def test_zitadels_silent_filtering_is_not_taken_for_removal(world: World) -> None:
    """Real ZITADEL hides the keys a caller may not read instead of a 403:
    an organization that suddenly lists nothing while its key files are
    held is a source error, not every key gone."""
    world.issuer.key_api.permission_mode = "filter"
    user = world.user()
    held = world.held(user)
    world.scan()
    before = snapshot(world)
    world.issuer.key_api.revoke_grants(world.api_user.principal)  # user.read lost
    report = world.scan()
    assert [s.source for s in report.failed] == ["zitadel"]
    assert "lists no key at all for organization" in str(report.failed[0].error)
    assert "lost user.read" in str(report.failed[0].error)
    assert snapshot(world) == before and world.rows()[held.key_id].status == "active"


def test_daemon_reads_a_zitadel_source_on_its_own_interval(world: World) -> None:
    from keyd.clients.issuer import IssuerClient
    from keyd.inventory.scan import scan_all
    from keyd.runtime.wiring import zitadel_key_apis

    config = world.config()
    world.scan()
    calls = len(world.issuer.key_api.calls)
    with IssuerClient(world.issuer.url, clock=world.clock) as issuer:
        apis = zitadel_key_apis(config, issuer, world.clock)
        try:
            world.clock.advance(timedelta(minutes=59))
            names = [
                s.source
                for s in scan_all(config, world.engine, world.clock, key_apis=apis, due_only=True).sources
            ]
            assert names == ["files"] and len(world.issuer.key_api.calls) == calls
            world.clock.advance(timedelta(minutes=1))
            names = [
                s.source
                for s in scan_all(config, world.engine, world.clock, key_apis=apis, due_only=True).sources
            ]
            assert names == ["files", "zitadel"] and len(world.issuer.key_api.calls) > calls
        finally:
            for api in apis.values():
                api.close()


def test_no_access_token_or_key_material_in_logs_or_database(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    user = world.user()
    world.held(user)
    world.issuer.fault_paths = {SEARCH_PATH}
    world.issuer.fail_next(1, "503")
    world.scan()  # a failure, recorded with its message
    world.scan()
    assert world.issuer.issued_tokens  # keyd's API token was minted ...
    from sqlalchemy import text

    with world.engine.connect() as conn:
        stored = " ".join(
            str(row)
            for table in ("events", "source_states", "keys", "key_locations", "probes")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )  # noqa: S608
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("keyd"))
    assert "ZITADEL unavailable" in logged or "503" in logged
    for token in world.issuer.issued_tokens:  # ... and never written anywhere by keyd
        assert token not in logged and token not in stored
    assert "PRIVATE KEY" not in logged and "PRIVATE KEY" not in stored
