"""Key files held in Vault / OpenBao KV v2 under one prefix.

``VaultSource(cfg, client, tz).scan(known_versions, validated)`` lists every
secret under ``cfg.mount``/``cfg.prefix`` (recursively) and returns one
``Candidate`` per secret, its ``ref`` being ``<mount>/<path>`` and its
``version`` the KV version.

Contract:

* Incremental: a secret whose current version equals ``known_versions[ref]``
  is not read (``Candidate.unchanged``). On OpenBao the versions come with
  the listing (one call per folder); elsewhere a known secret costs one
  metadata read. New secrets are read directly (the read gives the version).
* A secret holds a key either as its fields (``type``, ``keyId``, ``key``,
  …, as in the key file) or as one field (``cfg.field``, default
  ``keyfile``) holding the key-file JSON as a string or an object.
  Anything else (numbers, nested junk, huge values, a policy that denies
  reading this one secret) is an invalid candidate whose ``KeyFileError``
  names ``vault:<mount>/<path>`` and the problem; never an exception.
* A soft-deleted or destroyed current version is absent: no candidate.
* Whole-source failures (sealed, unreachable, listing denied, keyd's own
  token dead) raise ``VaultUnavailable`` / ``VaultDenied`` /
  ``VaultAuthFailed`` from ``scan()``: the caller marks the source failed
  and leaves its keys alone instead of calling them missing.
* Validation cost: new content is parsed cheaply first; if its
  ``content_hash`` is in ``validated`` (accepted before after full
  validation) it is loaded with ``"quick"``, otherwise ``"full"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Mapping
from datetime import UTC, tzinfo
from typing import Any

from keyd import progress
from keyd.clients.vault import VaultClient, VaultMetadata, VaultSecret
from keyd.clients.vault_model import norm_prefix, vault_ref
from keyd.config import VaultSourceConfig
from keyd.errors import KeyFileError, VaultAuthFailed, VaultDenied
from keyd.sources.base import Candidate, ScanResult
from keyd.sources.keyfile import (
    MAX_FILE_BYTES,
    KeyFile,
    Validation,
    parse_keyfile,
    parse_keyfile_mapping,
)

log = logging.getLogger(__name__)

_KEY_FIELDS = ("type", "keyId", "key", "userId", "clientId", "clientID")


class VaultSource:
    """One ``[[sources]] type = "vault"`` entry."""

    def __init__(self, cfg: VaultSourceConfig, client: VaultClient, tz: tzinfo = UTC) -> None:
        self._cfg = cfg
        self._client = client
        self._tz = tz
        self._mount = cfg.mount.strip("/")
        self._prefix = norm_prefix(cfg.prefix)

    @property
    def name(self) -> str:
        return self._cfg.name

    def scan(self, known_versions: Mapping[str, int], validated: Container[str] = frozenset()) -> ScanResult:
        """One pass over the prefix (see the module contract). ``known_versions``
        maps ``<mount>/<path>`` to the KV version the inventory holds."""
        listing = self._client.list_versions(self._mount, self._prefix)
        candidates: list[Candidate] = []
        task = f"reading {self.name}"
        progress.begin(task, len(listing), "secrets")
        for path in sorted(listing):
            found = self._candidate(path, listing[path], known_versions, validated)
            if found is not None:
                candidates.append(found)
            progress.advance(task)
        progress.end(task)
        unchanged = sum(1 for c in candidates if c.unchanged)
        log.debug(
            "%s: %d secret(s), %d unchanged, %d invalid",
            self.name,
            len(candidates),
            unchanged,
            sum(1 for c in candidates if c.error),
        )
        return ScanResult(source=self.name, candidates=candidates)

    def _candidate(
        self, path: str, meta: VaultMetadata | None, known: Mapping[str, int], validated: Container[str]
    ) -> Candidate | None:
        ref = vault_ref(self._mount, path)
        try:
            if meta is None and ref in known:
                meta = self._metadata(path)
            if meta is not None:
                if meta.deleted:
                    return None
                if known.get(ref) == meta.current_version and not meta.deletion_pending:
                    return Candidate(ref=ref, version=meta.current_version, unchanged=True)
            secret = self._client.read(self._mount, path)
        except VaultAuthFailed:
            raise
        except VaultDenied:
            problem = "keyd's Vault policy does not allow reading this secret (permission denied)"
            return Candidate(
                ref=ref,
                version=meta.current_version if meta else None,
                error=KeyFileError(f"vault:{ref}", problem),
            )
        if secret is None:
            return None  # deleted between listing and reading
        return self._parse(ref, secret, validated)

    def _metadata(self, path: str) -> VaultMetadata | None:
        """Metadata of a known secret; a policy that allows reading the data
        but not the metadata just costs a full read."""
        try:
            return self._client.read_metadata(self._mount, path)
        except VaultAuthFailed:
            raise
        except VaultDenied:
            return None

    def _parse(self, ref: str, secret: VaultSecret, validated: Container[str]) -> Candidate:
        source = f"vault:{ref}"
        try:
            keyfile = self._load(extract(secret.data, self._cfg.field, source), source, validated)
        except KeyFileError as exc:
            return Candidate(ref=ref, version=secret.version, error=exc)
        except Exception as exc:  # noqa: BLE001 - odd data must never crash a scan
            log.warning("%s: unexpected %s while parsing; marked invalid", source, type(exc).__name__)
            return Candidate(
                ref=ref,
                version=secret.version,
                error=KeyFileError(source, "could not be parsed as a key file"),
            )
        return Candidate(ref=ref, version=secret.version, keyfile=keyfile)

    def _load(self, obj: str | Mapping[str, Any], source: str, validated: Container[str]) -> KeyFile:
        cheap = self._parse_as(obj, source, "none")
        level: Validation = "quick" if cheap.content_hash in validated else "full"
        return self._parse_as(obj, source, level)

    def _parse_as(self, obj: str | Mapping[str, Any], source: str, level: Validation) -> KeyFile:
        if isinstance(obj, str):
            return parse_keyfile(obj, source=source, tz=self._tz, validate=level)
        return parse_keyfile_mapping(obj, source=source, tz=self._tz, validate=level)


def extract(data: Mapping[str, Any], field: str, source: str) -> str | Mapping[str, Any]:
    """The key file inside a secret: the JSON text or object in ``field``,
    or the secret's own fields. Raises ``KeyFileError`` for anything else."""
    _check_size(data, source)
    if field in data:
        value = data[field]
        if isinstance(value, str | Mapping):
            return value
        raise KeyFileError(
            source, f"field {field!r} must hold the key-file JSON (a string or an object), not {_kind(value)}"
        )
    if any(name in data for name in _KEY_FIELDS):
        return data
    if not data:
        raise KeyFileError(source, "is empty (no fields)")
    shown = ", ".join(repr(str(k)[:40]) for k in list(data)[:5])
    more = ", …" if len(data) > 5 else ""
    raise KeyFileError(
        source,
        f"holds no key file: expected the key-file fields (type, keyId, "
        f"key, …) or the key-file JSON in field {field!r}; found "
        f"fields {shown}{more}",
    )


def _check_size(data: Mapping[str, Any], source: str) -> None:
    try:
        size = len(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except RecursionError:
        raise KeyFileError(source, "is not a key file (data nested too deeply)") from None
    except (TypeError, ValueError):
        raise KeyFileError(source, "is not a key file (data is not plain JSON)") from None
    if size > MAX_FILE_BYTES:
        raise KeyFileError(source, f"holds {size} bytes; a key file is a few KB (limit {MAX_FILE_BYTES})")


def _kind(value: object) -> str:
    return {list: "a list", bool: "a boolean", type(None): "null", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
