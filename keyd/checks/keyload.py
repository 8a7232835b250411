"""Find a key's private material again, for signing (README "Validation probe and token write-back").

The database never holds private keys, so a probe or a token refresh
re-reads the key from where the inventory last saw it: a file, or a Vault
KV v2 secret. ``keyfile.py`` caches loaded keys by PEM hash, so this costs
one small read and a hash, not an RSA key load. This module is the one
place that lookup lives (``load_keyfile_for``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import tzinfo
from typing import Any, Protocol

from keyd.config import SourceConfig, VaultSourceConfig
from keyd.errors import KeydError, KeyFileError
from keyd.sources.keyfile import KeyFile, parse_keyfile, parse_keyfile_mapping, read_keyfile
from keyd.sources.vault import extract
from keyd.store.keys import KeyRecord, Location

log = logging.getLogger(__name__)


class SecretReader(Protocol):
    """What we need from ``keyd.clients.vault.VaultClient``."""

    def read(self, mount: str, path: str) -> Any:
        """The secret (``.data`` mapping) or None when it does not exist."""


KeyLoader = Callable[[KeyRecord], KeyFile]


class KeyUnavailable(KeydError):
    """None of a key's known locations yields its private key now."""

    retryable = True

    def __init__(self, key_id: str, problems: Sequence[str]) -> None:
        self.key_id = key_id
        self.problems = list(problems)
        detail = "; ".join(problems) if problems else "no known location"
        super().__init__(f"key {key_id}: cannot load the key file ({detail})")


def _read_vault(loc: Location, source: VaultSourceConfig, vault: SecretReader | None, tz: tzinfo) -> KeyFile:
    if vault is None:
        raise KeyFileError(loc.ref, "is in Vault, but no [vault] is configured")
    prefix = source.mount.strip("/") + "/"
    path = loc.ref[len(prefix) :] if loc.ref.startswith(prefix) else loc.ref
    secret = vault.read(source.mount, path)
    if secret is None:
        raise KeyFileError(loc.ref, "no longer exists in Vault")
    data: Mapping[str, Any] = getattr(secret, "data", None) or {}
    value = extract(data, source.field, loc.ref)  # the same rule as the Vault source
    if isinstance(value, str):
        return parse_keyfile(value, source=loc.ref, tz=tz, validate="quick")
    return parse_keyfile_mapping(value, source=loc.ref, tz=tz, validate="quick")


def _read_one(
    loc: Location, sources: Mapping[str, SourceConfig], vault: SecretReader | None, tz: tzinfo
) -> KeyFile:
    source = sources.get(loc.source)
    if isinstance(source, VaultSourceConfig):
        return _read_vault(loc, source, vault, tz)
    if source is None and not loc.ref.startswith("/"):
        raise KeyFileError(loc.ref, f"its source {loc.source!r} is no longer configured")
    return read_keyfile(loc.ref, tz=tz, validate="quick")


def load_keyfile_for(
    key: KeyRecord,
    locations: Sequence[Location],
    sources: Sequence[SourceConfig],
    vault: SecretReader | None,
    tz: tzinfo,
) -> KeyFile:
    """The ``KeyFile`` for ``key``, from the first of ``locations`` that
    still holds a key with the same key id.

    Raises ``KeyUnavailable`` naming every location's problem (files gone,
    Vault sealed, a different key now at that path); Vault outages surface
    as their own ``VaultUnavailable`` so callers can tell "come back later"
    from "the file is gone".
    """
    by_name = {s.name: s for s in sources}
    problems: list[str] = []
    for loc in locations:
        try:
            keyfile = _read_one(loc, by_name, vault, tz)
        except KeyFileError as exc:
            problems.append(str(exc))
            continue
        if keyfile.key_id != key.key_id:
            problems.append(f"{loc.ref}: now holds key {keyfile.key_id}")
            continue
        return keyfile
    raise KeyUnavailable(key.key_id, problems)


class SourceKeyLoader:
    """The ``KeyLoader`` over the configured sources (``make_key_loader``)."""

    def __init__(self, sources: Sequence[SourceConfig], vault: SecretReader | None, tz: tzinfo) -> None:
        self._sources = tuple(sources)
        self._vault_sources = {s.name for s in self._sources if isinstance(s, VaultSourceConfig)}
        self._vault, self._tz = vault, tz

    def __call__(self, target: KeyRecord) -> KeyFile:
        return load_keyfile_for(target, target.files, self._sources, self._vault, self._tz)

    def remote(self, target: KeyRecord) -> bool:
        """Whether loading ``target`` may wait on the network (a location
        in a Vault source), not only on a local file."""
        return any(loc.source in self._vault_sources for loc in target.files)


def make_key_loader(sources: Sequence[SourceConfig], vault: SecretReader | None, tz: tzinfo) -> KeyLoader:
    """A ``KeyLoader`` bound to the configured sources (for ``ProbeServices``)."""
    return SourceKeyLoader(sources, vault, tz)


__all__ = [
    "KeyLoader",
    "KeyUnavailable",
    "SecretReader",
    "SourceKeyLoader",
    "load_keyfile_for",
    "make_key_loader",
]
