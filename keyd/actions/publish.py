"""Write a rotated key to every location of the old one (README "Rotation").

A location is where the inventory last saw the old key (``LocationStamp``:
the source, the path or Vault ``mount/path``, the content hash and, for
Vault, the KV version keyd scanned). Publishing one location:

* it already holds the new key id → nothing to do (a crash came after
  the write; the key found there is the one keyd made);
* it still holds what keyd scanned → replace it: a file atomically at the
  same path (temp file in the same directory, fsync, rename, directory
  fsync; the old file's mode and owner), a Vault secret as a new version
  by check-and-set against the scanned version, in the same layout (the
  whole JSON in the source's ``field`` — as text or object, as it was —,
  or the key-file fields at the top level, other fields kept) and with
  its custom metadata untouched;
* anything else (another key, other content, a newer version, gone) is a
  ``PublishConflict``: the caller stops and alerts; nothing is overwritten.

``read_location`` reads the key now at a location (crash recovery: a key
keyd wrote before it was killed is found there again).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Protocol

from keyd.actions.filesink import TokenFileError, write_atomic
from keyd.actions.keygen import KeyDocument
from keyd.config import SourceConfig, VaultSourceConfig
from keyd.errors import KeydError, KeyFileError, VaultConflict
from keyd.sources.keyfile import KeyFile, parse_keyfile, parse_keyfile_mapping, read_keyfile
from keyd.sources.vault import extract
from keyd.store.rotations import LocationStamp

_KEY_FIELDS = ("type", "keyId", "key", "expirationDate", "userId")


class PublishConflict(KeydError):
    """The location changed since keyd scanned it: nothing was written."""

    def __init__(self, ref: str, problem: str) -> None:
        self.ref = ref
        super().__init__(
            f"{ref}: {problem}; not overwritten (rescan, check who changed it, then `keyd rotate KEY_ID`)"
        )


class PublishError(KeydError):
    """The location could not be written (permissions, disk, Vault down)."""

    retryable = True

    def __init__(self, ref: str, problem: str) -> None:
        self.ref = ref
        super().__init__(f"{ref}: {problem}")


class SecretStore(Protocol):
    """What publishing needs from ``keyd.clients.vault.VaultClient``."""

    def read(self, mount: str, path: str) -> Any:
        """The current version (``data``, ``version``) or None."""

    def write_cas(
        self,
        mount: str,
        path: str,
        data: Mapping[str, Any],
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        """The new version; raises ``VaultConflict`` on a mismatch."""


@dataclass(frozen=True)
class Publisher:
    """Publishes to the configured sources' locations."""

    sources: Sequence[SourceConfig]
    vault: SecretStore | None
    tz: tzinfo = UTC

    def source(self, stamp: LocationStamp) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == stamp.source), None)

    def publish(self, stamp: LocationStamp, doc: KeyDocument, old_key_id: str) -> bool:
        """Write ``doc`` to ``stamp``'s location; True when written now,
        False when it held the new key already. Raises ``PublishConflict``
        or ``PublishError``; on either the location is unchanged."""
        return self._at(stamp, doc, old_key_id, write=True)

    def check(self, stamp: LocationStamp, doc: KeyDocument, old_key_id: str) -> bool:
        """As ``publish`` without writing: True when the location still holds
        what keyd scanned (would be written), False when it holds the new
        key; raises ``PublishConflict`` otherwise."""
        return self._at(stamp, doc, old_key_id, write=False)

    def _at(self, stamp: LocationStamp, doc: KeyDocument, old_key_id: str, *, write: bool) -> bool:
        source = self.source(stamp)
        if isinstance(source, VaultSourceConfig):
            return self._publish_vault(stamp, source, doc, old_key_id, write)
        if source is None and not stamp.ref.startswith("/"):
            raise PublishError(stamp.ref, f"its source {stamp.source!r} is no longer configured")
        return self._publish_file(Path(stamp.ref), stamp, doc, old_key_id, write)

    def read_location(self, stamp: LocationStamp) -> KeyFile | None:
        """The key at ``stamp``'s location now, or None when it holds none."""
        source = self.source(stamp)
        try:
            if isinstance(source, VaultSourceConfig):
                secret = self._vault_secret(stamp, source)
                return None if secret is None else _parse_secret(secret.data, source, stamp.ref, self.tz)
            return read_keyfile(stamp.ref, tz=self.tz, validate="quick")
        except KeyFileError:
            return None

    # -- files ------------------------------------------------------------------

    def _publish_file(
        self, path: Path, stamp: LocationStamp, doc: KeyDocument, old_key_id: str, write: bool
    ) -> bool:
        try:
            before = os.stat(path)
            current = read_keyfile(path, tz=self.tz, validate="none")
        except FileNotFoundError:
            raise PublishConflict(str(path), "is gone") from None
        except OSError as exc:
            raise PublishError(str(path), f"cannot read: {exc.strerror or exc}") from None
        except KeyFileError as exc:
            raise PublishConflict(str(path), f"no longer holds key {old_key_id} ({exc.problem})") from None
        if current.key_id == doc.key_id:
            return False
        _check_same(stamp, current, old_key_id)
        if not write:
            return True
        try:
            write_atomic(
                path,
                doc.text().encode(),
                mode=stat.S_IMODE(before.st_mode),
                owner=(before.st_uid, before.st_gid),
            )
        except TokenFileError as exc:
            raise PublishError(str(path), str(exc).removeprefix(f"{path}: ")) from None
        return True

    # -- Vault --------------------------------------------------------------------

    def _vault_secret(self, stamp: LocationStamp, source: VaultSourceConfig) -> Any:
        if self.vault is None:
            raise PublishError(stamp.ref, "is in Vault, but no [vault] is configured")
        return self.vault.read(source.mount, _vault_path(stamp.ref, source))

    def _publish_vault(
        self,
        stamp: LocationStamp,
        source: VaultSourceConfig,
        doc: KeyDocument,
        old_key_id: str,
        write: bool,
    ) -> bool:
        secret = self._vault_secret(stamp, source)
        if secret is None:
            raise PublishConflict(stamp.ref, "is gone from Vault")
        try:
            current = _parse_secret(secret.data, source, stamp.ref, self.tz)
        except KeyFileError as exc:
            raise PublishConflict(stamp.ref, f"no longer holds key {old_key_id} ({exc.problem})") from None
        if current.key_id == doc.key_id:
            return False
        if stamp.version is not None and secret.version != stamp.version:
            raise PublishConflict(
                stamp.ref, f"is at version {secret.version}, keyd scanned version {stamp.version}"
            )
        _check_same(stamp, current, old_key_id)
        if not write:
            return True
        data = _new_secret_data(secret.data, source.field, doc)
        assert self.vault is not None
        try:
            self.vault.write_cas(source.mount, _vault_path(stamp.ref, source), data, cas=int(secret.version))
        except VaultConflict:
            raise PublishConflict(
                stamp.ref,
                f"was written by someone else after version {secret.version} (check-and-set failed)",
            ) from None
        return True


def _check_same(stamp: LocationStamp, current: KeyFile, old_key_id: str) -> None:
    if current.key_id != old_key_id:
        raise PublishConflict(stamp.ref, f"now holds key {current.key_id}, not {old_key_id}")
    if stamp.content_hash is not None and current.content_hash != stamp.content_hash:
        raise PublishConflict(stamp.ref, f"holds key {old_key_id} with content changed since the scan")


def _vault_path(ref: str, source: VaultSourceConfig) -> str:
    prefix = source.mount.strip("/") + "/"
    return ref[len(prefix) :] if ref.startswith(prefix) else ref


def _parse_secret(data: Mapping[str, Any], source: VaultSourceConfig, ref: str, tz: tzinfo) -> KeyFile:
    value = extract(data, source.field, ref)
    if isinstance(value, str):
        return parse_keyfile(value, source=ref, tz=tz, validate="quick")
    return parse_keyfile_mapping(value, source=ref, tz=tz, validate="quick")


def _new_secret_data(old: Mapping[str, Any], field: str, doc: KeyDocument) -> dict[str, Any]:
    """The secret's data with the new key file in the old layout."""
    data = dict(old)
    if field in data:
        data[field] = doc.text() if isinstance(data[field], str) else doc.fields()
        return data
    for name in ("clientId", "clientID", "appId", *_KEY_FIELDS):
        data.pop(name, None)
    data.update(doc.fields())
    return data


__all__ = ["PublishConflict", "PublishError", "Publisher", "SecretStore"]
