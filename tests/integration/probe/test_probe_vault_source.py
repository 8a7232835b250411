"""Probing a key whose file lives in Vault KV v2: the key material is read
back from Vault for each probe (never from the DB); a sealed Vault makes
the probe ``unreadable`` (no issuer contact, no history row, backoff)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from keyd.actions.probe import ProbeServices, probe_due
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.checks.probe import ProbePolicy
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import VaultSourceConfig
from keyd.store.models import Probe
from tests.support.keyrows import add_vault_key, key_row, rows
from tests.support.keys import make_key_file

pytestmark = [pytest.mark.issuer, pytest.mark.openbao]


@pytest.mark.parametrize("as_field", [True, False])
def test_vault_key_probed_and_sealed_vault_is_unreadable(migrated_engine, openbao_fresh, issuer, as_field):
    bao = openbao_fresh
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    made = make_key_file(register_with=issuer, expires_at=clock.now() + timedelta(days=30))
    source = VaultSourceConfig(name="vault:secret/zitadel/keys", mount="secret", prefix="zitadel/keys")
    add_vault_key(migrated_engine, bao, made.data, source=source.name, now=clock.now(), as_field=as_field)
    with IssuerClient(issuer.url, clock=clock) as client, VaultClient(bao.vault_config(), clock) as vault:
        services = ProbeServices(
            client=client,
            signer=AssertionSigner(clock),
            clock=clock,
            load_key=make_key_loader([source], vault, UTC),
            policy=ProbePolicy(rate_limit=0),
            rng=random.Random(1),
        )
        assert probe_due(migrated_engine, services, clock.now()).counts() == {"ok": 1}
        bao.seal()
        [result] = probe_due(migrated_engine, services, clock.now(), force_key_id=made.key_id).results
        assert result.outcome == "unreadable" and "unavailable" in (result.message or "")
    assert len(rows(migrated_engine, Probe)) == 1
    key = key_row(migrated_engine, made.key_id)
    assert key.status == "active" and key.last_probe_outcome == "ok" and key.probe_failures == 1
