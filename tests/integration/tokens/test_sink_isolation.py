"""One sink's surprise never ends the write-back round: an unexpected
exception while refreshing one sink fails that sink with the reason
(retried with backoff, the old token stays) and every other sink is
written. Real OpenBao, the test issuer, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest

from tests.integration.tokens.test_writeback import World, world  # noqa: F401
from tests.support.keyrows import failing_for

pytestmark = [pytest.mark.openbao, pytest.mark.issuer]


def test_a_bug_for_one_sink_fails_that_sink_only(world: World) -> None:  # noqa: F811
    good = world.add_key(user_id="svc-good")
    bad = world.add_key(user_id="svc-bug")
    load_key = failing_for(world.services.load_key, bad.key_id)
    world.services = dataclasses.replace(world.services, load_key=load_key)
    report = world.run()
    by_principal = {r.principal: r for r in report.results}
    assert by_principal["svc-good"].outcome == "written"
    assert by_principal["svc-bug"].outcome == "failed"
    assert "internal error while refreshing (ZeroDivisionError)" in by_principal["svc-bug"].message
    assert world.secret(good.principal)["data"]["key_id"] == good.key_id
