"""A real ``keyd run`` SIGKILLed at each step of a rotation, on SQLite and
PostgreSQL; after a restart (a plain ``keyd run``) the rotation completes
and the invariants hold, checked against the issuer's own key list:

* the old key is never removed before the new one is published and proven;
* no key keyd created stays registered without being published or removed;
* a location never holds a key that does not mint;
* the private key exists only in memory and at its destinations (never in
  the database or keyd's log).

The old key lives in two key files, or in a key file and a Vault (OpenBao)
KV v2 secret, which must also keep its other fields and custom metadata
and show one check-and-set version by keyd, never a clobber
(tests/support/rotation_world.py).
"""

from __future__ import annotations

import pytest

from tests.support.crashpoint import POINTS
from tests.support.issuer import IssuerServer
from tests.support.openbao import OpenBao
from tests.support.rotation_world import VaultLocation, World

pytestmark = [pytest.mark.issuer, pytest.mark.slow]


def crash_then_restart(world: World, point: str) -> None:
    world.crash(point)
    world.check_invariants()
    assert world.old.key_id in world.user_keys()  # never removed before retirement ran
    held = world.held()
    if point == "after_first_location":  # the first location in publishing order, only it
        assert held[0] != world.old.key_id and held[1:] == [world.old.key_id] * (len(held) - 1), held
        crashed = world.row()
        targets = [t.ref for t in crashed.target_stamps()] if crashed else []
        assert targets == [loc.ref for loc in world.locations], targets
    elif point in ("after_add_key", "after_proof"):
        assert held == [world.old.key_id] * len(held)

    row = world.restart(point)
    world.check_invariants()
    # exactly the new key is left: the old one retired, no orphan of the crash
    assert world.user_keys() == {row.new_key_id}
    assert world.held() == [row.new_key_id] * len(world.locations)
    hooks = world.hooks()
    assert {key_id for key_id, _ in hooks} == {row.new_key_id}
    assert {ref for _, ref in hooks} == {loc.ref for loc in world.locations}  # every location told
    for loc in world.locations:
        if isinstance(loc, VaultLocation):  # one version by keyd, on the one it scanned
            assert loc.versions() == [loc.scanned, loc.scanned + 1]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_step_then_restart_completes(db_url: str, issuer: IssuerServer, tmp_path, point: str):
    crash_then_restart(World(db_url, issuer, tmp_path), point)


# Each point once (the two orders of the first write on both databases):
# the file-only test above covers every point on both already.
VAULT_CASES = [
    pytest.param(
        point,
        first,
        backend,
        id=f"{backend}-{point}-vault-{'first' if first else 'second'}",
        marks=[pytest.mark.postgres] if backend == "postgres" else [],
    )
    for point, first, backend in [
        ("after_add_key", True, "postgres"),
        ("after_proof", False, "sqlite"),
        ("after_first_location", True, "sqlite"),
        ("after_first_location", True, "postgres"),
        ("after_first_location", False, "sqlite"),
        ("after_first_location", False, "postgres"),
        ("after_hook", True, "sqlite"),
        ("before_remove", False, "postgres"),
    ]
]


@pytest.mark.openbao
@pytest.mark.parametrize(("point", "vault_first", "db_url"), VAULT_CASES, indirect=["db_url"])
def test_sigkill_with_a_vault_location_then_restart_completes(
    db_url: str,
    issuer: IssuerServer,
    openbao: OpenBao,
    kv_prefix: str,
    tmp_path,
    point: str,
    vault_first: bool,
):
    world = World(db_url, issuer, tmp_path, vault=openbao, kv_prefix=kv_prefix, vault_first=vault_first)
    crash_then_restart(world, point)
