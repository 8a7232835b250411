"""VaultSource against a real OpenBao: key layouts, odd data, partial
policies, whole-source failures and incremental scans."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from keyd.clients.vault import VaultClient, VaultSecret
from keyd.clock import FakeClock
from keyd.config import VaultSourceConfig
from keyd.errors import VaultAuthFailed, VaultDenied, VaultUnavailable
from keyd.sources.base import Candidate, ScanResult
from keyd.sources.vault import VaultSource
from tests.support.keyfiles import PEM_MARKER, keyfile_doc
from tests.support.openbao import OpenBao, kv_policy

pytestmark = pytest.mark.openbao


class CountingClient(VaultClient):
    """A real client that counts data and metadata reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []
        self.metadata_reads: list[str] = []

    def read(self, mount: str, path: str) -> VaultSecret | None:
        self.reads.append(path)
        return super().read(mount, path)

    def read_metadata(self, mount: str, path: str) -> Any:
        self.metadata_reads.append(path)
        return super().read_metadata(mount, path)


def source_cfg(prefix: str, **kw: Any) -> VaultSourceConfig:
    return VaultSourceConfig(name=f"vault:secret/{prefix}", mount="secret", prefix=prefix, **kw)


def by_path(result: ScanResult, prefix: str) -> dict[str, Candidate]:
    return {c.ref.removeprefix(f"secret/{prefix}/"): c for c in result.candidates}


@pytest.fixture
def client(openbao: OpenBao, clock: FakeClock) -> Iterator[CountingClient]:
    with CountingClient(openbao.vault_config(), clock) as c:
        yield c


def test_both_layouts_and_nested_folders(openbao: OpenBao, client: CountingClient, kv_prefix: str) -> None:
    openbao.kv_put(f"{kv_prefix}/fields", keyfile_doc("k-fields", "u1"))
    openbao.kv_put(f"{kv_prefix}/json", {"keyfile": json.dumps(keyfile_doc("k-json", "u2"))})
    openbao.kv_put(f"{kv_prefix}/object", {"keyfile": keyfile_doc("k-obj", "u3")})
    openbao.kv_put(
        f"{kv_prefix}/team/deep/app",
        {"zitadel": json.dumps(keyfile_doc("k-app", "client-4", kind="application"))},
    )
    source = VaultSource(source_cfg(kv_prefix), client)
    custom = VaultSource(source_cfg(kv_prefix, field="zitadel"), client)

    found = by_path(source.scan({}), kv_prefix)
    app = by_path(custom.scan({}), kv_prefix)["team/deep/app"]

    assert {name: c.keyfile.key_id for name, c in found.items() if c.keyfile} == {
        "fields": "k-fields",
        "json": "k-json",
        "object": "k-obj",
    }
    assert found["fields"].version == 1 and found["fields"].ref == f"secret/{kv_prefix}/fields"
    assert found["fields"].keyfile is not None
    assert found["fields"].keyfile.source == f"vault:secret/{kv_prefix}/fields"
    assert found["fields"].keyfile.principal == "u1"
    assert found["team/deep/app"].error is not None  # wrong field for this source
    assert app.keyfile is not None and app.keyfile.kind == "application"


ODD: dict[str, tuple[dict[str, Any], str]] = {
    "number": ({"keyfile": 42}, "not a number"),
    "list": ({"keyfile": [1, 2, 3]}, "not a list"),
    "nothing": ({"foo": "bar", "baz": 1}, "holds no key file"),
    "not-json": ({"keyfile": "{not json"}, "not valid JSON"),
    "binary": ({"keyfile": base64.b64encode(os.urandom(64)).decode()}, "not valid JSON"),
    "nested": ({"keyfile": {"a": {"b": {"c": [1, {"d": None}]}}}}, "missing field 'type'"),
    "bad-pem": (
        {"type": "serviceaccount", "keyId": "k", "userId": "u", "key": "garbage"},
        "not a PEM private key",
    ),
    "json-list": ({"keyfile": "[1, 2]"}, "expected a JSON object"),
    "huge": ({"keyfile": "x" * (1 << 20) + "y"}, "limit"),
    "weird-types": ({"type": ["serviceaccount"], "keyId": 1}, "must be a string"),
}


def test_odd_data_is_invalid_with_a_clear_message_never_a_crash(
    openbao: OpenBao, client: CountingClient, kv_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, (data, _) in ODD.items():
        openbao.kv_put(f"{kv_prefix}/{name}", data)
    openbao.kv_put(f"{kv_prefix}/good", keyfile_doc("k-good"))

    found = by_path(VaultSource(source_cfg(kv_prefix), client).scan({}), kv_prefix)

    assert found["good"].keyfile is not None
    for name, (_, problem) in ODD.items():
        error = found[name].error
        assert error is not None, name
        assert error.source == f"vault:secret/{kv_prefix}/{name}"
        assert problem in error.problem, (name, error.problem)
        assert found[name].version == 1 and found[name].keyfile is None
    assert PEM_MARKER not in caplog.text


def test_unchanged_versions_are_not_read_again(
    openbao: OpenBao, client: CountingClient, kv_prefix: str
) -> None:
    for i in range(3):
        openbao.kv_put(f"{kv_prefix}/k{i}", keyfile_doc(f"k{i}"))
    source = VaultSource(source_cfg(kv_prefix), client)
    first = source.scan({})
    known = {c.ref: c.version for c in first.candidates if c.version is not None}
    assert len(client.reads) == 3

    client.reads.clear()
    again = source.scan(known)
    assert client.reads == [] and client.metadata_reads == []  # versions came with the list
    assert all(c.unchanged and c.keyfile is None for c in again.candidates)
    assert [c.version for c in again.candidates] == [1, 1, 1]

    openbao.kv_put(f"{kv_prefix}/k1", keyfile_doc("k1-rotated"))
    changed = by_path(source.scan(known), kv_prefix)
    assert client.reads == [f"{kv_prefix}/k1"]
    assert changed["k1"].version == 2 and changed["k1"].keyfile is not None
    assert changed["k1"].keyfile.key_id == "k1-rotated"
    assert changed["k0"].unchanged and changed["k2"].unchanged


def test_without_detailed_listing_a_known_secret_costs_one_metadata_read(
    openbao: OpenBao, clock: FakeClock, kv_prefix: str
) -> None:
    openbao.kv_put(f"{kv_prefix}/a", keyfile_doc("a"))
    openbao.kv_put(f"{kv_prefix}/b", keyfile_doc("b"))
    openbao.write_policy(f"plain-{kv_prefix}", kv_policy(kv_prefix, detailed=False))
    token = openbao.create_token([f"plain-{kv_prefix}"])
    with CountingClient(openbao.vault_config(token), clock) as client:
        source = VaultSource(source_cfg(kv_prefix), client)
        first = source.scan({})
        known = {c.ref: c.version for c in first.candidates if c.version is not None}
        assert client.metadata_reads == []  # unknown secrets: read directly
        client.reads.clear()

        again = source.scan(known)

    assert all(c.unchanged for c in again.candidates) and len(again.candidates) == 2
    assert client.reads == [] and sorted(client.metadata_reads) == [f"{kv_prefix}/a", f"{kv_prefix}/b"]


def test_deleted_secret_disappears(
    openbao: OpenBao, client: CountingClient, clock: FakeClock, kv_prefix: str
) -> None:
    openbao.kv_put(f"{kv_prefix}/a", keyfile_doc("a"))
    openbao.kv_put(f"{kv_prefix}/b", keyfile_doc("b"))
    source = VaultSource(source_cfg(kv_prefix), client)
    known = {c.ref: c.version for c in source.scan({}).candidates if c.version is not None}

    openbao.kv_delete(f"{kv_prefix}/b")
    just_now = source.scan(known)  # deletion time not yet past by keyd's clock: looked up
    clock.advance(5)
    later = source.scan(known)

    for result in (just_now, later):
        assert [c.ref for c in result.candidates] == [f"secret/{kv_prefix}/a"]


def test_one_denied_secret_is_that_location_s_error(
    openbao: OpenBao, clock: FakeClock, kv_prefix: str
) -> None:
    for name in ("a", "denied", "z"):
        openbao.kv_put(f"{kv_prefix}/{name}", keyfile_doc(name))
    openbao.write_policy(f"part-{kv_prefix}", kv_policy(kv_prefix, deny=("denied",)))
    token = openbao.create_token([f"part-{kv_prefix}"])
    with VaultClient(openbao.vault_config(token), clock) as client:
        found = by_path(VaultSource(source_cfg(kv_prefix), client).scan({}), kv_prefix)

    assert found["a"].keyfile is not None and found["z"].keyfile is not None
    error = found["denied"].error
    assert error is not None and found["denied"].keyfile is None
    assert error.source == f"vault:secret/{kv_prefix}/denied"
    assert "permission denied" in error.problem


def test_denied_listing_fails_the_whole_source(openbao: OpenBao, clock: FakeClock, kv_prefix: str) -> None:
    openbao.kv_put(f"{kv_prefix}/a", keyfile_doc("a"))
    openbao.write_policy(f"nolist-{kv_prefix}", kv_policy(kv_prefix, list_allowed=False))
    token = openbao.create_token([f"nolist-{kv_prefix}"])
    with VaultClient(openbao.vault_config(token), clock) as client:
        with pytest.raises(VaultDenied) as denied:
            VaultSource(source_cfg(kv_prefix), client).scan({})
    assert not isinstance(denied.value, VaultAuthFailed)
    assert f"secret/{kv_prefix}" in str(denied.value)


def test_dead_token_fails_the_whole_source(openbao: OpenBao, clock: FakeClock, kv_prefix: str) -> None:
    openbao.kv_put(f"{kv_prefix}/a", keyfile_doc("a"))
    openbao.write_policy(f"r-{kv_prefix}", kv_policy(kv_prefix))
    token = openbao.create_token([f"r-{kv_prefix}"])
    with VaultClient(openbao.vault_config(token), clock) as client:
        client.ensure_token()
        openbao.revoke_token(token)
        with pytest.raises(VaultAuthFailed):
            VaultSource(source_cfg(kv_prefix), client).scan({})


def test_sealed_vault_fails_the_whole_source(openbao_fresh: OpenBao, clock: FakeClock) -> None:
    openbao_fresh.kv_put("keys/a", keyfile_doc("a"))
    with VaultClient(openbao_fresh.vault_config(), clock) as client:
        source = VaultSource(source_cfg("keys"), client)
        assert len(source.scan({}).candidates) == 1
        openbao_fresh.seal()
        with pytest.raises(VaultUnavailable):
            source.scan({})


def test_missing_prefix_is_an_empty_scan(client: CountingClient, kv_prefix: str) -> None:
    result = VaultSource(source_cfg(f"{kv_prefix}/none"), client).scan({})
    assert result.candidates == [] and result.source == f"vault:secret/{kv_prefix}/none"
