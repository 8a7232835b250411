"""How a probe round runs (keyd.actions.probe._Round over
keyd.clients.multiplex), through the test issuer and a real OpenBao:
file-backed keys are read, signed and sent from the calling thread,
several in flight at once; a key in Vault is read in a worker thread so
that a slow Vault holds its place, not the round; the rate limit spaces
the requests by waiting on the round's clock."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyd.actions.probe import ProbeServices, probe_due
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.checks.probe import ProbePolicy
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import DirectorySourceConfig, VaultSourceConfig
from keyd.sources.keyfile import read_keyfile
from tests.support.issuer import IssuerServer
from tests.support.keyrows import add_key, add_vault_key, key_row
from tests.support.keys import make_key_file

pytestmark = pytest.mark.issuer

VAULT_SOURCE = VaultSourceConfig(name="vault:secret/zitadel/keys", mount="secret", prefix="zitadel/keys")


def _file_keys(engine: Any, issuer: IssuerServer, keydir: Path, clock: FakeClock, n: int) -> list[str]:
    ids = []
    for i in range(n):
        made = make_key_file(
            keydir,
            register_with=issuer,
            key_id=f"81{i:02d}",
            alg="ES256",
            expires_at=clock.now() + timedelta(days=90),
        )
        add_key(engine, read_keyfile(made.path), ref=str(made.path), now=clock.now())
        ids.append(made.key_id)
    return ids


def _services(client: IssuerClient, clock: FakeClock, loader: Any, **policy: Any) -> ProbeServices:
    policy.setdefault("rate_limit", 0)
    return ProbeServices(
        client=client,
        signer=AssertionSigner(clock),
        clock=clock,
        load_key=loader,
        policy=ProbePolicy(**policy),
        rng=random.Random(3),
    )


def test_file_keys_are_probed_from_the_calling_thread(migrated_engine, issuer, tmp_path):
    """No worker thread: every key is read on the thread that runs the
    round, and the round keeps several requests in flight over as many
    kept-alive connections (the issuer saw them from 4 connections at most,
    plus discovery's)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    ids = _file_keys(migrated_engine, issuer, tmp_path / "keys", clock, 12)
    loader = make_key_loader([DirectorySourceConfig("dir", tmp_path / "keys")], None, UTC)
    seen: list[tuple[str, list[str]]] = []

    def load(target: Any) -> Any:
        names = [t.name for t in threading.enumerate()]
        seen.append((threading.current_thread().name, names))
        return loader(target)

    with IssuerClient(issuer.url, clock=clock) as client:
        report = probe_due(migrated_engine, _services(client, clock, load, concurrency=4), clock.now())
        with client.multiplexer() as mux:
            assert mux is not None and 1 <= mux.opened <= 4
    assert report.counts() == {"ok": 12}
    here = threading.current_thread().name
    assert [name for name, _ in seen] == [here] * 12
    assert not any(n.startswith("keyd-probe") for _, names in seen for n in names)
    assert all(key_row(migrated_engine, key_id).last_probe_outcome == "ok" for key_id in ids)


@pytest.mark.openbao
def test_a_slow_vault_read_holds_its_place_not_the_round(migrated_engine, openbao_fresh, issuer, tmp_path):
    """A key in Vault is read in a ``keyd-probe-load`` thread: while that
    read waits, the round goes on probing the file-backed keys (the read is
    held until the issuer has answered every one of them; read inline, it
    would have held them all)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    file_ids = _file_keys(migrated_engine, issuer, tmp_path / "keys", clock, 6)
    made = make_key_file(register_with=issuer, key_id="8200", expires_at=clock.now() + timedelta(days=90))
    add_vault_key(migrated_engine, openbao_fresh, made.data, source=VAULT_SOURCE.name, now=clock.now())
    with (
        IssuerClient(issuer.url, clock=clock) as client,
        VaultClient(openbao_fresh.vault_config(), clock) as vault,
    ):
        client.discover()
        before = issuer.requests_seen

        class Held:
            """Vault, but a read waits until the file keys were all answered."""

            threads: list[str] = []
            released = False

            def read(self, mount: str, secret: str) -> Any:
                self.threads.append(threading.current_thread().name)
                guard = time.monotonic() + 30  # a guard against a hang, not a measurement
                while issuer.requests_seen < before + len(file_ids) and time.monotonic() < guard:
                    time.sleep(0.01)
                Held.released = issuer.requests_seen >= before + len(file_ids)
                return vault.read(mount, secret)

        loader = make_key_loader([DirectorySourceConfig("dir", tmp_path / "keys"), VAULT_SOURCE], Held(), UTC)
        report = probe_due(migrated_engine, _services(client, clock, loader, concurrency=3), clock.now())
    assert report.counts() == {"ok": 7}
    assert Held.released, "the round waited for the Vault read before probing the file keys"
    assert len(Held.threads) == 1 and Held.threads[0].startswith("keyd-probe-load")
    assert key_row(migrated_engine, made.key_id).last_probe_outcome == "ok"


def test_the_rate_limit_spaces_requests_on_the_rounds_clock(migrated_engine, issuer, tmp_path):
    """At 5 requests/s, 8 keys wait for 7 slots of 0.2 s on the round's
    clock (a FakeClock here: its sleeps are recorded, nothing waits)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    _file_keys(migrated_engine, issuer, tmp_path / "keys", clock, 8)
    loader = make_key_loader([DirectorySourceConfig("dir", tmp_path / "keys")], None, UTC)
    with IssuerClient(issuer.url, clock=clock) as client:
        start = clock.monotonic()
        report = probe_due(migrated_engine, _services(client, clock, loader, rate_limit=5.0), clock.now())
    assert report.counts() == {"ok": 8}
    assert clock.monotonic() - start == pytest.approx(7 * 0.2)
    assert all(0 < s <= 0.2 + 1e-9 for s in clock.slept)


def test_closing_the_client_during_a_round_does_not_wait_for_it(issuer):
    """``IssuerClient.close`` from another thread (the daemon stopping)
    returns at once while a round holds the multiplexer; the round closes
    it as it ends."""
    client = IssuerClient(issuer.url, clock=FakeClock())
    with client.multiplexer() as mux:
        assert mux is not None
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(10)  # a guard against a hang, not a measurement
        assert not closer.is_alive()
        assert mux.active is False and client._mux is mux  # still usable by this round
    assert client._mux is None


def test_a_round_stopped_by_a_failed_write_leaves_nothing_in_flight(
    migrated_engine, issuer, tmp_path, monkeypatch
):
    """The history write fails after the first outcomes (a database outage
    mid-round): the round ends with that error, the requests it still had in
    flight are dropped with their connections, and the next round starts
    clean and probes every key."""
    import keyd.actions.probe as probe_module

    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    _file_keys(migrated_engine, issuer, tmp_path / "keys", clock, 6)
    loader = make_key_loader([DirectorySourceConfig("dir", tmp_path / "keys")], None, UTC)
    record = probe_module.store.record_probe_results

    def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(probe_module, "FLUSH_EVERY", 1)
    monkeypatch.setattr(probe_module.store, "record_probe_results", broken)
    with IssuerClient(issuer.url, clock=clock) as client:
        services = _services(client, clock, loader, concurrency=4)
        with pytest.raises(RuntimeError, match="database gone"):
            probe_due(migrated_engine, services, clock.now())
        with client.multiplexer() as mux:
            assert mux is not None and mux.in_flight == 0 and not mux.active
        monkeypatch.setattr(probe_module.store, "record_probe_results", record)
        assert probe_due(migrated_engine, services, clock.now()).counts() == {"ok": 6}
