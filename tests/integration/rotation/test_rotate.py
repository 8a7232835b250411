"""The rotation protocol in process against the real test issuer (with its
v2 key API and ZITADEL's authorization), real key files and a real
database: a due key is registered, proven, published and, after the
overlap and a probe of the new key, retired; failures end in a clear
state with the old key untouched."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.actions.hooks import Hook
from keyd.actions.probe import build_probe_services, probe_due
from keyd.actions.publish import Publisher
from keyd.actions.rotate import plan_rotations, rotate_due, rotate_key
from keyd.actions.rotation_services import RotationServices, probe_prover
from keyd.checks.apitoken import ApiTokenProvider
from keyd.checks.assertion import AssertionSigner
from keyd.checks.rotation import RotationPolicy
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clients.zitadel import ZitadelKeyAPI
from keyd.clock import SystemClock
from keyd.config import Config, DirectorySourceConfig, IssuerConfig, VaultSourceConfig
from keyd.inventory.scan import scan_all
from keyd.sources.keyfile import read_keyfile
from keyd.store import rotations as store
from keyd.store.models import Alert
from tests.support.issuer import IssuerServer
from tests.support.keyrows import rows
from tests.support.keys import make_key_file
from tests.support.zitadel_api import make_api_user

pytestmark = pytest.mark.issuer


class Setup:
    def __init__(self, engine, issuer: IssuerServer, tmp_path: Path) -> None:
        self.engine, self.issuer, self.clock = engine, issuer, SystemClock()
        self.keys = tmp_path / "keys"
        self.keys.mkdir()
        manager = make_api_user(issuer, tmp_path / "api")
        assert manager.path is not None
        self.config = Config(
            issuer=IssuerConfig(url=issuer.url, rate_limit=0),
            sources=(DirectorySourceConfig("dir", self.keys),),
        )
        self.client = IssuerClient(issuer.url, clock=self.clock)
        self.probe = build_probe_services(self.config, self.clock, self.client, None, on_round=None)
        tokens = ApiTokenProvider(manager.path, self.client, AssertionSigner(self.clock), self.clock)
        self.api = ZitadelKeyAPI(issuer.url, tokens, clock=self.clock, deadline=10)
        self.policy = RotationPolicy(
            overlap=timedelta(0), prove_attempts=2, prove_base=timedelta(seconds=0.1)
        )
        self.hooks: dict[str, Hook] = {}

    def services(self, **kw: object) -> RotationServices:
        policy = kw.pop("policy", self.policy)
        return RotationServices(
            api=self.api,
            publisher=Publisher(self.config.sources, None),
            prove=probe_prover(self.probe, policy),  # type: ignore[arg-type]
            clock=self.clock,
            policy=policy,
            hooks=self.hooks,  # type: ignore[arg-type]
            **kw,
        )  # type: ignore[arg-type]

    def key(self, days: float, name: str = "app.json"):
        made = make_key_file(
            self.keys,
            register_with=self.issuer,
            filename=name,
            expires_at=datetime.now(UTC) + timedelta(days=days),
        )
        self.issuer.key_api.add_user(made.principal)
        return made

    def scan(self) -> None:
        scan_all(self.config, self.engine, self.clock)

    def server_keys(self, user: str) -> set[str]:
        return {k.key_id for k in self.issuer.keys() if k.principal == user}


def alerts(setup: Setup) -> list[tuple[str, str]]:
    return [(a.kind, a.severity) for a in rows(setup.engine, Alert) if a.about.startswith("rotation:")]


@pytest.fixture
def setup(migrated_engine, issuer, tmp_path) -> Iterator[Setup]:
    s = Setup(migrated_engine, issuer, tmp_path)
    yield s
    s.api.close()
    s.client.close()


def test_due_key_is_rotated_end_to_end(setup: Setup):
    old = setup.key(days=5)
    fresh = setup.key(days=80, name="fresh.json")
    setup.scan()
    assert [
        line.split(" of ")[0] for line in plan_rotations(setup.engine, setup.policy, setup.clock.now())
    ] == [f"would rotate key {old.key_id}"]
    report = rotate_due(setup.engine, setup.services(), setup.clock.now())
    [row] = report.rows
    assert row.state == "published" and row.new_key_id is not None
    assert old.path is not None
    new = read_keyfile(old.path)
    assert new.key_id == row.new_key_id and new.principal == old.principal
    assert new.expires_at == row.new_expires_at and new.expires_at.hour == 0
    assert setup.server_keys(old.principal) == {old.key_id, new.key_id}  # overlap
    assert store.get(setup.engine, fresh.key_id) is None  # not due
    # the new key is retired only after a probe of it since publishing
    waiting = rotate_key(setup.engine, setup.services(), old.key_id)
    assert waiting.state == "published" and "the old key is still in" in (waiting.last_error or "")
    setup.scan()
    waiting = rotate_key(setup.engine, setup.services(), old.key_id)
    assert waiting.state == "published" and "probe" in (waiting.last_error or "")
    probe_due(setup.engine, setup.probe, setup.clock.now())
    row = rotate_key(setup.engine, setup.services(), old.key_id)
    assert row.state == "retired"
    assert setup.server_keys(old.principal) == {new.key_id}
    assert alerts(setup) == [("rotated", "info")]
    kinds = [kind for _, kind, _ in store.history(setup.engine, old.key_id)]
    assert kinds == [
        "rotation.planned",
        "rotation.registered",
        "rotation.proven",
        "rotation.published",
        "rotation.retired",
    ]


def test_no_permission_blocks_with_the_old_key_untouched(setup: Setup):
    old = setup.key(days=5)
    setup.issuer.key_api.revoke_grants(setup.api.tokens.principal)  # type: ignore[attr-defined]
    setup.scan()
    setup.api.tokens.token()  # type: ignore[attr-defined]  (learn keyd's own user id)
    setup.issuer.key_api.revoke_grants(setup.api.tokens.principal)  # type: ignore[attr-defined]
    [row] = rotate_due(setup.engine, setup.services(), setup.clock.now()).rows
    assert row.state == "failed" and row.failed_step == "permission"
    assert "user.write" in (row.last_error or "")
    assert alerts(setup) == [("rotation_blocked", "critical")]
    assert old.path is not None and read_keyfile(old.path).key_id == old.key_id
    assert setup.server_keys(old.principal) == {old.key_id}


@pytest.mark.parametrize("hook", ["fails", "hangs"])
def test_failing_hook_ends_failed_and_keeps_the_old_key(setup: Setup, hook: str):
    old = setup.key(days=5)
    code = "import sys; sys.exit(4)" if hook == "fails" else "import time; time.sleep(30)"
    setup.hooks["dir"] = Hook((sys.executable, "-c", code), timeout=timedelta(seconds=1))
    setup.scan()
    [row] = rotate_due(setup.engine, setup.services(), setup.clock.now()).rows
    assert row.state == "failed" and row.failed_step == "hook"
    assert ("status 4" if hook == "fails" else "killed") in (row.last_error or "")
    assert alerts(setup) == [("rotation_failed", "critical")]
    # published (the location mints) but the old key stays registered
    assert old.path is not None and read_keyfile(old.path).key_id == row.new_key_id
    assert setup.server_keys(old.principal) == {old.key_id, row.new_key_id}
    # fixed hook: `keyd rotate` resumes at the hook
    setup.hooks["dir"] = Hook((sys.executable, "-c", "pass"))
    resumed = rotate_key(setup.engine, setup.services(), old.key_id)
    assert resumed.state == "published" and resumed.hook_done_at is not None


def test_key_that_never_mints_is_removed_and_failed(setup: Setup):
    old = setup.key(days=5)
    setup.scan()
    setup.api.tokens.token()  # type: ignore[attr-defined]  (keyd's own token, cached)
    setup.issuer.fault_paths = {"/oauth/v2/token"}
    setup.issuer.fail_mode = "503"
    [row] = rotate_due(setup.engine, setup.services(), setup.clock.now()).rows
    setup.issuer.fail_mode = None
    assert row.state == "failed" and row.failed_step == "proof"
    assert alerts(setup) == [("rotation_failed", "critical")]
    assert setup.server_keys(old.principal) == {old.key_id}  # the unproven key is gone again
    assert old.path is not None and read_keyfile(old.path).key_id == old.key_id


def test_application_keys_are_not_rotated(setup: Setup):
    app = make_key_file(
        setup.keys,
        kind="application",
        register_with=setup.issuer,
        expires_at=datetime.now(UTC) + timedelta(days=3),
    )
    setup.scan()
    assert rotate_due(setup.engine, setup.services(), setup.clock.now()).rows == []
    from keyd.errors import UsageError

    with pytest.raises(UsageError, match="application keys are not rotated"):
        rotate_key(setup.engine, setup.services(), app.key_id)


def test_policy_filters_and_disabled(setup: Setup):
    setup.key(days=5)
    setup.scan()
    for policy in (
        replace(setup.policy, enabled=False),
        replace(setup.policy, principals=("someone-else",)),
        replace(setup.policy, sources=("/elsewhere/*",)),
    ):
        assert rotate_due(setup.engine, setup.services(policy=policy), setup.clock.now()).rows == []


@pytest.mark.openbao
def test_vault_secret_changed_since_scan_blocks_and_overwrites_nothing(
    migrated_engine, issuer, tmp_path, openbao, kv_prefix
):
    setup = Setup(migrated_engine, issuer, tmp_path)
    try:
        old = make_key_file(None, register_with=issuer, expires_at=datetime.now(UTC) + timedelta(days=5))
        issuer.key_api.add_user(old.principal)
        path = f"{kv_prefix}/keys/app"
        openbao.kv_put(path, {"keyfile": old.text})
        source = VaultSourceConfig("vault", mount="secret", prefix=f"{kv_prefix}/keys")
        setup.config = replace(setup.config, sources=(source,), vault=openbao.vault_config())
        with VaultClient(openbao.vault_config(), setup.clock) as vault:
            scan_all(setup.config, setup.engine, setup.clock, vault)
            version = openbao.kv_put(path, {"keyfile": old.text, "edited": "by hand"})
            services = setup.services()
            services.publisher = Publisher(setup.config.sources, vault)
            [row] = rotate_due(setup.engine, services, setup.clock.now()).rows
            secret = vault.read("secret", path)
        assert row.state == "failed" and row.failed_step == "conflict"
        assert f"secret/{path}" in (row.last_error or "") and "not overwritten" in row.last_error
        assert secret.version == version and secret.data["edited"] == "by hand"
        assert setup.server_keys(old.principal) == {old.key_id}  # the new key was removed
        assert alerts(setup) == [("rotation_blocked", "critical")]
    finally:
        setup.api.close()
        setup.client.close()
