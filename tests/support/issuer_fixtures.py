"""Fixtures for tests that talk to the test issuer directly (import them
into a conftest): ``clock``, its clock pinned at ``T0`` so every boundary is
exact, and ``client``, a plain ``httpx.Client`` (not keyd's)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from keyd.clock import FakeClock
from tests.support.issuer import IssuerServer

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock(issuer: IssuerServer) -> FakeClock:
    fake = FakeClock(T0)
    issuer.now = fake.now
    return fake


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c
