"""Two and three real ``keyd run`` on one PostgreSQL: every due key is
rotated exactly once — one rotation row, one AddKey and one RemoveKey per
key at the issuer — also when the leader is SIGKILLed mid-way and a
standby takes over (then the killed leader's half-done rotation is
recovered, and the issuer still ends with exactly one key per user)."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.sources.keyfile import read_keyfile
from keyd.store import rotations as store
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from tests.support.daemon import Notifications, start_keyd, stop, wait_until
from tests.support.db import postgres_database
from tests.support.issuer import IssuerServer
from tests.support.keys import make_key_file
from tests.support.rotation_world import rotation_config
from tests.support.zitadel_api import make_api_user

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.issuer]
KEYS = 4


@pytest.mark.parametrize(("daemons", "kill_leader"), [(2, False), (3, True)])
def test_every_due_key_rotated_exactly_once(
    issuer: IssuerServer, tmp_path: Path, daemons: int, kill_leader: bool
):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    manager = make_api_user(issuer, tmp_path)
    assert manager.path is not None
    made = [
        make_key_file(keys, register_with=issuer, expires_at=datetime.now(UTC) + timedelta(days=3 + i))
        for i in range(KEYS)
    ]
    for key in made:
        issuer.key_api.add_user(key.principal)
    with postgres_database() as db_url:
        upgrade(db_url)
        procs, notes = [], []
        for n in range(daemons):
            config = tmp_path / f"keyd{n}.toml"
            config.write_text(rotation_config(db_url, keys, issuer, manager.path, tmp_path / "hook.log"))
            notes.append(Notifications(tmp_path / f"n{n}.sock"))
            procs.append(start_keyd(config, notes[-1], tmp_path / f"keyd{n}.log", watchdog_usec=30_000_000))
        engine = make_engine(db_url)
        try:
            if kill_leader:
                wait_until(
                    lambda: any(r.state != "planned" for r in store.all_rotations(engine)),
                    timeout=60,
                    what="a rotation under way",
                )
                leader = next(
                    p
                    for n, p in enumerate(procs)
                    if "running: leader" in (tmp_path / f"keyd{n}.log").read_text()
                )
                leader.send_signal(signal.SIGKILL)
            wait_until(
                lambda: (
                    len(done := store.all_rotations(engine)) == KEYS
                    and all(r.state == "retired" for r in done)
                ),
                timeout=150,
                what="every key rotated",
            )
            rows = store.all_rotations(engine)
        finally:
            engine.dispose()
            for proc in procs:
                stop(proc)
            for note in notes:
                note.close()
    assert sorted(r.old_key_id for r in rows) == sorted(k.key_id for k in made)  # one row each
    by_user = {r.principal: r for r in rows}
    for key in made:
        row = by_user[key.principal]
        registered = {k.key_id for k in issuer.keys() if k.principal == key.principal}
        assert registered == {row.new_key_id}  # old retired, no duplicate, no orphan
        assert key.path is not None and read_keyfile(key.path).key_id == row.new_key_id
    adds = [p for m, p in issuer.key_api.calls if m == "POST" and re.match(r"/v2/users/\d+/keys$", p)]
    if not kill_leader:  # exactly one AddKey per key, by whichever daemon led
        assert sorted(adds) == sorted(f"/v2/users/{k.principal}/keys" for k in made)
        assert all(r.attempt == 1 for r in rows)
