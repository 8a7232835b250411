"""A zitadel source's world for tests: the test issuer with its key API,
a directory of key files, a database, keyd's own API user, and a scan
through the real wiring (``zitadel_key_apis``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from keyd.clients.issuer import IssuerClient
from keyd.clock import FakeClock
from keyd.config import Config, load_config
from keyd.inventory.scan import ScanReport, scan_all
from keyd.runtime.wiring import zitadel_key_apis
from keyd.store.inventory import inventory_snapshot
from keyd.store.keys import KeyRecord
from tests.support.issuer import IssuerServer
from tests.support.keys import MadeKey, make_key_file
from tests.support.zitadel_api import DEFAULT_ORG, make_api_user

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class World:
    issuer: IssuerServer
    clock: FakeClock
    engine: Engine
    keys: Path
    tmp: Path
    api_user: MadeKey

    def config(
        self,
        source: str = f'organizations = ["{DEFAULT_ORG}"]',
        credential: Path | None = None,
        extra: str = "",
    ) -> Config:
        toml = self.tmp / "keyd.toml"
        toml.write_text(f"""
[issuer]
url = "{self.issuer.url}"
[rotation]
credential = "{credential or self.api_user.path}"
enabled = false
[[sources]]
type = "directory"
path = "{self.keys}"
name = "files"
[[sources]]
type = "zitadel"
name = "zitadel"
{source}
{extra}
[database]
url = "{self.engine.url.render_as_string(hide_password=False)}"
""")
        return load_config(toml, {})

    def scan(self, config: Config | None = None, page_size: int | None = None) -> ScanReport:
        config = config or self.config()
        with IssuerClient(self.issuer.url, clock=self.clock) as issuer:
            apis = zitadel_key_apis(config, issuer, self.clock)
            for api in apis.values():
                api.page_size = page_size or api.page_size
            try:
                return scan_all(config, self.engine, self.clock, key_apis=apis)
            finally:
                for api in apis.values():
                    api.close()

    def rows(self) -> dict[str, KeyRecord]:
        return {k.key_id: k for k in inventory_snapshot(self.engine).keys}

    def user(self, org: str = DEFAULT_ORG) -> str:
        user = make_key_file(None, register_with=self.issuer).principal  # one unheld key
        self.issuer.key_api.add_user(user, org)
        return user

    def held(
        self,
        user: str,
        *,
        expires_at: datetime | None = T0 + timedelta(days=90),
        listed_expiry: datetime | None = None,
    ) -> MadeKey:
        """A key file in the directory whose key ZITADEL also lists."""
        made = make_key_file(self.keys, user_id=user, expires_at=expires_at)
        self.issuer.add_key(user, made.key_id, made.private_key, listed_expiry or expires_at)
        return made


@pytest.fixture
def zitadel_world(issuer: IssuerServer, migrated_engine: Engine, tmp_path: Path) -> Iterator[World]:
    clock = FakeClock(T0)
    issuer.now = clock.now
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    yield World(issuer, clock, migrated_engine, keys, tmp_path, make_api_user(issuer, tmp_path))
