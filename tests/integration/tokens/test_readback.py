"""Token write-back read-back through real parts (OpenBao dev server, the
test authorization server): a refresh round reads its writes back with one
detailed-metadata listing per folder, a write by someone else in between
is caught as before, and without the listing each secret is read back."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from keyd.actions.tokens import TokenPolicy, TokenServices, refresh_tokens
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import DirectorySourceConfig, TokensConfig
from keyd.sources.keyfile import read_keyfile
from keyd.store import tokens as store
from tests.support.issuer import IssuerServer
from tests.support.keyrows import add_key
from tests.support.keys import make_key_file
from tests.support.openbao import OpenBao

pytestmark = [pytest.mark.openbao, pytest.mark.issuer]


class CountingSession(requests.Session):
    """Counts every HTTP request keyd's Vault client sends, by method and
    kind (``data``, ``metadata``, ``detailed-metadata``, ``auth``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()

    def request(
        self,
        method: str | bytes,
        url: str | bytes,  # type: ignore[override]
        *args: Any,
        **kwargs: Any,
    ) -> requests.Response:
        path = urlsplit(str(url)).path.split("/")
        kind = path[3] if len(path) > 3 and path[2] == "secret" else "/".join(path[2:4])
        self.calls[(str(method).upper(), kind)] += 1
        return super().request(method, url, *args, **kwargs)


@dataclass
class World:
    engine: Any
    bao: OpenBao
    issuer: IssuerServer
    clock: FakeClock
    services: TokenServices
    session: CountingSession
    keydir: Path
    prefix: str
    listing: bool  # keyd's token may use the detailed-metadata listing

    def add_key(self, user_id: str) -> Any:
        made = make_key_file(
            self.keydir,
            register_with=self.issuer,
            user_id=user_id,
            expires_at=self.clock.now() + timedelta(days=90),
        )
        add_key(self.engine, read_keyfile(made.path), ref=str(made.path), now=self.clock.now())
        return made

    def path(self, principal: str) -> str:
        return f"{self.prefix}/tokens/{principal}"

    def run(self) -> Any:
        return refresh_tokens(self.engine, self.services, self.clock.now())

    def refresh_round(self) -> Any:
        """Move to the earliest refresh time and run; counts only that round."""
        self.clock.set(
            min(s.next_refresh_at for s in store.all_sinks(self.engine) if s.next_refresh_at is not None)
            + timedelta(hours=1)
        )
        self.session.calls.clear()
        return self.run()


def _world(
    engine: Any, bao: OpenBao, issuer: IssuerServer, tmp_path: Path, prefix: str, token: str | None = None
) -> Iterator[World]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    client = IssuerClient(issuer.url, clock=clock, timeout=2.0)
    session = CountingSession()
    vault = VaultClient(bao.vault_config(token), clock, session=session)
    keydir = tmp_path / "keys"
    services = TokenServices(
        tokens=TokensConfig(mount="secret", path=f"{prefix}/tokens/{{principal}}"),
        client=client,
        signer=AssertionSigner(clock),
        vault=vault,
        clock=clock,
        load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, UTC),
        policy=TokenPolicy(concurrency=4),
        rng=random.Random(5),
    )
    try:
        yield World(engine, bao, issuer, clock, services, session, keydir, prefix, listing=token is None)
    finally:
        client.close()
        vault.close()
        session.close()


def _no_list_token(bao: OpenBao, prefix: str) -> str:
    """A token whose policy can write and read the tokens but not list them."""
    name = f"keyd-nolist-{prefix}"
    bao.write_policy(
        name,
        "\n".join(
            f'path "secret/{area}/{prefix}/*" {{ capabilities = ["create", "update", "read"] }}'
            for area in ("data", "metadata")
        ),
    )
    return bao.create_token([name])


@pytest.fixture
def world(migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    yield from _world(migrated_engine, openbao, issuer, tmp_path, kv_prefix)


@pytest.fixture
def nolist(migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    yield from _world(
        migrated_engine, openbao, issuer, tmp_path, kv_prefix, token=_no_list_token(openbao, kv_prefix)
    )


def _versions_match(world: World) -> None:
    for sink in store.all_sinks(world.engine):
        assert sink.state == "ok"
        assert sink.vault_version == world.bao.kv_metadata(sink.path)["current_version"]


def test_refresh_round_is_one_write_per_sink_and_one_listing_per_folder(world):
    for user in ("svc-a", "svc-b", "svc-c"):
        world.add_key(user)
    assert world.run().counts() == {"written": 3}
    report = world.refresh_round()
    assert report.counts() == {"written": 3}
    assert world.session.calls == Counter({("POST", "data"): 3, ("LIST", "detailed-metadata"): 1})
    assert all(s.vault_version == 2 for s in store.all_sinks(world.engine))
    _versions_match(world)


@pytest.fixture(params=[True, False], ids=["listing", "per-secret"])
def either(request, migrated_engine, openbao, issuer, tmp_path, kv_prefix) -> Iterator[World]:
    token = None if request.param else _no_list_token(openbao, kv_prefix)
    yield from _world(migrated_engine, openbao, issuer, tmp_path, kv_prefix, token=token)


class Interloper:
    """keyd's Vault client, except that someone else writes the secret right
    after each of keyd's writes, before keyd reads it back."""

    def __init__(self, real: Any, bao: OpenBao) -> None:
        self.real, self.bao = real, bao

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def write_cas(self, mount: str, path: str, *a: Any, **kw: Any) -> int:
        version = int(self.real.write_cas(mount, path, *a, **kw))
        self.bao.kv_put(path, {"access_token": "someone-else"})
        return version


def test_write_by_someone_else_before_read_back_is_a_conflict(either):
    world = either
    made = world.add_key("svc-a")
    world.run()
    world.services.vault = Interloper(world.services.vault, world.bao)  # type: ignore[assignment]
    [result] = world.refresh_round().results
    assert result.outcome == "conflict" and "someone else" in result.message
    secret = world.bao.client.secrets.kv.v2.read_secret_version(
        path=world.path(made.principal), mount_point="secret", raise_on_deleted_version=True
    )["data"]
    assert secret["data"] == {"access_token": "someone-else"}
    assert secret["metadata"]["version"] == 3
    [sink] = store.all_sinks(world.engine)
    assert sink.state == "conflict" and sink.vault_version == 1
    assert [e.kind for e in store.events(world.engine)] == ["token.conflict"]
    reads = world.session.calls[("GET", "data")]
    if world.listing:  # the listing caught it: the only data read judges what is there
        assert world.session.calls[("LIST", "detailed-metadata")] == 1 and reads == 1
    else:  # the per-secret read-back caught it, then the same judging read
        assert reads == 2


def test_without_listing_each_write_is_read_back(nolist):
    world = nolist
    for user in ("svc-a", "svc-b"):
        world.add_key(user)
    assert world.run().counts() == {"written": 2}
    assert world.refresh_round().counts() == {"written": 2}
    calls = world.session.calls
    assert calls[("POST", "data")] == 2 and calls[("GET", "data")] == 2
    assert calls[("LIST", "detailed-metadata")] <= 1  # denied once, then not asked again
    _versions_match(world)
    world.refresh_round()
    kv = Counter({k: n for k, n in world.session.calls.items() if not k[1].startswith("auth/")})
    assert kv == Counter({("POST", "data"): 2, ("GET", "data"): 2})  # (keyd's token renews)
    _versions_match(world)
