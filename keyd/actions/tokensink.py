"""Token write-back, one sink at a time: mint, check-and-set write,
confirm (read-back) and record; the decisions on a lost write, a foreign
write or an unmanaged secret (``tokenvault.judge``). ``keyd.actions.tokens``
runs these over a round; the module docstring there states the contract.

Tokens live only in ``Secret`` and in the Vault write payload; never in
logs, the database, exceptions or metrics.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from keyd.actions import tokenvault as tv
from keyd.actions.filesink import TokenFileError, write_atomic
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import KeyLoader
from keyd.checks.mint import mint
from keyd.checks.probe import RateLimiter
from keyd.clients.issuer import IssuerClient, TokenResponse
from keyd.clock import Clock
from keyd.config import AlertsConfig, TokensConfig
from keyd.errors import KeydError, VaultConflict
from keyd.redact import scrub
from keyd.retry import Random, backoff_delay, retry_call
from keyd.store import tokens as store
from keyd.store.tokens import EventSpec, SinkTarget, SinkUpdate
from keyd.timeutil import isoformat_z
from keyd.vocab import SinkState, TokenOutcome

log = logging.getLogger(__name__)
_Out = TypeVar("_Out")
Outcome = tuple["TokenResult", SinkUpdate]
Listing = Mapping[str, object] | None  # one folder's detailed listing (None: not available)


@dataclass(frozen=True)
class TokenPolicy:
    concurrency: int = 8
    fast_attempts: int = 3
    fast_base: timedelta = timedelta(seconds=1)
    fast_cap: timedelta = timedelta(seconds=10)
    retry_base: timedelta = timedelta(seconds=30)  # across rounds, per sink
    retry_cap: timedelta = timedelta(minutes=10)
    refused_cap: timedelta = timedelta(hours=1)  # unmanaged/conflict: look again hourly


@dataclass
class TokenServices:
    """What a write-back round uses; build once, thread-safe. ``alerts``
    routes unmanaged/conflict alerts (None: event row and log only)."""

    tokens: TokensConfig
    client: IssuerClient
    signer: AssertionSigner
    vault: tv.TokenVault
    clock: Clock
    load_key: KeyLoader
    scopes: tuple[str, ...] = ("openid",)
    policy: TokenPolicy = field(default_factory=TokenPolicy)
    rng: Random = field(default_factory=random.Random)
    limiter: RateLimiter | None = None
    alerts: AlertsConfig | None = None


@dataclass(frozen=True)
class TokenResult:
    key_id: str
    principal: str
    ref: str  # mount/path
    outcome: str  # vocab.TokenOutcome
    message: str | None = None
    vault_version: int | None = None
    expires_at: datetime | None = None
    next_refresh_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {k: (isoformat_z(v) if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


def refresh_at(issued: datetime, ttl: timedelta, rng: Random) -> datetime:
    """``issued + 2/3·TTL − random[0, TTL/20)`` (docs/architecture.md §5)."""
    return issued + ttl * 2 / 3 - ttl / 20 * rng.random()


@dataclass(frozen=True)
class Written:
    """A CAS write Vault accepted as ``version``, not yet read back."""

    sink: SinkTarget
    token: TokenResponse
    version: int
    verdict: str

    @property
    def folder(self) -> tuple[str, str]:
        return tv.folder_of(self.sink.mount, self.sink.path)


def write_one(sink: SinkTarget, services: TokenServices) -> Outcome | Written:
    """Mint and write one sink; a ``Written`` still to be read back
    (``confirm_one``), or the final outcome. Never raises for issuer,
    Vault, key or file problems (they become the sink's state)."""
    return _guarded(sink, services, lambda: _refresh(sink, services))


def confirm_one(written: Written, listing: Listing, services: TokenServices) -> Outcome:
    """Read back one write and record it: the folder ``listing`` decides
    when it can (``tokenvault.listed``), else the secret is read. Another
    version in place is handled like a CAS mismatch (``_recover``)."""
    sink, token, version = written.sink, written.token, written.version

    def confirm() -> Outcome:
        entry = listing.get(sink.path.rpartition("/")[2]) if listing is not None else None
        seen = tv.listed(entry, version=version, key_id=sink.key.key_id)
        if seen == "unknown":
            try:
                tv.read_back(
                    services.vault, sink.mount, sink.path, version=version, access_token=token.access_token
                )
                seen = "same"
            except VaultConflict:
                seen = "changed"
        if seen == "changed":
            return _recover(sink, services, token)
        return _written(sink, services, token, version, written.verdict)

    return _guarded(sink, services, confirm)


def _guarded(sink: SinkTarget, services: TokenServices, step: Callable[[], _Out]) -> _Out | Outcome:
    try:
        return step()
    except tv.TokenTargetRefused as exc:
        return _refused(sink, services, exc)
    except KeydError as exc:
        return _failed(sink, services, exc)
    except Exception as exc:  # noqa: BLE001 - one sink's surprise never ends the round
        log.exception("token sink %s: unexpected error", sink.ref)
        return _failed(
            sink,
            services,
            KeydError(
                f"internal error while refreshing ({type(exc).__name__}); run with --debug and report it"
            ),
        )


def _refresh(sink: SinkTarget, services: TokenServices) -> Outcome | Written:
    vault, adopt = services.vault, services.tokens.adopt
    current: tv.Current | None = None
    verdict = "ours"
    if sink.vault_version is None:  # first write: look before leaping
        current = tv.inspect(vault, sink.mount, sink.path)
        verdict = tv.judge(current, None, adopt=adopt, ref=sink.ref)
        if verdict == "ours" and _still_fresh(current, services):
            return _keep(sink, services, current, "found keyd's token in place")
    token = _mint(sink, services)
    cas = current.version if current is not None else sink.vault_version or 0
    try:
        version = _write(sink, services, token, cas=cas, verdict=verdict)
    except VaultConflict:
        return _recover(sink, services, token)
    return Written(sink, token, version, verdict)


def _recover(sink: SinkTarget, services: TokenServices, token: TokenResponse) -> Outcome:
    """What is at the path is not what keyd expected (a CAS mismatch, or
    the read-back shows another version): look at it, judge it, keep a
    newer keyd token, else write once more against what is there and read
    that write back per secret (a second mismatch fails the attempt)."""
    current = tv.inspect(services.vault, sink.mount, sink.path)
    verdict = tv.judge(current, sink.vault_version, adopt=services.tokens.adopt, ref=sink.ref)
    if current.expires_at is not None and current.expires_at >= token.expires_at and verdict == "ours":
        return _keep(sink, services, current, "a newer keyd token is in place")
    version = _write(sink, services, token, cas=current.version, verdict=verdict)
    tv.read_back(services.vault, sink.mount, sink.path, version=version, access_token=token.access_token)
    return _written(sink, services, token, version, verdict)


def _still_fresh(current: tv.Current, services: TokenServices) -> bool:
    """keyd's token found in place (e.g. written just before a crash) that
    is not yet due: record it instead of minting another."""
    if not (current.readable and current.keyd_shaped and current.issued_at and current.expires_at):
        return False
    ttl = current.expires_at - current.issued_at
    return bool(ttl > timedelta(0) and current.issued_at + ttl * 2 / 3 > services.clock.now())


def _mint(sink: SinkTarget, services: TokenServices) -> TokenResponse:
    keyfile = services.load_key(sink.key)
    policy = services.policy

    def attempt() -> TokenResponse:
        if services.limiter is not None:
            services.limiter.acquire()
        return mint(keyfile, services.client, services.signer, services.scopes)

    return retry_call(
        attempt,
        attempts=policy.fast_attempts,
        base=policy.fast_base,
        cap=policy.fast_cap,
        sleep=services.clock.sleep,
        rng=services.rng,
        what=f"token for {sink.ref}",
    )


def _payload(sink: SinkTarget, token: TokenResponse, scopes: Sequence[str]) -> dict[str, str]:
    return {
        "access_token": token.access_token.reveal(),
        "token_type": token.token_type,
        "expires_at": isoformat_z(token.expires_at),
        "issued_at": isoformat_z(token.issued_at),
        "key_id": sink.key.key_id,
        "scope": token.scope or " ".join(scopes),
    }


def _write(sink: SinkTarget, services: TokenServices, token: TokenResponse, *, cas: int, verdict: str) -> int:
    """The CAS write (and keyd's mark where needed); returns the new version."""
    vault = services.vault
    meta = {tv.MANAGED_BY: tv.MANAGED_VALUE, tv.KEY_ID: sink.key.key_id}
    if verdict == "new":  # mark it ours before the first version exists (module doc)
        vault.write_metadata(sink.mount, sink.path, meta)
    data = _payload(sink, token, services.scopes)
    # metadata only when it may be stale (new, adopted or re-assigned sink)
    mark = meta if verdict == "adopt" or (verdict == "ours" and sink.state == SinkState.PENDING) else None
    return vault.write_cas(sink.mount, sink.path, data, cas=cas, custom_metadata=mark)


def _written(
    sink: SinkTarget, services: TokenServices, token: TokenResponse, version: int, verdict: str
) -> Outcome:
    now = services.clock.now()
    ttl = timedelta(seconds=token.expires_in)
    next_at = refresh_at(token.issued_at, ttl, services.rng)
    note = _write_file(sink, token, services)
    failures = 0
    if note is not None:  # Vault has it, the file does not: retry soon, not at 2/3 of the TTL
        failures = sink.failures + 1
        next_at = min(next_at, now + timedelta(seconds=_retry_delay(services, failures)))
    event = EventSpec("token.adopted", {"version": version}) if verdict == "adopt" else None
    update = store.written(
        sink,
        version=version,
        issued_at=token.issued_at,
        expires_at=token.expires_at,
        next_refresh_at=next_at,
        now=now,
        note=note,
        event=event,
        failures=failures,
    )
    log.info(
        "token for %s written to %s version %d (expires %s, refresh %s)",
        sink.key.key_id,
        sink.ref,
        version,
        isoformat_z(token.expires_at),
        isoformat_z(next_at),
    )
    return TokenResult(
        sink.key.key_id,
        sink.key.principal,
        sink.ref,
        TokenOutcome.WRITTEN,
        note,
        version,
        token.expires_at,
        next_at,
    ), update


def _write_file(sink: SinkTarget, token: TokenResponse, services: TokenServices) -> str | None:
    if sink.file_path is None:
        return None
    body = json.dumps(_payload(sink, token, services.scopes), sort_keys=True).encode() + b"\n"
    try:
        write_atomic(Path(sink.file_path), body)
    except TokenFileError as exc:
        log.error("token file for %s: %s", sink.key.key_id, exc)
        return scrub(str(exc))
    return None


def _keep(sink: SinkTarget, services: TokenServices, current: tv.Current, why: str) -> Outcome:
    assert current.issued_at is not None and current.expires_at is not None
    ttl = current.expires_at - current.issued_at
    next_at = refresh_at(current.issued_at, ttl, services.rng)
    update = store.written(
        sink,
        version=current.version,
        issued_at=current.issued_at,
        expires_at=current.expires_at,
        next_refresh_at=next_at,
        now=services.clock.now(),
    )
    log.info("token for %s: %s at %s version %d", sink.key.key_id, why, sink.ref, current.version)
    return TokenResult(
        sink.key.key_id,
        sink.key.principal,
        sink.ref,
        TokenOutcome.KEPT,
        why,
        current.version,
        current.expires_at,
        next_at,
    ), update


def _retry_delay(services: TokenServices, failures: int) -> float:
    policy = services.policy
    return max(
        policy.retry_base.total_seconds() / 2,
        backoff_delay(failures, policy.retry_base, policy.retry_cap, services.rng),
    )


def _failed(sink: SinkTarget, services: TokenServices, exc: KeydError) -> Outcome:
    now = services.clock.now()
    failures = sink.failures + 1
    next_at = now + timedelta(seconds=_retry_delay(services, failures))
    message = scrub(str(exc))[:1000]
    update = store.failed(
        sink, state=SinkState.FAILED, failures=failures, next_refresh_at=next_at, error=message, now=now
    )
    still = "the old token stays" if sink.expires_at and sink.expires_at > now else "no valid token"
    log.warning(
        "token for %s at %s: attempt failed (%s; %s); retry at %s",
        sink.key.key_id,
        sink.ref,
        message,
        still,
        isoformat_z(next_at),
    )
    return TokenResult(
        sink.key.key_id,
        sink.key.principal,
        sink.ref,
        TokenOutcome.FAILED,
        message,
        sink.vault_version,
        sink.expires_at,
        next_at,
    ), update


def _refused(sink: SinkTarget, services: TokenServices, exc: tv.TokenTargetRefused) -> Outcome:
    now, policy = services.clock.now(), services.policy
    failures = sink.failures + 1
    delay = max(
        policy.retry_base.total_seconds(),
        backoff_delay(failures, policy.retry_base, policy.refused_cap, services.rng),
    )
    next_at = now + timedelta(seconds=delay)
    message = scrub(str(exc))[:1000]
    new_episode = sink.state != exc.reason
    event = EventSpec(f"token.{exc.reason}", {"problem": message}) if new_episode else None
    alert = tv.refusal_alert(sink, services.alerts, exc.reason, message, now) if new_episode else None
    update = store.failed(
        sink,
        state=exc.reason,
        failures=failures,
        next_refresh_at=next_at,
        error=message,
        now=now,
        event=event,
        alert=alert,
    )
    log.error("token for %s: %s", sink.key.key_id, message)
    return TokenResult(
        sink.key.key_id,
        sink.key.principal,
        sink.ref,
        exc.reason,
        message,
        sink.vault_version,
        sink.expires_at,
        next_at,
    ), update
