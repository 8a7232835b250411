"""What a zitadel source's join tells, through a real `keyd check` cycle
(scan, alerts, probe) on SQLite and PostgreSQL: one alert per unheld key,
gone keys alerted as removed, the untracked notice resolved once ZITADEL
supplies the expiry, policy findings once each and as check warnings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from keyd.config import Config
from keyd.runtime.check import Verdict, run_check
from keyd.runtime.stages import cycle_stages
from keyd.runtime.wiring import build_services
from keyd.store.engine import session_scope
from keyd.store.models import Alert
from tests.support.keys import NEVER, make_key_file
from tests.support.zitadel_world import T0, World

pytestmark = pytest.mark.issuer

POLICY = """
[alerts]
never_expiring = true
max_lifetime = "400d"
max_keys_per_user = 2
"""


def check(world: World, config: Config) -> Verdict:
    services = build_services(config, world.clock, engine=world.engine)
    try:
        return run_check(services, cycle_stages(services))
    finally:
        services.close()


def alerts(world: World) -> list[tuple[str, str, str, str | None]]:
    with session_scope(world.engine) as session:
        rows = session.scalars(select(Alert).order_by(Alert.id))
        return [(a.kind, a.threshold, a.subject, None if a.resolved_at is None else "resolved") for a in rows]


def test_unheld_gone_and_untracked(zitadel_world: World) -> None:
    world = zitadel_world
    user = world.user()
    unheld = next(k.key_id for k in world.issuer.keys() if k.principal == user)
    old = world.held(user, expires_at=None, listed_expiry=T0 + timedelta(days=300))
    other = world.user()
    doomed = world.held(other)  # no later key of its user: nothing supersedes it
    config = world.config()
    verdict = check(world, config)
    assert verdict.counts["unheld"] == 3  # the users' console keys and keyd's own key
    mine = [a for a in alerts(world) if unheld in a[2]]
    assert mine == [
        (
            "unheld",
            "unheld",
            f"[keyd WARNING] key {unheld} of user {user} exists in ZITADEL but keyd finds it nowhere",
            None,
        )
    ]
    assert not [a for a in alerts(world) if a[0] == "untracked"]  # ZITADEL gave the expiry
    assert not [a for a in alerts(world) if old.key_id in a[2]]
    assert verdict.status == "ok", verdict.details()

    world.issuer.remove_key(doomed.key_id)
    verdict = check(world, config)
    assert verdict.counts["gone"] == 1 and verdict.status == "critical"
    assert any("was removed in ZITADEL" in p.message for p in verdict.problems)
    removed = [(a[0], a[2]) for a in alerts(world) if a[0] == "rejected"]
    assert removed == [
        (
            "rejected",
            f"[keyd CRITICAL] key {doomed.key_id} of user {other} was "
            "removed in ZITADEL; its key file remains",
        )
    ]
    before = alerts(world)
    check(world, config)
    assert alerts(world) == before  # each said once
    assert len([a for a in before if a[0] in ("unheld", "rejected")]) == 4


def test_untracked_notice_is_resolved_when_zitadel_lists_the_expiry(zitadel_world: World) -> None:
    world = zitadel_world
    user = world.user()
    old = make_key_file(world.keys, user_id=user, expires_at=None)
    world.issuer.add_key(user, old.key_id, old.private_key, None)  # not listed yet ...
    toml_without_zitadel = world.config().sources[:1]
    config = world.config()
    from dataclasses import replace

    files_only = replace(config, sources=toml_without_zitadel)
    check(world, files_only)
    assert [a[:2] for a in alerts(world) if old.key_id in a[2]] == [("untracked", "unknown")]
    world.issuer.add_key(user, old.key_id, old.private_key, T0 + timedelta(days=100))
    check(world, config)
    untracked = [a for a in alerts(world) if a[0] == "untracked"]
    assert untracked and untracked[0][3] == "resolved"


def test_policy_findings_alert_once_and_warn(zitadel_world: World) -> None:
    world = zitadel_world
    user = world.user()  # one console key that never expires (the test server's default)
    for k in list(world.issuer.keys()):
        if k.principal == user:
            world.issuer.add_key(user, k.key_id, k.public_pem, NEVER)
    world.clock.advance(1)
    world.held(user, expires_at=T0 + timedelta(days=700))  # lifetime 700 days > 400
    world.clock.advance(1)
    world.held(user, expires_at=T0 + timedelta(days=30))  # third live key of the user
    config = world.config(extra=POLICY)
    verdict = check(world, config)
    policy = sorted(a[1] for a in alerts(world) if a[0] == "policy")
    assert "never_expiring" in policy and "max_lifetime>400d" in policy
    assert "max_keys_per_user>2" in policy
    warnings = [p for p in verdict.problems if p.kind == "policy"]
    assert len(warnings) == len(policy) and verdict.status == "warning"
    check(world, config)
    assert sorted(a[1] for a in alerts(world) if a[0] == "policy") == policy  # once each


def test_unheld_notice_is_resolved_once_a_file_holds_the_key(zitadel_world: World) -> None:
    world = zitadel_world
    user = world.user()
    console = make_key_file(
        None, user_id=user, register_with=world.issuer, expires_at=T0 + timedelta(days=200)
    )
    config = world.config()
    check(world, config)
    assert [a[0] for a in alerts(world) if console.key_id in a[2]] == ["unheld"]
    (world.keys / f"{console.key_id}.json").write_text(console.text)  # deployed after all
    (world.keys / f"{console.key_id}.json").chmod(0o600)
    check(world, config)
    notice = [a for a in alerts(world) if console.key_id in a[2]]
    assert [(a[0], a[3]) for a in notice] == [("unheld", "resolved")]
    assert world.rows()[console.key_id].status == "active" and world.rows()[console.key_id].held


@pytest.mark.parametrize("state", ["registered", "published"])
def test_a_key_in_keyds_own_rotation_is_not_unheld(zitadel_world: World, state: str) -> None:
    """During a rotation ZITADEL lists a key that no location holds: the new
    key before it is published, the old one during its overlap. That is
    keyd's own doing, not a forgotten key: no unheld notice while the
    rotation is unfinished; once it failed, the notice comes."""
    from keyd.store.models import Rotation

    world = zitadel_world
    user = world.user()
    listed = next(k.key_id for k in world.issuer.keys() if k.principal == user)
    with session_scope(world.engine) as session:
        row = Rotation(
            old_key_id="1" + listed,
            new_key_id=listed,
            principal=user,
            state=state,
            reason="due",
            algorithm="RSA-2048",
            planned_at=world.clock.now(),
            updated_at=world.clock.now(),
        )
        if state == "published":
            row.old_key_id, row.new_key_id = listed, "1" + listed
        session.add(row)
    config = world.config()
    check(world, config)
    assert not [a for a in alerts(world) if listed in a[2] and a[0] == "unheld"]

    from keyd.store import rotations

    (current,) = rotations.all_rotations(world.engine)
    world.clock.advance(timedelta(hours=1))
    assert rotations.transition(world.engine, current, now=world.clock.now(), state="failed")
    check(world, config)
    assert [a[0] for a in alerts(world) if listed in a[2]] == ["unheld"]
