"""keyd's own Vault token against a real OpenBao: token and AppRole auth,
renewal before expiry, re-login when renewal is refused, clear failures.

Renewal is driven by the injected clock (keyd decides *when* from its
clock; OpenBao decides *whether*), so no test sleeps."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock, SystemClock
from keyd.errors import VaultAuthFailed, VaultDenied
from keyd.redact import Secret
from tests.support.openbao import OpenBao, kv_policy

pytestmark = pytest.mark.openbao


@pytest.fixture
def reader(openbao: OpenBao, kv_prefix: str) -> str:
    """A policy reading everything under the test's prefix; one secret in it."""
    openbao.kv_put(f"{kv_prefix}/k", {"x": "1"})
    name = f"reader-{kv_prefix}"
    openbao.write_policy(name, kv_policy(kv_prefix))
    return name


def test_token_auth_reads_with_the_given_token(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str
) -> None:
    token = openbao.create_token([reader], ttl="1h")
    with VaultClient(openbao.vault_config(token), clock) as client:
        assert client.list_recursive("secret", kv_prefix) == [f"{kv_prefix}/k"]


def test_token_is_renewed_when_a_third_of_its_ttl_is_left(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = openbao.create_token([reader], ttl="90s")
    with VaultClient(openbao.vault_config(token), clock) as client:
        client.ensure_token()
        clock.advance(30)  # 60 s of 90 left: more than a third
        client.ensure_token()
        assert not openbao.lookup_token(token).get("last_renewal_time")

        clock.advance(35)  # 25 s left: renew
        client.ensure_token()
        renewed = openbao.lookup_token(token)
        assert renewed.get("last_renewal_time")
        clock.advance(30)  # past the original expiry by keyd's clock: still fine
        assert client.read("secret", f"{kv_prefix}/k") is not None

    assert token not in caplog.text


def test_unrenewable_token_warns_then_fails_clearly_once_expired(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = openbao.create_token([reader], ttl="90s", renewable=False)
    with VaultClient(openbao.vault_config(token), clock) as client:
        client.ensure_token()
        clock.advance(70)
        client.ensure_token()
        client.ensure_token()
        warnings = [r for r in caplog.records if "cannot be renewed" in r.getMessage()]
        assert len(warnings) == 1  # once, not on every call

        clock.advance(30)  # dead by keyd's clock, but OpenBao decides: still alive
        assert client.read("secret", f"{kv_prefix}/k") is not None

        openbao.revoke_token(token)  # now really dead
        clock.advance(100)
        with pytest.raises(VaultAuthFailed) as failed:
            client.ensure_token()
    assert "expired" in str(failed.value) and "VAULT_TOKEN" in str(failed.value)
    assert len([r for r in caplog.records if "cannot be renewed" in r.getMessage()]) == 1


def test_revoked_token_with_token_auth_fails_with_a_clear_message(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str
) -> None:
    token = openbao.create_token([reader])
    with VaultClient(openbao.vault_config(token), clock) as client:
        client.ensure_token()
        openbao.revoke_token(token)
        with pytest.raises(VaultAuthFailed) as failed:
            client.read("secret", f"{kv_prefix}/k")
    assert isinstance(failed.value, VaultDenied)
    assert "token" in str(failed.value) and token not in str(failed.value)


def test_wrong_token_is_refused_up_front(openbao: OpenBao, clock: FakeClock) -> None:
    with VaultClient(openbao.vault_config("s.not-a-token"), clock) as client:
        with pytest.raises(VaultAuthFailed) as failed:
            client.ensure_token()
    assert "s.not-a-token" not in str(failed.value)


def approle_client(
    openbao: OpenBao, clock: FakeClock, policy: str, *, token_ttl: str = "1h", secret_id: str | None = None
) -> VaultClient:
    role_id, real_secret_id = openbao.create_approle(f"keyd-{policy}", [policy], token_ttl)
    cfg = replace(
        openbao.vault_config(),
        auth="approle",
        token=None,
        role_id=Secret(role_id),
        secret_id=Secret(secret_id or real_secret_id),
    )
    return VaultClient(cfg, clock)


def test_approle_login_reads(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with approle_client(openbao, clock, reader) as client:
        secret = client.read("secret", f"{kv_prefix}/k")
    assert secret is not None and secret.data == {"x": "1"}
    assert "logged in with AppRole" in caplog.text


def test_approle_logs_in_again_when_its_token_is_revoked(
    openbao: OpenBao, clock: FakeClock, reader: str, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with approle_client(openbao, clock, reader) as client:
        client.ensure_token()
        assert openbao.revoke_tokens_with_policy(reader) == 1

        # an operation meets 403, lookup-self shows the token dead: log in, retry
        assert client.read("secret", f"{kv_prefix}/k") is not None
        assert "logging in again" in caplog.text

        # renewal due by the clock but refused (revoked): log in instead
        assert openbao.revoke_tokens_with_policy(reader) == 1
        clock.advance(50 * 60)
        client.ensure_token()
        assert client.read("secret", f"{kv_prefix}/k") is not None
    assert "renewal of keyd's token was refused" in caplog.text


def test_approle_with_a_bad_secret_id_fails_clearly(openbao: OpenBao, clock: FakeClock, reader: str) -> None:
    with approle_client(openbao, clock, reader, secret_id="wrong-secret-id") as client:
        with pytest.raises(VaultAuthFailed) as failed:
            client.ensure_token()
    assert "AppRole" in str(failed.value) and "wrong-secret-id" not in str(failed.value)


@pytest.mark.slow
def test_real_short_ttl_token_is_really_renewed(openbao: OpenBao, reader: str, kv_prefix: str) -> None:
    """The one real-time check (one 2 s sleep): with the system clock, a 3 s
    token is renewed before it dies and OpenBao grants it a fresh TTL."""
    clock = SystemClock()
    token = openbao.create_token([reader], ttl="3s")
    with VaultClient(openbao.vault_config(token), clock) as client:
        client.ensure_token()
        clock.sleep(2.0)  # 1 s left < half the TTL: due
        client.ensure_token()
        info = openbao.lookup_token(token)
        assert info.get("last_renewal_time") and info["ttl"] >= 2
        assert client.read("secret", f"{kv_prefix}/k") is not None
