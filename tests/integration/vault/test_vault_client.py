"""VaultClient against a real OpenBao: KV v2 operations and error mapping."""

from __future__ import annotations

import logging

import pytest

from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.errors import VaultAuthFailed, VaultConflict, VaultDenied, VaultUnavailable
from tests.support.openbao import OpenBao, kv_policy

pytestmark = pytest.mark.openbao


def test_list_recursive_returns_paths_relative_to_the_mount(
    openbao: OpenBao, root_client: VaultClient, kv_prefix: str
) -> None:
    for path in ("a", "team/b", "team/deep/c"):
        openbao.kv_put(f"{kv_prefix}/{path}", {"x": "1"})

    assert root_client.list_recursive("secret", kv_prefix) == [
        f"{kv_prefix}/a",
        f"{kv_prefix}/team/b",
        f"{kv_prefix}/team/deep/c",
    ]
    assert root_client.list_recursive("secret", f"/{kv_prefix}/team/") == [
        f"{kv_prefix}/team/b",
        f"{kv_prefix}/team/deep/c",
    ]


def test_missing_prefix_lists_nothing(root_client: VaultClient, kv_prefix: str) -> None:
    assert root_client.list_recursive("secret", f"{kv_prefix}/nothing/here") == []
    assert root_client.list_versions("secret", f"{kv_prefix}/nothing/here") == {}


def test_list_versions_gives_current_versions(
    openbao: OpenBao, root_client: VaultClient, kv_prefix: str
) -> None:
    openbao.kv_put(f"{kv_prefix}/a", {"x": "1"})
    openbao.kv_put(f"{kv_prefix}/a", {"x": "2"})
    openbao.kv_put(f"{kv_prefix}/sub/b", {"x": "1"})

    found = root_client.list_versions("secret", kv_prefix)

    assert set(found) == {f"{kv_prefix}/a", f"{kv_prefix}/sub/b"}
    meta = found[f"{kv_prefix}/a"]
    assert meta is not None and meta.current_version == 2 and not meta.deleted


def test_read_and_metadata(openbao: OpenBao, root_client: VaultClient, kv_prefix: str) -> None:
    openbao.kv_put(f"{kv_prefix}/s", {"x": "1"})
    openbao.kv_put(f"{kv_prefix}/s", {"x": "2", "n": 3})

    secret = root_client.read("secret", f"{kv_prefix}/s")
    meta = root_client.read_metadata("secret", f"{kv_prefix}/s")

    assert secret is not None
    assert secret.data == {"x": "2", "n": 3} and secret.version == 2
    assert "x" not in repr(secret)  # data stays out of repr
    assert meta is not None and meta.current_version == 2 and meta.custom_metadata == {}


def test_absent_and_deleted_secrets_read_as_none(
    openbao: OpenBao, root_client: VaultClient, clock: FakeClock, kv_prefix: str
) -> None:
    assert root_client.read("secret", f"{kv_prefix}/never") is None
    assert root_client.read_metadata("secret", f"{kv_prefix}/never") is None

    openbao.kv_put(f"{kv_prefix}/gone", {"x": "1"})
    openbao.kv_delete(f"{kv_prefix}/gone")

    assert root_client.read("secret", f"{kv_prefix}/gone") is None
    pending = root_client.read_metadata("secret", f"{kv_prefix}/gone")
    assert pending is not None  # deleted after the fake clock's "now": not yet trusted
    assert pending.deleted or pending.deletion_pending
    clock.advance(5)
    meta = root_client.read_metadata("secret", f"{kv_prefix}/gone")
    assert meta is not None and meta.deleted
    listed = root_client.list_versions("secret", kv_prefix)[f"{kv_prefix}/gone"]
    assert listed is not None and listed.deleted


def test_write_cas_create_update_and_conflict(
    openbao: OpenBao, root_client: VaultClient, kv_prefix: str
) -> None:
    path = f"{kv_prefix}/token"

    assert root_client.write_cas("secret", path, {"v": "1"}, cas=0) == 1
    with pytest.raises(VaultConflict) as exists:
        root_client.write_cas("secret", path, {"v": "x"}, cas=0)
    assert root_client.write_cas("secret", path, {"v": "2"}, cas=1) == 2
    with pytest.raises(VaultConflict) as stale:
        root_client.write_cas("secret", path, {"v": "x"}, cas=1)

    for exc in (exists.value, stale.value):
        assert exc.path == f"secret/{path}" and exc.retryable
        assert "check-and-set" in exc.message and f"secret/{path}" in exc.message
    secret = root_client.read("secret", path)
    assert secret is not None and secret.data == {"v": "2"} and secret.version == 2


def test_custom_metadata_round_trip_keeps_other_settings(
    openbao: OpenBao, root_client: VaultClient, kv_prefix: str
) -> None:
    path = f"{kv_prefix}/managed"
    root_client.write_cas(
        "secret", path, {"v": "1"}, cas=0, custom_metadata={"managed-by": "keyd", "key-id": "123"}
    )
    openbao.client.secrets.kv.v2.update_metadata(
        path=path, max_versions=7, mount_point="secret", delete_version_after="0s"
    )

    root_client.write_metadata("secret", path, {"managed-by": "keyd", "key-id": "456"})

    meta = root_client.read_metadata("secret", path)
    secret = root_client.read("secret", path)
    assert meta is not None and meta.custom_metadata == {"managed-by": "keyd", "key-id": "456"}
    assert secret is not None and secret.custom_metadata == meta.custom_metadata
    assert openbao.kv_metadata(path)["max_versions"] == 7


def test_create_never_marks_someone_else_s_secret(
    openbao: OpenBao, root_client: VaultClient, kv_prefix: str
) -> None:
    path = f"{kv_prefix}/theirs"
    openbao.kv_put(path, {"owner": "them"})
    root_client.write_metadata("secret", path, {"owner": "team-x"})

    with pytest.raises(VaultConflict):
        root_client.write_cas("secret", path, {"v": "1"}, cas=0, custom_metadata={"managed-by": "keyd"})

    meta = root_client.read_metadata("secret", path)
    assert meta is not None and meta.custom_metadata == {"owner": "team-x"}
    assert meta.current_version == 1


def test_create_after_a_crash_between_metadata_and_data(root_client: VaultClient, kv_prefix: str) -> None:
    path = f"{kv_prefix}/half"
    root_client.write_metadata("secret", path, {"managed-by": "keyd"})  # the crash left this

    assert (
        root_client.write_cas("secret", path, {"v": "1"}, cas=0, custom_metadata={"managed-by": "keyd"}) == 1
    )
    secret = root_client.read("secret", path)
    assert secret is not None and secret.custom_metadata == {"managed-by": "keyd"}


def test_denied_path_is_vault_denied_naming_it(
    openbao: OpenBao, clock: FakeClock, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    openbao.kv_put(f"{kv_prefix}/ok", {"x": "1"})
    openbao.kv_put(f"{kv_prefix}/secret-one", {"x": "1"})
    openbao.write_policy(f"p-{kv_prefix}", kv_policy(kv_prefix, deny=("secret-one",)))
    token = openbao.create_token([f"p-{kv_prefix}"])

    with VaultClient(openbao.vault_config(token), clock) as client:
        assert client.read("secret", f"{kv_prefix}/ok") is not None
        with pytest.raises(VaultDenied) as denied:
            client.read("secret", f"{kv_prefix}/secret-one")
        with pytest.raises(VaultDenied):
            client.write_cas("secret", f"{kv_prefix}/ok", {"x": "2"}, cas=1)

    assert not isinstance(denied.value, VaultAuthFailed)
    assert denied.value.path == f"secret/{kv_prefix}/secret-one"
    assert f"secret/{kv_prefix}/secret-one" in str(denied.value)
    assert "permission denied" in str(denied.value)
    assert token not in caplog.text and token not in str(denied.value)


def test_sealed_server_is_unavailable(openbao_fresh: OpenBao, clock: FakeClock) -> None:
    openbao_fresh.kv_put("keys/a", {"x": "1"})
    with VaultClient(openbao_fresh.vault_config(), clock) as client:
        assert client.list_recursive("secret", "keys") == ["keys/a"]
        openbao_fresh.seal()

        health = client.health()
        with pytest.raises(VaultUnavailable) as sealed:
            client.read("secret", "keys/a")
        with pytest.raises(VaultUnavailable):
            client.list_recursive("secret", "keys")

        openbao_fresh.unseal()
        assert client.health().sealed is False
        assert client.read("secret", "keys/a") is not None

    assert health.sealed and health.initialized and health.version
    assert sealed.value.retryable
    assert "503" in str(sealed.value) and openbao_fresh.root_token not in str(sealed.value)


def test_health_of_an_unsealed_server(root_client: VaultClient) -> None:
    health = root_client.health()
    assert health.initialized and not health.sealed and not health.standby
    assert health.version.startswith("2.")


def test_tls_is_verified_against_the_configured_ca(openbao_tls: OpenBao, clock: FakeClock) -> None:
    assert openbao_tls.ca_cert is not None and openbao_tls.addr.startswith("https://")
    openbao_tls.kv_put("keys/a", {"x": "1"})

    with VaultClient(openbao_tls.vault_config(), clock) as untrusting:
        with pytest.raises(VaultUnavailable) as refused:
            untrusting.read("secret", "keys/a")
    with VaultClient(openbao_tls.vault_config(ca_bundle=openbao_tls.ca_cert), clock) as trusting:
        assert trusting.read("secret", "keys/a") is not None

    assert "TLS verification failed" in str(refused.value)
    assert "vault.ca_bundle" in str(refused.value)
