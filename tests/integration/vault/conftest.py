"""Vault integration tests run against a real OpenBao dev server
(tests/support/openbao.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from tests.support.openbao import (  # noqa: F401
    OpenBao,
    kv_prefix,
    openbao,
    openbao_fresh,
    openbao_tls,
)


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real time: OpenBao stamps deletions with its own clock."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def root_client(openbao: OpenBao, clock: FakeClock) -> Iterator[VaultClient]:  # noqa: F811
    with VaultClient(openbao.vault_config(), clock) as client:
        yield client
