"""One rotation by a real ``keyd run``, SIGKILLed at a crash point and
restarted, with the invariants that must hold at any instant, for
tests/integration/rotation/test_rotation_sigkill.py.

``World`` is the issuer, keyd's config and the old key's *locations*, a
list of readers in publishing order: two key files of one directory
source, or a key file and an OpenBao KV v2 secret (written first or
second). Every location is checked the same way (it holds a key that
mints; no private key in the database or the logs), and each kind adds
its own: a Vault secret keeps its other fields, its custom metadata and
``cas_required``, and its version history shows at most one version
written by keyd, on top of the one it scanned: nothing clobbered.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import mint
from keyd.clients.issuer import IssuerClient
from keyd.clock import SystemClock
from keyd.errors import IssuerRejected
from keyd.sources.keyfile import parse_keyfile
from keyd.store import rotations as store
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from keyd.store.rotations import RotationRow
from tests.support.daemon import FAST_TICKS, Notifications, start_keyd, stop, wait_until
from tests.support.issuer import IssuerServer
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file
from tests.support.openbao import OpenBao
from tests.support.zitadel_api import make_api_user

CRASH = [sys.executable, "-m", "tests.support.crashpoint"]
OTHER_FIELDS = {"owner": "team-a"}  # beside the key file in the Vault secret: kept
CUSTOM_METADATA = {"team": "a"}  # on the Vault secret: kept


class Location(Protocol):
    """Where the old key lives and the new one is published."""

    ref: str  # as keyd names it (KEYD_LOCATION): a path or Vault mount/path

    def text(self) -> str:
        """The key file (ZITADEL's JSON) the location holds now."""

    def check(self, old_key_id: str) -> None:
        """This kind of location's own invariants, at any instant."""


class FileLocation:
    def __init__(self, path: Path) -> None:
        self.path, self.ref = path, str(path)

    def text(self) -> str:
        return self.path.read_text()

    def check(self, old_key_id: str) -> None:
        assert self.path.stat().st_mode & 0o777 == 0o600, self.ref


class VaultLocation:
    """A KV v2 secret ``{keyfile, owner}`` with custom metadata and
    ``cas_required`` (OpenBao refuses any write without check-and-set)."""

    def __init__(self, bao: OpenBao, path: str, keyfile: str) -> None:
        self.bao, self.path, self.ref = bao, path, f"secret/{path}"
        self.scanned = bao.kv_put(path, {"keyfile": keyfile, **OTHER_FIELDS})
        bao.client.secrets.kv.v2.update_metadata(
            path=path, mount_point="secret", cas_required=True, custom_metadata=CUSTOM_METADATA
        )

    def version(self, number: int | None = None) -> dict[str, Any]:
        answer = self.bao.client.secrets.kv.v2.read_secret_version(
            path=self.path, version=number, mount_point="secret", raise_on_deleted_version=True
        )
        return dict(answer["data"]["data"])

    def text(self) -> str:
        return str(self.version()["keyfile"])

    def versions(self) -> list[int]:
        return sorted(int(n) for n in self.bao.kv_metadata(self.path)["versions"])

    def check(self, old_key_id: str) -> None:
        meta = self.bao.kv_metadata(self.path)
        assert meta["custom_metadata"] == CUSTOM_METADATA and meta["cas_required"] is True, meta
        assert all(not v["destroyed"] and not v["deletion_time"] for v in meta["versions"].values()), meta
        # keyd writes once, on top of the version it scanned: never twice
        # (a lost write redone), never a key of an attempt it gave up on
        assert self.versions()[-1] in (self.scanned, self.scanned + 1), meta
        for number in range(self.scanned, int(meta["current_version"]) + 1):
            data = self.version(number)
            assert {k: data[k] for k in data if k != "keyfile"} == OTHER_FIELDS, number
            assert isinstance(data["keyfile"], str), number  # the layout kept: JSON as text
            held = parse_keyfile(data["keyfile"], source=self.ref).key_id
            assert (held == old_key_id) == (number == self.scanned), (number, held)


def rotation_config(
    db_url: str, keys: Path, issuer: IssuerServer, credential: Path, hook_marker: Path, *, extra: str = ""
) -> str:
    """A keyd.toml for one directory source ``dir`` with an ``after_publish``
    hook that appends "KEY_ID LOCATION" to ``hook_marker`` (the CLI and HA
    rotation tests; ``extra`` goes into ``[rotation]``)."""
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


def _config(
    db_url: str, issuer: IssuerServer, credential: Path, sources: Sequence[str], vault: str = ""
) -> str:
    return f"""
[database]
url = "{db_url}"
{"".join(sources)}
[issuer]
url = "{issuer.url}"
rate_limit = 1000
[rotation]
credential = "{credential}"
overlap = "0s"
recheck = "1s"
{vault}
[log]
level = "DEBUG"  # the most keyd ever logs: still no private key
{FAST_TICKS}"""


class World:
    """Issuer + locations + config for one rotation, and its invariants.

    ``vault``: the old key lives in ``keys/a.json`` and in the KV v2
    secret ``{kv_prefix}/keys/{user}``, the Vault source first in
    ``[[sources]]`` when ``vault_first``; without it in ``a.json`` and
    ``b.json``. ``locations`` are in the order keyd publishes them: a
    key's locations sorted by source name, then path (``KeyRecord``), so
    the Vault source is named ``bao`` to come first, ``vault`` to come
    second after the directory source ``dir``."""

    def __init__(
        self,
        db_url: str,
        issuer: IssuerServer,
        tmp_path: Path,
        *,
        vault: OpenBao | None = None,
        kv_prefix: str = "",
        vault_first: bool = False,
    ) -> None:
        self.db_url, self.issuer, self.tmp = db_url, issuer, tmp_path
        upgrade(db_url)
        keys = tmp_path / "keys"
        keys.mkdir(mode=0o700)
        manager = make_api_user(issuer, tmp_path)
        assert manager.path is not None
        self.old = make_key_file(
            keys, register_with=issuer, filename="a.json", expires_at=datetime.now(UTC) + timedelta(days=5)
        )
        assert self.old.path is not None
        issuer.key_api.add_user(self.old.principal)
        self.hook_marker = tmp_path / "hook.log"
        hook = json.dumps(
            [
                sys.executable,
                "-c",
                f"import os; open({str(self.hook_marker)!r}, 'a').write("
                "os.environ['KEYD_KEY_ID'] + ' ' + os.environ['KEYD_LOCATION'] + '\\n')",
            ]
        )
        directory = (
            f'[[sources]]\ntype = "directory"\nname = "dir"\npath = "{keys}"\nafter_publish = {hook}\n'
        )
        files: list[Location] = [FileLocation(self.old.path)]
        if vault is None:
            (keys / "b.json").write_text(self.old.path.read_text())
            (keys / "b.json").chmod(0o600)
            self.locations = [*files, FileLocation(keys / "b.json")]
            sources, vault_section = [directory], ""
        else:
            secret = VaultLocation(vault, f"{kv_prefix}/keys/{self.old.principal}", self.old.path.read_text())
            name = "bao" if vault_first else "vault"  # keyd publishes by source name: bao < dir < vault
            bao = (
                f'[[sources]]\ntype = "vault"\nname = "{name}"\nmount = "secret"\n'
                f'prefix = "{kv_prefix}/keys"\nafter_publish = {hook}\n'
            )
            self.locations = [secret, *files] if vault_first else [*files, secret]
            sources = [directory, bao]  # the order of [[sources]] does not decide
            token = tmp_path / "vault-token"
            token.write_text(vault.root_token)
            token.chmod(0o600)
            vault_section = f'[vault]\naddr = "{vault.addr}"\ntoken_file = "{token}"\n'
        self.config = tmp_path / "keyd.toml"
        self.config.write_text(_config(db_url, issuer, manager.path, sources, vault_section))
        self.runs = 0

    # -- keyd -------------------------------------------------------------------

    def run(self, command: list[str] | None = None) -> tuple[Any, Notifications]:
        self.runs += 1
        notes = Notifications(self.tmp / f"notify{self.runs}.sock")
        proc = start_keyd(
            self.config, notes, self.tmp / f"keyd{self.runs}.log", watchdog_usec=30_000_000, command=command
        )
        return proc, notes

    def crash(self, point: str) -> None:
        """``keyd run`` until it SIGKILLs itself at ``point``."""
        proc, notes = self.run([*CRASH, point])
        try:
            assert proc.wait(timeout=90) == -signal.SIGKILL, self.log()[-3000:]
        finally:
            stop(proc)
            notes.close()

    def restart(self, point: str) -> RotationRow:
        """A plain ``keyd run`` until the rotation ended; its row."""
        proc, notes = self.run()
        engine = make_engine(self.db_url)
        try:
            wait_until(
                lambda: (r := self.row(engine)) is not None and r.state in ("retired", "failed"),
                timeout=90,
                what=f"rotation retired after a kill {point}",
            )
            row = self.row(engine)
        finally:
            engine.dispose()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            notes.close()
        assert row is not None and row.state == "retired", (row, self.log()[-3000:])
        return row

    def row(self, engine: Any = None) -> RotationRow | None:
        if engine is not None:
            return store.get(engine, self.old.key_id)
        engine = make_engine(self.db_url)
        try:
            return store.get(engine, self.old.key_id)
        finally:
            engine.dispose()

    def log(self) -> str:
        return "\n".join((self.tmp / f"keyd{n}.log").read_text() for n in range(1, self.runs + 1))

    # -- what the world holds -------------------------------------------------------

    def user_keys(self) -> set[str]:
        return {k.key_id for k in self.issuer.keys() if k.principal == self.old.principal}

    def held(self) -> list[str]:
        """The key id at each location, in publishing order."""
        return [parse_keyfile(loc.text(), source=loc.ref).key_id for loc in self.locations]

    def mints(self, text: str) -> bool:
        clock = SystemClock()
        with IssuerClient(self.issuer.url, clock=clock) as client:
            try:
                mint(parse_keyfile(text, source="test"), client, AssertionSigner(clock), ("openid",))
            except IssuerRejected:
                return False
        return True

    def hooks(self) -> list[tuple[str, str]]:
        """(key id, location) of every after_publish run."""
        lines = self.hook_marker.read_text().splitlines() if self.hook_marker.exists() else []
        return [(key_id, ref) for key_id, ref in (line.split(" ", 1) for line in lines)]

    def check_invariants(self) -> None:
        """What must hold at any instant, crashed or not."""
        registered, held = self.user_keys(), self.held()
        for loc in self.locations:  # a location never holds a key that does not mint
            assert self.mints(loc.text()), f"{loc.ref} holds a key that does not mint"
            loc.check(self.old.key_id)
        published = set(held)
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
        log = self.log()
        for text in {self.old.text, *(loc.text() for loc in self.locations)}:
            body = json.loads(text)["key"].splitlines()[1]  # no private key in the database or a log
            assert body not in dump, "a private key in the database"
            assert body not in log, "a private key in keyd's log"
