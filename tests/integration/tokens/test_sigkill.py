"""A keyd process SIGKILLed right after its Vault write (before anything
is recorded in the database): the next run recognises keyd's own token in
place and records it instead of calling it a conflict (README "Validation probe and token
write-back": crash test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from keyd.actions.tokens import TokenServices, refresh_tokens
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clock import SystemClock
from keyd.config import DirectorySourceConfig, TokensConfig
from keyd.sources.keyfile import read_keyfile
from keyd.store import tokens as store
from tests.support.keyrows import add_key
from tests.support.keys import make_key_file

pytestmark = [pytest.mark.openbao, pytest.mark.issuer]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from datetime import UTC
    from pathlib import Path
    from keyd.actions.tokens import TokenServices, refresh_tokens
    from keyd.checks.assertion import AssertionSigner
    from keyd.checks.keyload import make_key_loader
    from keyd.clients.issuer import IssuerClient
    from keyd.clients.vault import VaultClient
    from keyd.clock import SystemClock
    from keyd.config import DirectorySourceConfig, TokensConfig, VaultConfig
    from keyd.redact import Secret
    from keyd.store.engine import make_engine

    db, issuer, addr, keydir, path = sys.argv[1:6]
    clock = SystemClock()
    vault = VaultClient(VaultConfig(addr=addr, token=Secret(os.environ["T_TOKEN"])), clock)

    class DieAfterWrite:
        def __getattr__(self, name):
            return getattr(vault, name)

        def write_cas(self, *a, **kw):
            vault.write_cas(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)

    services = TokenServices(
        tokens=TokensConfig(path=path), client=IssuerClient(issuer, clock=clock),
        signer=AssertionSigner(clock), vault=DieAfterWrite(), clock=clock,
        load_key=make_key_loader([DirectorySourceConfig("dir", Path(keydir))], None, UTC))
    refresh_tokens(make_engine(db), services, clock.now())
    sys.exit("not killed")
""")


def test_sigkill_after_write_is_repaired(migrated_engine, db_url, openbao, issuer, tmp_path, kv_prefix):
    clock = SystemClock()
    keydir = tmp_path / "keys"
    made = make_key_file(keydir, register_with=issuer, expires_at=clock.now() + timedelta(days=30))
    add_key(migrated_engine, read_keyfile(made.path), ref=str(made.path), now=clock.now())
    template = f"{kv_prefix}/tokens/{{principal}}"
    root = Path(__file__).resolve().parents[3]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, issuer.url, openbao.addr, str(keydir), template],
        cwd=root,
        env={**os.environ, "T_TOKEN": openbao.root_token, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    [sink] = store.all_sinks(migrated_engine)
    assert sink.vault_version is None and sink.state == "pending"  # nothing recorded
    path = f"{kv_prefix}/tokens/{made.principal}"
    assert openbao.kv_metadata(path)["current_version"] == 1  # but the write happened
    with IssuerClient(issuer.url, clock=clock) as client, VaultClient(openbao.vault_config(), clock) as vault:
        services = TokenServices(
            tokens=TokensConfig(path=template),
            client=client,
            signer=AssertionSigner(clock),
            vault=vault,
            clock=clock,
            load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, clock.now().tzinfo),
        )  # type: ignore[arg-type]
        [result] = refresh_tokens(migrated_engine, services, clock.now()).results
    assert result.outcome == "kept" and result.vault_version == 1
    [sink] = store.all_sinks(migrated_engine)
    assert sink.vault_version == 1 and sink.state == "ok" and sink.next_refresh_at > clock.now()
    assert store.events(migrated_engine) == []  # not mistaken for a foreign write
