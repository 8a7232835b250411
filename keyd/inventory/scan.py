"""One pass over every configured source into the inventory (``keyd scan``).

``scan_all(config, engine, clock, vault_client)`` scans each source in
config order and reconciles it in its own transaction, so one source's
failure (directory gone, Vault sealed) is recorded for that source only and
never touches the keys the others found. Reading files and Vault happens
*outside* any database transaction; only the fold into rows is inside.

Database trouble (``StoreError``) is not a source failure: it propagates,
because nothing can be recorded anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from keyd.clients.vault import VaultClient
from keyd.clients.zitadel import ZitadelKeyAPI
from keyd.clock import Clock
from keyd.config import (
    Config,
    DirectorySourceConfig,
    SourceConfig,
    VaultSourceConfig,
    ZitadelSourceConfig,
)
from keyd.errors import ConfigError, KeydError, StoreError
from keyd.inventory.reconcile import SourceOutcome, reconcile, record_failure
from keyd.inventory.zitadel import reconcile_zitadel
from keyd.sources.base import ScanResult
from keyd.sources.directory import DirectorySource
from keyd.sources.vault import VaultSource
from keyd.sources.zitadel import ZitadelListing, ZitadelSource
from keyd.store.inventory import (
    Engine,
    SourceIndex,
    key_counts,
    known_versions,
    last_attempts,
    source_index,
    validated_hashes,
)
from keyd.vocab import KeyStatus

if TYPE_CHECKING:
    from keyd.inventory.watched import WatchedScans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanReport:
    """Per-source outcomes and the inventory's key counts afterwards."""

    sources: tuple[SourceOutcome, ...]
    key_counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[SourceOutcome, ...]:
        return tuple(s for s in self.sources if not s.ok)

    @property
    def keys(self) -> int:
        """Keys known and not missing."""
        return sum(n for status, n in self.key_counts.items() if status != KeyStatus.MISSING)

    def total(self, attribute: str) -> int:
        return sum(int(getattr(s, attribute)) for s in self.sources)

    def summary(self) -> str:
        """``3 sources, 42 keys (2 new, 1 changed, 1 missing, 1 invalid);
        source vault:secret/zitadel/keys failed: Vault is sealed``."""
        n = len(self.sources)
        text = (
            f"{n} source{'s' if n != 1 else ''}, {self.keys} key{'s' if self.keys != 1 else ''}"
            f" ({self.total('new')} new, {self.total('changed')} changed, "
            f"{self.total('missing')} missing, {self.total('invalid')} invalid)"
        )
        unheld, gone = self.total("unheld"), self.total("gone")
        if unheld or gone:
            text += f"; ZITADEL: {unheld} unheld, {gone} gone"
        for failed in self.failed:
            text += f"; source {failed.source} failed: {failed.error}"
        scopes = [s.scope for s in self.sources if s.scope != "full" or s.reason]
        if scopes:
            full = sum(1 for s in self.sources if s.reason)
            text += (
                f"; directory sources: {scopes.count('watched')} watched (no change), "
                f"{scopes.count('partial')} partial, {full} full"
            )
        return text


class _Validated(Container[str]):
    """``validated_hashes``, read on the first lookup: a warm scan where no
    file is new or changed never reads the (inventory-sized) hash lists."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._hashes: frozenset[str] | None = None

    def __contains__(self, content_hash: object) -> bool:
        if self._hashes is None:
            self._hashes = validated_hashes(self._engine)
        return content_hash in self._hashes


def scan_all(
    config: Config,
    engine: Engine,
    clock: Clock,
    vault_client: VaultClient | None = None,
    *,
    key_apis: Mapping[str, ZitadelKeyAPI] | None = None,
    due_only: bool = False,
    watches: WatchedScans | None = None,
) -> ScanReport:
    """Scan and reconcile every configured source (see the module doc).

    ``key_apis``: the key-API client of each zitadel source, by name.
    ``due_only`` (the daemon): a zitadel source is read only when its
    ``interval`` has passed since its last attempt; file and Vault sources
    are always read. ``keyd scan`` and ``keyd check`` read everything.
    ``watches`` (the daemon): directory sources are scanned as their
    watchers say (``keyd.inventory.watched``): not at all, partially or
    in full."""
    validated = _Validated(engine)  # read only if some file is new or changed
    attempts = last_attempts(engine) if due_only else {}
    expiring = watches.expiring(engine, config, clock.now()) if watches is not None else {}
    outcomes = []
    for cfg in config.sources:
        if _not_due(cfg, attempts, clock.now()):
            continue
        if watches is not None and isinstance(cfg, DirectorySourceConfig):
            outcome = watches.scan(cfg, engine, clock, config, validated, expiring.get(cfg.name, set()))
        else:
            outcome = scan_source(cfg, engine, clock, config, vault_client, validated, key_apis=key_apis)
        outcomes.append(outcome)
    return ScanReport(sources=tuple(outcomes), key_counts=key_counts(engine))


def _not_due(cfg: SourceConfig, attempts: Mapping[str, datetime], now: datetime) -> bool:
    last = attempts.get(cfg.name)
    return isinstance(cfg, ZitadelSourceConfig) and last is not None and now < last + cfg.interval


def scan_source(
    cfg: SourceConfig,
    engine: Engine,
    clock: Clock,
    config: Config,
    vault_client: VaultClient | None,
    validated: Container[str] = frozenset(),
    *,
    key_apis: Mapping[str, ZitadelKeyAPI] | None = None,
    on_directory: Callable[[str], object] | None = None,
    on_result: Callable[[ScanResult], object] | None = None,
) -> SourceOutcome:
    """Read one source, then reconcile it or record its failure.
    ``on_directory``: the directory walk's hook (``DirectorySource.scan``);
    ``on_result`` is shown what the source read before it is reconciled."""
    index: SourceIndex | None = None
    try:
        if isinstance(cfg, ZitadelSourceConfig):
            listing = _list_zitadel(cfg, key_apis)
        else:
            result, index = _read(cfg, engine, config, vault_client, validated, on_directory)
            if on_result is not None:
                on_result(result)
    except StoreError:
        raise
    except KeydError as exc:
        return record_failure(engine, cfg.name, exc, clock.now())
    except Exception as exc:  # noqa: BLE001 - a bug in one source must not stop the others
        return _internal(engine, cfg.name, "scanning", exc, clock)
    try:
        if isinstance(cfg, ZitadelSourceConfig):
            return reconcile_zitadel(engine, listing, clock.now())
        return reconcile(engine, result, clock.now(), index)
    except StoreError:
        raise
    except KeydError as exc:  # a zitadel listing refused as doubtful: nothing was applied
        return record_failure(engine, cfg.name, exc, clock.now())
    except Exception as exc:  # noqa: BLE001 - recorded on this source; the others go on
        return _internal(engine, cfg.name, "recording the scan", exc, clock)


def _internal(engine: Engine, source: str, doing: str, exc: Exception, clock: Clock) -> SourceOutcome:
    log.exception("%s: unexpected error while %s", source, doing)
    problem = f"internal error while {doing} ({type(exc).__name__}); run with --debug and report it"
    return record_failure(engine, source, RuntimeError(problem), clock.now())


def _list_zitadel(cfg: ZitadelSourceConfig, key_apis: Mapping[str, ZitadelKeyAPI] | None) -> ZitadelListing:
    api = (key_apis or {}).get(cfg.name)
    if api is None:
        raise ConfigError(
            f"source {cfg.name}", "needs [issuer] and keyd's own key file (credential) to call ZITADEL's API"
        )
    return ZitadelSource(cfg, api).list_all()


def _read(
    cfg: SourceConfig,
    engine: Engine,
    config: Config,
    vault_client: VaultClient | None,
    validated: Container[str],
    on_directory: Callable[[str], object] | None = None,
) -> tuple[ScanResult, SourceIndex | None]:
    """The source's scan, and for a directory the index its stamps came
    from (one read of the inventory per warm scan, reused by ``reconcile``)."""
    if isinstance(cfg, DirectorySourceConfig):
        index = source_index(engine, cfg.name)
        source = DirectorySource(cfg, config.timezone)
        return source.scan(index.held, validated, on_directory=on_directory), index
    if isinstance(cfg, VaultSourceConfig):
        if vault_client is None:
            raise ConfigError(f"source {cfg.name}", "needs a [vault] section (addr and auth) to be read")
        versions = known_versions(engine, cfg.name)
        return VaultSource(cfg, vault_client, config.timezone).scan(versions, validated), None
    raise ConfigError(f"source {getattr(cfg, 'name', '?')}", f"unknown source type {type(cfg).__name__}")
