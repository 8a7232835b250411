"""Publishing a rotated key: files replaced atomically with their mode and
owner, Vault secrets by check-and-set in their own layout with their custom
metadata; a location changed since the scan is a conflict and untouched."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyd.actions.keygen import KeyDocument, generate
from keyd.actions.publish import PublishConflict, Publisher
from keyd.clients.vault import VaultClient
from keyd.clock import SystemClock
from keyd.config import DirectorySourceConfig, VaultSourceConfig
from keyd.sources.keyfile import parse_keyfile, read_keyfile
from keyd.store.rotations import LocationStamp
from tests.support.keys import make_key_file

EXPIRES = datetime(2026, 9, 1, tzinfo=UTC)


def _doc(user_id: str) -> KeyDocument:
    return KeyDocument(
        key_id="399000000000000001", user_id=user_id, expires_at=EXPIRES, key=generate("ec-p256")
    )


def _stamp(source: str, ref: str, text: str, version: int | None = None) -> LocationStamp:
    return LocationStamp(source, ref, parse_keyfile(text, source=ref).content_hash, version)


def test_file_replaced_in_place_with_mode_and_owner(tmp_path: Path):
    made = make_key_file(tmp_path)
    assert made.path is not None
    os.chmod(made.path, 0o640)
    os.chown(made.path, 65534, 65534)
    inode = made.path.stat().st_ino
    publisher = Publisher([DirectorySourceConfig("dir", tmp_path)], None)
    doc = _doc(made.principal)
    stamp = _stamp("dir", str(made.path), made.path.read_text())
    assert publisher.publish(stamp, doc, made.key_id) is True
    after = made.path.stat()
    assert (after.st_mode & 0o777, after.st_uid, after.st_gid) == (0o640, 65534, 65534)
    assert after.st_ino != inode  # renamed over, never rewritten in place
    assert read_keyfile(made.path).key_id == doc.key_id
    assert [p.name for p in tmp_path.iterdir()] == [made.path.name]  # no temp file left
    assert publisher.publish(stamp, doc, made.key_id) is False  # already there: idempotent


@pytest.mark.parametrize("change", ["other key", "edited", "gone"])
def test_file_changed_since_scan_is_a_conflict(tmp_path: Path, change: str):
    made = make_key_file(tmp_path)
    assert made.path is not None
    stamp = _stamp("dir", str(made.path), made.path.read_text())
    if change == "other key":
        made.path.write_text(make_key_file().text)
    elif change == "edited":
        made.path.write_text(json.dumps({**made.data, "expirationDate": "2030-01-01T00:00:00Z"}))
    else:
        made.path.unlink()
    before = made.path.read_bytes() if made.path.exists() else None
    publisher = Publisher([DirectorySourceConfig("dir", tmp_path)], None)
    with pytest.raises(PublishConflict, match=str(made.path)):
        publisher.publish(stamp, _doc(made.principal), made.key_id)
    assert (made.path.read_bytes() if made.path.exists() else None) == before


@pytest.mark.openbao
@pytest.mark.parametrize("layout", ["field-text", "field-object", "top-level"])
def test_vault_secret_gets_a_cas_version_in_its_layout(openbao, kv_prefix, layout):
    made = make_key_file()
    path = f"{kv_prefix}/keys/{made.principal}"
    data: dict[str, object] = (
        {"keyfile": made.text, "owner": "team-a"}
        if layout == "field-text"
        else {"keyfile": made.data}
        if layout == "field-object"
        else {**made.data, "owner": "team-a"}
    )
    version = openbao.kv_put(path, data)
    source = VaultSourceConfig("vault", mount="secret", prefix=kv_prefix)
    with VaultClient(openbao.vault_config(), SystemClock()) as vault:
        vault.write_metadata("secret", path, {"team": "a"})
        publisher = Publisher([source], vault)
        doc = _doc(made.principal)
        stamp = _stamp("vault", f"secret/{path}", made.text, version)
        assert publisher.publish(stamp, doc, made.key_id) is True
        secret = vault.read("secret", path)
        assert secret.version == version + 1 and secret.custom_metadata == {"team": "a"}
        found = publisher.read_location(stamp)
        assert found is not None and found.key_id == doc.key_id
        if layout == "field-text":
            assert isinstance(secret.data["keyfile"], str) and secret.data["owner"] == "team-a"
        elif layout == "field-object":
            assert secret.data["keyfile"]["keyId"] == doc.key_id
        else:
            assert secret.data["keyId"] == doc.key_id and secret.data["owner"] == "team-a"
        assert publisher.publish(stamp, doc, made.key_id) is False


@pytest.mark.openbao
def test_vault_secret_written_since_scan_is_a_conflict(openbao, kv_prefix):
    made = make_key_file()
    path = f"{kv_prefix}/keys/x"
    version = openbao.kv_put(path, {"keyfile": made.text})
    openbao.kv_put(path, {"keyfile": made.text, "note": "someone else"})  # same key, new version
    source = VaultSourceConfig("vault", mount="secret", prefix=kv_prefix)
    with VaultClient(openbao.vault_config(), SystemClock()) as vault:
        publisher = Publisher([source], vault)
        with pytest.raises(PublishConflict, match=f"version {version + 1}"):
            publisher.publish(
                _stamp("vault", f"secret/{path}", made.text, version), _doc(made.principal), made.key_id
            )
        assert vault.read("secret", path).version == version + 1  # nothing written


@pytest.mark.openbao
def test_vault_write_racing_the_publish_loses_nothing(openbao, kv_prefix):
    """Someone writes between keyd's read and its write: check-and-set
    refuses keyd's version, and the other writer's version stays."""
    made = make_key_file()
    path = f"{kv_prefix}/keys/race"
    version = openbao.kv_put(path, {"keyfile": made.text})
    source = VaultSourceConfig("vault", mount="secret", prefix=kv_prefix)
    with VaultClient(openbao.vault_config(), SystemClock()) as vault:

        class Racing:
            def read(self, mount: str, p: str) -> object:
                return vault.read(mount, p)

            def write_cas(self, *args: object, **kwargs: object) -> int:
                openbao.kv_put(path, {"keyfile": made.text, "by": "operator"})
                return vault.write_cas(*args, **kwargs)  # type: ignore[arg-type]

        with pytest.raises(PublishConflict, match="check-and-set"):
            Publisher([source], Racing()).publish(
                _stamp("vault", f"secret/{path}", made.text, version), _doc(made.principal), made.key_id
            )
        assert vault.read("secret", path).data["by"] == "operator"
