"""Token write-back through real parts: OpenBao dev server, the test
authorization server, SQLite and PostgreSQL (README "Validation probe and token write-back")."""

from __future__ import annotations

import logging
import random
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyd.actions.tokens import TokenPolicy, TokenServices, refresh_tokens
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import AlertsConfig, DirectorySourceConfig, TokensConfig, WebhookConfig
from keyd.sources.keyfile import read_keyfile
from keyd.store import tokens as store
from keyd.store.models import Alert, Delivery
from tests.support.issuer import IssuerServer
from tests.support.keyrows import add_key, dump_all, rows
from tests.support.keys import make_key_file
from tests.support.openbao import OpenBao

pytestmark = [pytest.mark.openbao, pytest.mark.issuer]
PEM = "PRIVATE KEY"


def keyd_side_logs(caplog: Any) -> str:
    """Every log line of the run except the test issuer's own (it is the
    server: it knows the tokens it issues and Authlib logs them)."""
    return "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith(("authlib", "tests."))
    )


@dataclass
class World:
    engine: Any
    bao: OpenBao
    issuer: IssuerServer
    clock: FakeClock
    services: TokenServices
    keydir: Path
    prefix: str

    def add_key(self, **kw: Any) -> Any:
        made = make_key_file(
            self.keydir, register_with=self.issuer, expires_at=self.clock.now() + timedelta(days=90), **kw
        )
        add_key(self.engine, read_keyfile(made.path), ref=str(made.path), now=self.clock.now())
        return made

    def path(self, principal: str) -> str:
        return f"{self.prefix}/tokens/{principal}"

    def secret(self, principal: str) -> dict[str, Any]:
        resp = self.bao.client.secrets.kv.v2.read_secret_version(
            path=self.path(principal), mount_point="secret", raise_on_deleted_version=True
        )
        return dict(resp["data"])

    def run(self, **kw: Any) -> Any:
        return refresh_tokens(self.engine, self.services, self.clock.now(), **kw)

    def sink(self) -> Any:
        [row] = store.all_sinks(self.engine)
        return row


HOOK = "http://127.0.0.1:9/services/T000/B000/hook-secret-XYZ"  # a Slack-style secret path


def _world(
    engine: Any, bao: OpenBao, issuer: IssuerServer, tmp_path: Path, prefix: str, **tokens: Any
) -> Iterator[World]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    client = IssuerClient(issuer.url, clock=clock, timeout=2.0)
    vault = VaultClient(bao.vault_config(), clock)
    keydir = tmp_path / "keys"
    cfg = TokensConfig(mount="secret", path=f"{prefix}/tokens/{{principal}}", **tokens)
    services = TokenServices(
        tokens=cfg,
        client=client,
        signer=AssertionSigner(clock),
        vault=vault,
        clock=clock,
        load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, UTC),
        policy=TokenPolicy(concurrency=4),
        rng=random.Random(3),
        alerts=AlertsConfig(webhook=WebhookConfig(HOOK)),
    )
    try:
        yield World(engine, bao, issuer, clock, services, keydir, prefix)
    finally:
        client.close()
        vault.close()


@pytest.fixture
def world(migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    yield from _world(migrated_engine, openbao, issuer, tmp_path, kv_prefix)


def test_writes_fresh_token_marked_and_versioned(world):
    made = world.add_key()
    report = world.run()
    assert report.counts() == {"written": 1}
    secret = world.secret(made.principal)
    data, meta = secret["data"], secret["metadata"]
    assert data["access_token"].startswith("zat_") and data["token_type"] == "Bearer"
    assert data["key_id"] == made.key_id and "openid" in data["scope"]
    assert set(data) == {"access_token", "token_type", "expires_at", "issued_at", "key_id", "scope"}
    assert meta["custom_metadata"] == {"managed-by": "keyd", "key-id": made.key_id}
    sink = world.sink()
    assert sink.vault_version == meta["version"] == 1 and sink.state == "ok"
    ttl = timedelta(seconds=43200)
    assert sink.issued_at + ttl * 2 / 3 - ttl / 20 <= sink.next_refresh_at
    assert sink.next_refresh_at <= sink.issued_at + ttl * 2 / 3
    # not due: nothing happens
    assert world.run().results == []


def test_short_lived_token_is_refreshed_on_time(world):
    world.issuer.set_token_lifetime(10)
    made = world.add_key()
    world.run()
    first = world.secret(made.principal)["data"]["access_token"]
    world.clock.advance(6.0)  # refresh falls in (6.17 s, 6.67 s]
    assert world.run().results == []
    world.clock.advance(0.7)
    assert world.run().counts() == {"written": 1}
    second = world.secret(made.principal)
    assert second["data"]["access_token"] != first and second["metadata"]["version"] == 2
    assert world.sink().vault_version == 2


def test_mint_failure_keeps_old_token_and_backs_off(world):
    made = world.add_key()
    world.run()
    before = world.secret(made.principal)
    world.clock.set(world.sink().next_refresh_at)
    world.issuer.fail_mode = "503"
    [result] = world.run().results
    assert result.outcome == "failed" and "unavailable" in result.message
    assert world.secret(made.principal) == before  # the valid old token stays
    sink = world.sink()
    assert sink.state == "failed" and sink.failures == 1 and sink.vault_version == 1
    assert sink.next_refresh_at > world.clock.now()
    world.issuer.fail_mode = None
    world.clock.set(sink.next_refresh_at)
    assert world.run().counts() == {"written": 1}
    assert world.sink().failures == 0


def test_rejected_key_keeps_old_token(world):
    made = world.add_key()
    world.run()
    world.issuer.remove_key(made.key_id)
    world.clock.set(world.sink().next_refresh_at)
    [result] = world.run().results
    assert result.outcome == "failed" and "invalid_grant" in result.message
    assert world.secret(made.principal)["metadata"]["version"] == 1


def test_foreign_write_is_a_conflict_not_overwritten(world):
    made = world.add_key()
    world.run()
    world.bao.kv_put(world.path(made.principal), {"access_token": "someone-else"})
    world.clock.set(world.sink().next_refresh_at)
    [result] = world.run().results
    assert result.outcome == "conflict" and "someone else" in result.message
    assert world.secret(made.principal)["data"] == {"access_token": "someone-else"}
    sink = world.sink()
    assert sink.state == "conflict" and sink.vault_version == 1
    assert [e.kind for e in store.events(world.engine)] == ["token.conflict"]
    [alert] = rows(world.engine, Alert)
    assert alert.kind == "conflict" and made.key_id in alert.subject
    # a second refusal is the same episode: no new event or alert
    world.clock.set(sink.next_refresh_at)
    world.run()
    assert len(store.events(world.engine)) == 1 and len(rows(world.engine, Alert)) == 1


def test_unmanaged_secret_is_refused(world):
    made = world.add_key()
    world.bao.kv_put(world.path(made.principal), {"token": "hand-made"})
    [result] = world.run().results
    assert result.outcome == "unmanaged" and "not managed by keyd" in result.message
    assert world.secret(made.principal)["data"] == {"token": "hand-made"}
    assert [e.kind for e in store.events(world.engine)] == ["token.unmanaged"]
    assert [a.kind for a in rows(world.engine, Alert)] == ["unmanaged"]
    # the refusal alert's webhook delivery never stores the URL's secret path
    [delivery] = rows(world.engine, Delivery)
    assert delivery.channel == "webhook" and delivery.recipient == "http://127.0.0.1:9/…"
    assert "hook-secret-XYZ" not in str(dump_all(world.engine))


@pytest.fixture
def adopting(migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    yield from _world(migrated_engine, openbao, issuer, tmp_path, kv_prefix, adopt=True)


def test_adoption_takes_over_when_allowed(adopting):
    world = adopting
    made = world.add_key()
    world.bao.kv_put(world.path(made.principal), {"token": "hand-made"})
    assert world.run().counts() == {"written": 1}
    secret = world.secret(made.principal)
    assert secret["metadata"]["custom_metadata"]["managed-by"] == "keyd"
    assert secret["metadata"]["version"] == 2
    assert [e.kind for e in store.events(world.engine)] == ["token.adopted"]


def test_crash_between_mint_and_write_is_repaired(world):
    made = world.add_key()
    real = world.services.vault

    class Dies:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def write_cas(self, *a: Any, **kw: Any) -> int:
            raise KeyboardInterrupt  # the process dies after minting, before writing

    world.services.vault = Dies()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        world.run()
    world.services.vault = real
    assert world.run().counts() == {"written": 1}
    assert world.sink().vault_version == world.secret(made.principal)["metadata"]["version"]


def test_crash_between_write_and_record_is_repaired(world):
    made = world.add_key()
    world.run()
    real = world.services.vault

    class DiesAfterWrite:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def write_cas(self, *a: Any, **kw: Any) -> int:
            real.write_cas(*a, **kw)
            raise KeyboardInterrupt  # written, but keyd died before recording it

    world.clock.set(world.sink().next_refresh_at)
    world.services.vault = DiesAfterWrite()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        world.run()
    assert world.sink().vault_version == 1
    assert world.secret(made.principal)["metadata"]["version"] == 2
    world.services.vault = real
    # keyd's own lost write is recognised (not a conflict) and superseded
    assert world.run().counts() == {"written": 1}
    assert world.sink().vault_version == 3 and world.sink().state == "ok"
    assert store.events(world.engine) == []


def test_vault_sealed_mid_run(migrated_engine, openbao_fresh, issuer, tmp_path, kv_prefix):
    for world in _world(migrated_engine, openbao_fresh, issuer, tmp_path, kv_prefix):
        made = world.add_key()
        world.run()
        world.clock.set(world.sink().next_refresh_at)
        world.bao.seal()
        [result] = world.run().results
        assert result.outcome == "failed" and "unavailable" in result.message.lower()
        assert world.sink().vault_version == 1
        world.bao.unseal()
        world.clock.set(world.sink().next_refresh_at)
        assert world.run().counts() == {"written": 1}
        assert world.secret(made.principal)["metadata"]["version"] == 2


@pytest.fixture
def filesink(migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    yield from _world(migrated_engine, openbao, issuer, tmp_path, kv_prefix, file_dir=tmp_path / "tokens")


def test_file_sink_is_0600_and_matches_vault(filesink):
    import json

    world = filesink
    made = world.add_key()
    world.run()
    path = Path(world.sink().file_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (
        json.loads(path.read_text())["access_token"] == world.secret(made.principal)["data"]["access_token"]
    )
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_selectors_and_rotation_pick_one_key_per_path(world):
    old = world.add_key(user_id="svc-a")
    new = make_key_file(
        world.keydir,
        user_id="svc-a",
        register_with=world.issuer,
        expires_at=world.clock.now() + timedelta(days=400),
    )
    add_key(world.engine, read_keyfile(new.path), ref=str(new.path), now=world.clock.now())
    world.add_key(user_id="svc-b")
    world.services.tokens = replace(world.services.tokens, principals=("svc-a",))
    assert world.run().counts() == {"written": 1}
    assert world.secret("svc-a")["data"]["key_id"] == new.key_id != old.key_id


def test_dry_run_writes_nothing(world):
    world.add_key()
    report = world.run(dry_run=True)
    assert report.counts() == {"new": 1}
    assert store.all_sinks(world.engine) == []


def test_no_token_or_key_material_in_logs_or_db(world, caplog):
    caplog.set_level(logging.DEBUG)
    world.issuer.set_token_lifetime(10)
    made = world.add_key()
    world.run()
    world.clock.advance(7)
    world.issuer.fail_next(1, "503")
    world.run()
    world.bao.kv_put(world.path(made.principal), {"access_token": "x"})
    world.clock.advance(60)
    world.run()
    text = keyd_side_logs(caplog) + dump_all(world.engine)
    assert world.issuer.issued_tokens
    for marker in ["zat_", "eyJ", PEM, world.bao.root_token, *world.issuer.issued_tokens]:
        assert marker not in text


def test_a_failed_token_file_write_is_retried_soon(filesink):
    """The file could not be written (here: a directory in its place; disk
    full or permissions alike): the sink is failed, not ok, and due again
    within the retry backoff, not at 2/3 of the token's lifetime."""
    import json

    world = filesink
    made = world.add_key()
    file_dir = world.keydir.parent / "tokens"
    file_dir.mkdir(exist_ok=True)
    world.run()  # learn the file name, then block it
    path = Path(world.sink().file_path)
    path.unlink()
    path.mkdir()
    world.clock.set(world.sink().next_refresh_at)
    [result] = world.run().results
    sink = world.sink()
    assert result.outcome == "written" and result.message  # Vault has it, the file does not
    assert sink.state == "failed" and sink.failures == 1 and sink.last_error
    assert sink.next_refresh_at - world.clock.now() <= world.services.policy.retry_cap
    path.rmdir()
    world.clock.set(sink.next_refresh_at)
    assert world.run().counts() == {"written": 1}
    assert world.sink().state == "ok"
    assert (
        json.loads(path.read_text())["access_token"] == world.secret(made.principal)["data"]["access_token"]
    )
