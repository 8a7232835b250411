"""Alert tests through the real parts: a migrated SQLite/PostgreSQL database,
a FakeClock and the aiosmtpd server. ``AlertWorld.step()`` is one daemon
tick as a fresh process would run it: new engine, evaluate in one
transaction, drain the outbox, dispose (so every step is a restart)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from keyd.actions.alerts import evaluate_alerts
from keyd.actions.deliver import DrainReport, drain_outbox
from keyd.clients.smtp import SmtpClient
from keyd.clock import FakeClock
from keyd.config import AlertsConfig, Config, EmailConfig, IssuerConfig
from keyd.report.mail import render_message
from keyd.store.alerts import transaction
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from keyd.store.models import ALERT_NOW, Alert, Delivery, Key, KeyLocation
from keyd.timeutil import get_zone
from tests.support.db import db_url  # noqa: F401
from tests.support.smtp import Received, SmtpServer, smtp_server  # noqa: F401

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# Picked in the console as "expires 2027-01-01" in Zurich: dead from 23:00Z the day before.
EXPIRY = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)


def make_config(server: SmtpServer, **alerts: Any) -> Config:
    email = EmailConfig(
        host=server.host,
        port=server.port,
        from_addr="keyd@example.org",
        to=("ops@example.org",),
        security="none",
        timeout=timedelta(seconds=5),
    )
    return Config(
        timezone_name="Europe/Zurich",
        timezone=get_zone("Europe/Zurich"),
        issuer=IssuerConfig(url="https://issuer.example"),
        alerts=AlertsConfig(email=email, **alerts),
    )


@dataclass
class AlertWorld:
    url: str
    server: SmtpServer
    config: Config
    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    reports: list[DrainReport] = field(default_factory=list)

    def engine_do(self, fn: Any) -> Any:
        engine = make_engine(self.url)
        try:
            with transaction(engine) as session:
                return fn(session)
        finally:
            engine.dispose()

    def add_key(
        self,
        key_id: str,
        principal: str = "292834923480001",
        *,
        expires_at: datetime | None = EXPIRY,
        ref: str | None = None,
        status: str = "active",
        kind: str = "serviceaccount",
        **extra: Any,
    ) -> int:
        now = self.clock.now()

        def add(session: Session) -> int:
            key = Key(
                key_id=key_id,
                kind=kind,
                principal=principal,
                algorithm="RS256",
                key_size=2048,
                fingerprint=hashlib.sha256(key_id.encode()).hexdigest(),
                expires_at=expires_at,
                content_hash="0" * 64,
                status=status,
                first_seen=now,
                last_seen=now,
                updated_at=now,
                **extra,
            )
            session.add(key)
            session.flush()
            session.add(
                KeyLocation(
                    source="directory:/etc/keyd/keys",
                    ref=ref or f"/etc/keyd/keys/{key_id}.json",
                    key_pk=key.id,
                    status="present",
                    first_seen=now,
                    last_seen=now,
                )
            )
            return key.id

        return int(self.engine_do(add))

    def update_key(self, key_id: str, **values: Any) -> None:
        """A Core write, as the probe stage does: it re-arms the alert
        evaluation itself (``keys.next_alert_at``), as every writer must."""
        self.engine_do(
            lambda s: s.execute(
                update(Key).where(Key.key_id == key_id).values(next_alert_at=ALERT_NOW, **values)
            )
        )

    def evaluate(self) -> list[str]:
        return list(
            self.engine_do(lambda s: [a.threshold for a in evaluate_alerts(s, self.config, self.clock.now())])
        )

    def drain(self, config: Config | None = None) -> DrainReport:
        cfg = config or self.config
        email = cfg.alerts.email
        assert email is not None
        engine = make_engine(self.url)
        try:
            report = drain_outbox(
                engine, cfg, self.clock, lambda: SmtpClient(email), None, render=render_message
            )
        finally:
            engine.dispose()
        self.reports.append(report)
        return report

    def step(self) -> None:
        self.evaluate()
        self.drain()

    def run(self, until: datetime, every: timedelta) -> None:
        while self.clock.now() < until:
            self.step()
            self.clock.advance(every)

    def subjects(self) -> list[str]:
        return [str(r.message["Subject"]) for r in self.server.inbox()]

    def inbox(self) -> list[Received]:
        return self.server.inbox()

    def alerts(self) -> list[Alert]:
        return list(self.engine_do(lambda s: list(s.scalars(select(Alert).order_by(Alert.id)))))

    def deliveries(self) -> list[Delivery]:
        return list(self.engine_do(lambda s: list(s.scalars(select(Delivery).order_by(Delivery.id)))))

    def with_alerts(self, **changes: Any) -> None:
        self.config = replace(self.config, alerts=replace(self.config.alerts, **changes))


@pytest.fixture
def world(db_url: str, smtp_server: SmtpServer) -> Iterator[AlertWorld]:  # noqa: F811
    upgrade(db_url)
    yield AlertWorld(db_url, smtp_server, make_config(smtp_server))
