"""A real ``keyd run`` SIGKILLed at each step of a rotation, on SQLite and
PostgreSQL; after a restart (a plain ``keyd run``) the rotation completes
and the invariants hold, checked against the issuer's own key list:

* the old key is never removed before the new one is published and proven;
* no key keyd created stays registered without being published or removed;
* a location never holds a key that does not mint;
* the private key exists only in memory and at its destinations (never in
  the database).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import mint
from keyd.clients.issuer import IssuerClient
from keyd.clock import SystemClock
from keyd.errors import IssuerRejected
from keyd.sources.keyfile import read_keyfile
from keyd.store import rotations as store
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from tests.support.crashpoint import POINTS
from tests.support.daemon import FAST_TICKS, Notifications, start_keyd, stop, wait_until
from tests.support.issuer import IssuerServer
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file
from tests.support.zitadel_api import make_api_user

pytestmark = [pytest.mark.issuer, pytest.mark.slow]
CRASH = [sys.executable, "-m", "tests.support.crashpoint"]


def rotation_config(
    db_url: str, keys: Path, issuer: IssuerServer, credential: Path, hook_marker: Path, *, extra: str = ""
) -> str:
    hook = json.dumps(
        [
            sys.executable,
            "-c",
            f"import os; open({str(hook_marker)!r}, 'a').write("
            "os.environ['KEYD_KEY_ID'] + ' ' + os.environ['KEYD_LOCATION'] + '\\n')",
        ]
    )
    return f"""
[database]
url = "{db_url}"
[[sources]]
type = "directory"
name = "dir"
path = "{keys}"
after_publish = {hook}
[issuer]
url = "{issuer.url}"
rate_limit = 1000
[rotation]
credential = "{credential}"
overlap = "0s"
recheck = "1s"
{extra}
[log]
level = "INFO"
{FAST_TICKS}"""


class World:
    """Issuer + key files + config for one rotation, and its invariants."""

    def __init__(self, db_url: str, issuer: IssuerServer, tmp_path: Path) -> None:
        self.db_url, self.issuer, self.tmp = db_url, issuer, tmp_path
        upgrade(db_url)
        self.keys = tmp_path / "keys"
        self.keys.mkdir(mode=0o700)
        manager = make_api_user(issuer, tmp_path)
        assert manager.path is not None
        self.old = make_key_file(
            self.keys,
            register_with=issuer,
            filename="a.json",
            expires_at=datetime.now(UTC) + timedelta(days=5),
        )
        assert self.old.path is not None
        (self.keys / "b.json").write_text(self.old.path.read_text())
        (self.keys / "b.json").chmod(0o600)
        issuer.key_api.add_user(self.old.principal)
        self.hook_marker = tmp_path / "hook.log"
        self.config = tmp_path / "keyd.toml"
        self.config.write_text(rotation_config(db_url, self.keys, issuer, manager.path, self.hook_marker))
        self.runs = 0

    def run(self, command: list[str] | None = None) -> tuple[object, Notifications]:
        self.runs += 1
        notes = Notifications(self.tmp / f"notify{self.runs}.sock")
        proc = start_keyd(
            self.config, notes, self.tmp / f"keyd{self.runs}.log", watchdog_usec=30_000_000, command=command
        )
        return proc, notes

    def log(self) -> str:
        return "\n".join((self.tmp / f"keyd{n}.log").read_text() for n in range(1, self.runs + 1))

    def user_keys(self) -> set[str]:
        return {k.key_id for k in self.issuer.keys() if k.principal == self.old.principal}

    def files(self) -> dict[str, str]:
        return {p.name: read_keyfile(p).key_id for p in sorted(self.keys.glob("*.json"))}

    def mints(self, path: Path) -> bool:
        clock = SystemClock()
        with IssuerClient(self.issuer.url, clock=clock) as client:
            try:
                mint(read_keyfile(path), client, AssertionSigner(clock), ("openid",))
            except IssuerRejected:
                return False
        return True

    def check_invariants(self) -> None:
        """What must hold at any instant, crashed or not."""
        registered, files = self.user_keys(), self.files()
        for name in files:  # a location never holds a key that does not mint
            assert self.mints(self.keys / name), f"{name} holds a key that does not mint"
        published = set(files.values())
        if self.old.key_id not in registered:  # removed only after publish + proof
            assert self.old.key_id not in published
        engine = make_engine(self.db_url)
        try:
            row = store.get(engine, self.old.key_id)
            dump = dump_all(engine)
        finally:
            engine.dispose()
        keyd_made = registered - {self.old.key_id} - published
        # a key keyd made that is in no location is only allowed while keyd
        # can still find it: recorded as the rotation's new key, or (killed
        # right after AddKey) marked by register_started_at for the cleanup
        for key_id in keyd_made:
            assert row is not None and (row.new_key_id == key_id or row.register_started_at is not None), (
                key_id
            )
        for name in files:  # no private key in the database
            body = json.loads((self.keys / name).read_text())["key"].splitlines()[1]
            assert body not in dump


@pytest.fixture
def world(db_url: str, issuer: IssuerServer, tmp_path: Path) -> Iterator[World]:
    yield World(db_url, issuer, tmp_path)


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_step_then_restart_completes(world: World, point: str):
    proc, notes = world.run([*CRASH, point])
    try:
        assert proc.wait(timeout=90) == -signal.SIGKILL, world.log()[-3000:]  # type: ignore[attr-defined]
    finally:
        stop(proc)  # type: ignore[arg-type]
        notes.close()
    world.check_invariants()
    assert world.old.key_id in world.user_keys()  # never removed before retirement ran

    proc, notes = world.run()
    engine = make_engine(world.db_url)
    try:
        wait_until(
            lambda: (
                (r := store.get(engine, world.old.key_id)) is not None and r.state in ("retired", "failed")
            ),
            timeout=90,
            what=f"rotation retired after a kill {point}",
        )
        row = store.get(engine, world.old.key_id)
    finally:
        engine.dispose()
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        proc.wait(timeout=30)  # type: ignore[attr-defined]
        notes.close()
    assert row is not None and row.state == "retired", (row, world.log()[-3000:])
    world.check_invariants()
    # exactly the new key is left: the old one retired, no orphan of the crash
    assert world.user_keys() == {row.new_key_id}
    assert set(world.files().values()) == {row.new_key_id}
    hooks = world.hook_marker.read_text().splitlines()
    assert {line.split()[0] for line in hooks} == {row.new_key_id}
    assert len({line.split()[1] for line in hooks}) == 2  # both locations told, at least once
