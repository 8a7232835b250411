"""scan_all over a directory AND a real OpenBao KV v2 source, reconciled on
SQLite and PostgreSQL: one key in both places is one key with two
locations; a sealed Vault fails only its source and its keys stay."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import Config, DirectorySourceConfig, VaultSourceConfig
from keyd.inventory.scan import scan_all
from keyd.store.inventory import inventory_snapshot
from tests.support.keys import make_key_file, rsa_key
from tests.support.openbao import OpenBao

pytestmark = pytest.mark.openbao

LATER = datetime.now(UTC) + timedelta(days=300)


def test_directory_and_vault(migrated_engine: Engine, openbao_fresh: OpenBao, tmp_path: Path) -> None:
    bao, prefix = openbao_fresh, "zitadel/keys"
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    os.chmod(keys, 0o700)
    shared = rsa_key()
    both = make_key_file(keys, key_id="111", user_id="svc-a", expires_at=LATER, private_key=shared)
    only_vault = make_key_file(key_id="222", user_id="svc-b", expires_at=LATER)
    bao.kv_put(f"{prefix}/a", both.data)  # the key-file fields as the secret's fields
    bao.kv_put(f"{prefix}/b", {"keyfile": json.dumps(only_vault.data)})  # one field
    bao.kv_put(f"{prefix}/junk", {"note": "not a key"})
    vault_src = VaultSourceConfig(name="vault:secret/zitadel/keys", prefix=prefix)
    config = Config(
        sources=(DirectorySourceConfig(name="dir", path=keys), vault_src), vault=bao.vault_config()
    )
    clock = FakeClock(datetime.now(UTC))
    with VaultClient(config.vault, clock) as client:  # type: ignore[arg-type]
        report = scan_all(config, migrated_engine, clock, client)
        assert not report.failed
        assert report.summary() == "2 sources, 2 keys (2 new, 0 changed, 0 missing, 1 invalid)"
        snap = inventory_snapshot(migrated_engine)
        by_id = {k.key_id: k for k in snap.keys}
        assert {loc.source for loc in by_id["111"].locations} == {"dir", vault_src.name}
        assert [o.ref for o in snap.orphans] == [f"secret/{prefix}/junk"]

        # nothing changed: Vault secrets are not re-read, nothing new
        clock.advance(60)
        report = scan_all(config, migrated_engine, clock, client)
        vault_outcome = report.sources[1]
        assert vault_outcome.unchanged == 2 and vault_outcome.new == 0

        # a new version with a new expiry = changed content
        newer = dict(only_vault.data, expirationDate="2031-01-01T00:00:00Z")
        bao.kv_put(f"{prefix}/b", {"keyfile": json.dumps(newer)})
        clock.advance(60)
        report = scan_all(config, migrated_engine, clock, client)
        assert report.total("changed") == 1

        # sealed: the Vault source fails, its keys stay as they were
        bao.seal()
        clock.advance(60)
        report = scan_all(config, migrated_engine, clock, client)
        assert [f.source for f in report.failed] == [vault_src.name]
        assert "failed" in report.summary() and report.keys == 2
        snap = inventory_snapshot(migrated_engine)
        assert {k.key_id: k.status for k in snap.keys} == {"111": "active", "222": "active"}
        vault_locs = [loc for k in snap.keys for loc in k.locations if loc.source == vault_src.name]
        assert {loc.status for loc in vault_locs} == {"present"}
        state = {s.name: s for s in snap.sources}[vault_src.name]
        assert state.consecutive_failures == 1 and state.last_error

        bao.unseal()
        clock.advance(60)
        report = scan_all(config, migrated_engine, clock, client)
        assert not report.failed
        snap = inventory_snapshot(migrated_engine)
        assert {s.name: s.consecutive_failures for s in snap.sources}[vault_src.name] == 0
