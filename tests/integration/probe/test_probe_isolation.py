"""One key's surprise never ends the probe round: an unexpected exception
while reading or probing one key is recorded on that key (outcome
``unreadable``, its ``last_error`` names an internal error) and every other
key is probed. Real test issuer, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest

from tests.integration.probe.test_probe_issuer import World, outcome_of, world  # noqa: F401
from tests.support.keyrows import failing_for, key_row

pytestmark = pytest.mark.issuer


def test_a_bug_for_one_key_is_that_keys_error(world: World) -> None:  # noqa: F811
    good = world.add()
    bad = world.add()
    load_key = failing_for(world.services.load_key, bad.key_id)
    world.services = dataclasses.replace(world.services, load_key=load_key)
    report = world.run()
    assert report.counts() == {"ok": 1, "unreadable": 1}
    assert outcome_of(world, good.key_id) == ("ok", "active")
    row = key_row(world.engine, bad.key_id)
    assert row.status == "active"  # never blamed on the key
    assert "internal error while reading the key (ZeroDivisionError)" in (row.last_error or "")
