"""Probe round against a MockTransport issuer and a SQLite inventory:
classification, schedule, backoff, forced probes, secrets never stored."""

from __future__ import annotations

import base64
import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from keyd.actions.probe import ProbeServices, probe_due
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.checks.probe import ProbePolicy, RateLimiter
from keyd.clients.issuer import IssuerClient
from keyd.clock import FakeClock
from keyd.config import DirectorySourceConfig
from keyd.errors import UsageError
from keyd.sources.keyfile import read_keyfile
from keyd.store.models import Probe
from tests.support.db import db_url, migrated_engine  # noqa: F401
from tests.support.keyfiles import PEM_MARKER, rsa_pem, write_keyfile
from tests.support.keyrows import add_key, dump_all, key_row, rows

ISSUER = "http://127.0.0.1:9"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Handler = Callable[[httpx.Request], httpx.Response]


def _kid(request: httpx.Request) -> str:
    form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
    jwt = form.get("assertion") or form.get("client_assertion") or ""
    header = jwt.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def ok_token(_: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": "zat_secret_token", "token_type": "Bearer", "expires_in": 3600}
    )


class FakeIssuer:
    """Discovery plus token/introspection answers scripted per key id."""

    def __init__(self) -> None:
        self.script: dict[str, list[Handler]] = {}
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "token_endpoint": ISSUER + "/oauth/v2/token",
                    "introspection_endpoint": ISSUER + "/oauth/v2/introspect",
                    "jwks_uri": ISSUER + "/oauth/v2/keys",
                },
            )
        kid = _kid(request)
        self.calls.append(f"{request.url.path}:{kid}")
        steps = self.script.get(kid) or []
        handler = steps.pop(0) if len(steps) > 1 else (steps[0] if steps else None)
        if handler is not None:
            return handler(request)
        if request.url.path.endswith("introspect"):
            return httpx.Response(200, json={"active": False})
        return ok_token(request)


def status(code: int, body: object) -> Handler:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(code, content=body, headers={"content-type": "text/html"})
        return httpx.Response(code, json=body)

    return handler


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def fake() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def engine(migrated_engine: object) -> object:  # noqa: F811
    """Every store-touching test runs on SQLite and PostgreSQL."""
    return migrated_engine


@pytest.fixture
def services(clock: FakeClock, fake: FakeIssuer, tmp_path: Path) -> Iterator[ProbeServices]:
    client = IssuerClient(ISSUER, clock=clock, transport=httpx.MockTransport(fake))
    source = DirectorySourceConfig(name="dir", path=tmp_path / "keys")
    yield ProbeServices(
        client=client,
        signer=AssertionSigner(clock),
        clock=clock,
        load_key=make_key_loader([source], None, UTC),
        policy=ProbePolicy(concurrency=4, rate_limit=0),
        rng=random.Random(7),
    )
    client.close()


def add(engine: object, tmp_path: Path, key_id: str, **kw: object) -> Path:
    kind = str(kw.pop("kind", "serviceaccount"))
    expires = kw.pop("expires", "2027-01-01T00:00:00Z")
    path = write_keyfile(
        tmp_path / "keys" / f"{key_id}.json",
        key_id,
        f"user-{key_id}",
        pem=rsa_pem(0),
        kind=kind,
        expires=expires,
    )  # type: ignore[arg-type]
    add_key(engine, read_keyfile(path), ref=str(path), now=T0, **kw)  # type: ignore[arg-type]
    return path


def test_ok_schedules_next_probe_one_interval_later_with_jitter(engine, services, tmp_path):
    add(engine, tmp_path, "k1")
    report = probe_due(engine, services, T0)
    assert report.counts() == {"ok": 1}
    key = key_row(engine, "k1")
    assert key.last_probe_outcome == "ok" and key.last_ok_at is not None
    assert key.probe_failures == 0 and key.status == "active"
    interval = timedelta(hours=6)
    assert T0 + interval * 0.9 <= key.next_probe_at <= T0 + interval
    [probe] = rows(engine, Probe)
    assert probe.outcome == "ok" and probe.attempts == 1 and probe.latency_ms is not None
    # not due again until then
    assert probe_due(engine, services, T0 + timedelta(hours=1)).results == []


def test_many_keys_first_probed_together_drift_apart(engine, services, tmp_path):
    for i in range(20):
        add(engine, tmp_path, f"k{i}")
    probe_due(engine, services, T0)
    due = {key_row(engine, f"k{i}").next_probe_at for i in range(20)}
    assert len(due) == 20  # jitter spreads them


@pytest.mark.parametrize(
    "code,body,error_code",
    [
        (400, {"error": "invalid_grant", "error_description": "invalid assertion"}, "invalid_grant"),
        (500, {"error": "server_error", "error_description": "Errors.Internal"}, "server_error"),
    ],
)
def test_oauth_error_body_is_a_final_rejection(engine, services, fake, tmp_path, code, body, error_code):
    add(engine, tmp_path, "k1")
    fake.script["k1"] = [status(code, body)]
    report = probe_due(engine, services, T0)
    [result] = report.results
    assert result.outcome == "rejected" and result.diagnosis == "revoked_or_unknown"
    assert result.attempts == 1  # a rejection is not retried
    key = key_row(engine, "k1")
    assert key.status == "rejected" and key.next_probe_at is None and key.probe_failures == 1
    [probe] = rows(engine, Probe)
    assert (probe.http_status, probe.error_code) == (code, error_code)
    # final: later rounds leave it alone ...
    assert probe_due(engine, services, T0 + timedelta(days=2)).results == []
    # ... until an operator forces a probe, which ignores it
    fake.script["k1"] = []
    forced = probe_due(engine, services, T0 + timedelta(days=2), force_key_id="k1")
    assert forced.counts() == {"ok": 1}
    assert key_row(engine, "k1").status == "active"


def test_expired_key_rejection_is_diagnosed_locally(engine, services, fake, tmp_path):
    add(engine, tmp_path, "k1", expires="2026-02-01T00:00:00Z")
    fake.script["k1"] = [status(400, {"error": "invalid_grant"})]
    [result] = probe_due(engine, services, T0).results
    assert result.diagnosis == "expired"


def test_transient_failures_retry_fast_inside_the_round(engine, services, fake, clock, tmp_path):
    add(engine, tmp_path, "k1")
    fake.script["k1"] = [status(503, {}), status(502, {}), ok_token]
    [result] = probe_due(engine, services, T0).results
    assert result.outcome == "ok" and result.attempts == 3
    assert len(clock.slept) == 2 and all(0 <= s <= 10 for s in clock.slept)


def test_unavailable_backs_off_without_advancing_as_success(engine, services, fake, tmp_path):
    add(engine, tmp_path, "k1")
    fake.script["k1"] = [status(503, {})]
    seen = []
    services.on_round = lambda session, ok, at: seen.append(ok)
    [result] = probe_due(engine, services, T0).results
    assert result.outcome == "unavailable" and result.attempts == 3
    key = key_row(engine, "k1")
    assert key.status == "active" and key.probe_failures == 1 and key.last_ok_at is None
    assert key.next_probe_at < T0 + timedelta(hours=1)
    assert seen == [False]
    # next rounds: failures climb, the key is never scheduled like a success
    now = key.next_probe_at
    probe_due(engine, services, now)
    assert key_row(engine, "k1").probe_failures == 2
    assert len(rows(engine, Probe)) == 2


def test_bad_response_html(engine, services, fake, tmp_path):
    add(engine, tmp_path, "k1")
    fake.script["k1"] = [status(200, b"<html>login</html>")]
    [result] = probe_due(engine, services, T0).results
    assert result.outcome == "bad_response"
    assert key_row(engine, "k1").status == "active"


def test_application_key_is_proved_at_introspection(engine, services, fake, tmp_path):
    add(engine, tmp_path, "app1", kind="application")
    seen = []
    services.on_round = lambda session, ok, at: seen.append(ok)
    [result] = probe_due(engine, services, T0).results
    assert result.outcome == "ok"
    assert fake.calls == ["/oauth/v2/introspect:app1"]
    assert seen == [True]


def test_unreadable_key_file_backs_off_without_history(engine, services, fake, tmp_path):
    path = add(engine, tmp_path, "k1")
    path.unlink()
    seen = []
    services.on_round = lambda session, ok, at: seen.append(ok)
    [result] = probe_due(engine, services, T0).results
    assert result.outcome == "unreadable" and "no such file" in (result.message or "")
    assert rows(engine, Probe) == [] and fake.calls == []
    key = key_row(engine, "k1")
    assert key.next_probe_at is not None and key.next_probe_at > T0
    assert key.last_error and seen == []  # the issuer was not contacted


def test_unknown_forced_key_is_a_usage_error(engine, services):
    with pytest.raises(UsageError, match="no key with id"):
        probe_due(engine, services, T0, force_key_id="nope")


def test_rate_limiter_spaces_requests(clock):
    limiter = RateLimiter(10.0, clock)
    for _ in range(5):
        limiter.acquire()
    assert sum(clock.slept) == pytest.approx(0.4)


def test_no_secret_reaches_logs_or_db(engine, services, fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    add(engine, tmp_path, "k1")
    add(engine, tmp_path, "k2")
    add(engine, tmp_path, "app1", kind="application")
    fake.script["k2"] = [
        status(400, {"error": "invalid_grant", "error_description": "bad eyJhbGciOi.eyJzdWIiOiJ4.sig"})
    ]
    probe_due(engine, services, T0)
    text = caplog.text + dump_all(engine)
    for marker in ("zat_", "eyJ", PEM_MARKER):
        assert marker not in text
