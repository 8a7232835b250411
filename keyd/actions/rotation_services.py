"""What a rotation uses: ZITADEL's key API, the publisher, the proof, the
hooks and the policy (built once per daemon, like ``ProbeServices``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from keyd.actions.hooks import Hook
from keyd.actions.probe import ProbeServices, probe_one
from keyd.actions.publish import Publisher, SecretStore
from keyd.checks.apitoken import ApiTokenProvider
from keyd.checks.assertion import AssertionSigner
from keyd.checks.probe import ProbeResult
from keyd.checks.rotation import RotationPolicy
from keyd.clients.issuer import IssuerClient
from keyd.clients.zitadel import ZitadelKeyAPI
from keyd.clock import Clock
from keyd.config import (
    AlertsConfig,
    Config,
    DirectorySourceConfig,
    SourceConfig,
    VaultSourceConfig,
)
from keyd.errors import ConfigError
from keyd.retry import Random, backoff_delay
from keyd.sources.keyfile import KeyFile
from keyd.store.keys import KeyRecord
from keyd.vocab import KeyStatus, ProbeOutcome


class ListedKeyLike(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def expires_at(self) -> datetime: ...


class AddedKeyLike(Protocol):
    @property
    def key_id(self) -> str: ...


class KeyAPI(Protocol):
    """What rotation needs from ``keyd.clients.zitadel.ZitadelKeyAPI``."""

    def add_key(self, user_id: str, public_key_pem: str | bytes, expires_at: datetime) -> AddedKeyLike: ...

    def list_keys(
        self, *, user_id: str | None = None, organization_id: str | None = None
    ) -> Sequence[ListedKeyLike]: ...

    def remove_key(self, user_id: str, key_id: str) -> None: ...


Prover = Callable[[KeyFile], ProbeResult]


@dataclass
class RotationServices:
    api: KeyAPI
    publisher: Publisher
    prove: Prover
    clock: Clock
    policy: RotationPolicy = field(default_factory=RotationPolicy)
    hooks: Mapping[str, Hook] = field(default_factory=dict)  # source name → after_publish
    alerts: AlertsConfig | None = None
    rng: Random = field(default_factory=random.Random)
    close: Callable[[], None] = lambda: None


def probe_prover(probe: ProbeServices, policy: RotationPolicy) -> Prover:
    """Prove a new key with the normal probe code (``probe_one``: signer,
    rate limit, fast retries), repeated with backoff while the issuer does
    not know the key yet (ZITADEL may need a moment)."""

    def prove(keyfile: KeyFile) -> ProbeResult:
        services = replace(probe, load_key=lambda _target: keyfile, on_round=None)
        target = KeyRecord(
            pk=0,
            key_id=keyfile.key_id,
            kind=keyfile.kind,
            principal=keyfile.principal,
            status=KeyStatus.ACTIVE,
            content_hash=keyfile.content_hash,
            expires_at=keyfile.expires_at,
        )
        result: ProbeResult | None = None
        for attempt in range(1, max(1, policy.prove_attempts) + 1):
            _record, result = probe_one(target, services)
            if result.outcome == ProbeOutcome.OK or attempt == policy.prove_attempts:
                break
            probe.clock.sleep(
                max(
                    policy.prove_base.total_seconds() / 2,
                    backoff_delay(attempt, policy.prove_base, policy.prove_cap, probe.rng),
                )
            )
        assert result is not None
        return result

    return prove


def hooks_of(sources: Sequence[SourceConfig]) -> dict[str, Hook]:
    """The ``after_publish`` hook of every source that has one."""
    return {
        s.name: Hook(tuple(s.after_publish), s.after_publish_timeout)
        for s in sources
        if isinstance(s, DirectorySourceConfig | VaultSourceConfig) and s.after_publish
    }


def build_rotation_services(
    config: Config, clock: Clock, issuer: IssuerClient, probe: ProbeServices, vault: SecretStore | None
) -> RotationServices:
    """``RotationServices`` for ``config`` (``[rotation]`` enabled with a
    credential, and ``[issuer]``: checked when the config was loaded)."""
    rotation, issuer_cfg = config.rotation, config.issuer
    if rotation is None or rotation.credential is None or issuer_cfg is None:
        raise ConfigError("rotation", "rotation needs [issuer] and rotation.credential")
    policy = RotationPolicy.from_config(rotation, config.timezone)
    signer = AssertionSigner(clock, lifetime=issuer_cfg.assertion_lifetime, skew=issuer_cfg.clock_skew)
    tokens = ApiTokenProvider(rotation.credential, issuer, signer, clock)
    api = ZitadelKeyAPI(
        issuer_cfg.url,
        tokens,
        clock=clock,
        ca_bundle=issuer_cfg.ca_bundle,
        timeout=issuer_cfg.timeout.total_seconds(),
    )
    return RotationServices(
        api=api,
        publisher=Publisher(config.sources, vault, config.timezone),
        prove=probe_prover(probe, policy),
        clock=clock,
        policy=policy,
        hooks=hooks_of(config.sources),
        alerts=config.alerts,
        close=api.close,
    )
