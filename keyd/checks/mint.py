"""Prove a key works: sign an assertion, ask the issuer (docs/zitadel.md §3–4).

``mint`` is the one place that turns a ``KeyFile`` into a token response;
the CLI (``keyd mint``), the probe and the token write-back all use it.
A rejection is diagnosed locally, because the issuer deliberately says
the same thing for an unknown, removed, expired or foreign key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from keyd.checks.assertion import AssertionSigner
from keyd.clients.issuer import IssuerClient, Prepared, TokenResponse
from keyd.errors import IssuerRejected
from keyd.sources.keyfile import KeyFile
from keyd.vocab import KeyKind

SKEW_SUSPECT = timedelta(seconds=30)
T = TypeVar("T")

DIAGNOSES = {
    "expired": "the key expired on {expiry} (by its key file); create a new key",
    "clock_skew": "this host's clock is {skew:.0f}s off the issuer's; fix NTP, then retry",
    "malformed": "the issuer found the request malformed ({code})",
    "revoked_or_unknown": "key revoked or unknown to the issuer (removed in ZITADEL, "
    "or this key file belongs to another instance)",
}


def mint(key: KeyFile, client: IssuerClient, signer: AssertionSigner, scopes: Sequence[str]) -> TokenResponse:
    """Request a token with ``key``; raises the typed issuer errors, with
    ``IssuerRejected.diagnosis`` and a message that says what to do."""
    audience = client.discover().issuer  # exactly as the server names itself
    assertion = signer.sign(key, audience)
    return explained(key, signer, lambda: client.request_token(assertion, scopes))


def prove_application_key(key: KeyFile, client: IssuerClient, signer: AssertionSigner) -> None:
    """Application keys prove themselves as a client assertion at the
    introspection endpoint (docs/zitadel.md §1)."""
    if key.kind != KeyKind.APPLICATION:
        raise ValueError("prove_application_key needs an application key")
    assertion = signer.sign(key, client.discover().issuer)
    explained(key, signer, lambda: client.introspect(assertion))


def proof_request(
    key: KeyFile, client: IssuerClient, signer: AssertionSigner, scopes: Sequence[str]
) -> Prepared[Any]:
    """The request that proves ``key`` works, for ``IssuerClient.send`` or a
    multiplexed round: a token request for a service user's key, an
    introspection call with a client assertion for an application key
    (``mint`` and ``prove_application_key`` send the same)."""
    assertion = signer.sign(key, client.discover().issuer)
    if key.kind == KeyKind.APPLICATION:
        return client.introspection_request(assertion)
    return client.token_request(assertion, scopes)


def explained(key: KeyFile, signer: AssertionSigner, run: Callable[[], T]) -> T:
    """``run()``, with a rejection diagnosed for ``key`` (``explain``)."""
    try:
        return run()
    except IssuerRejected as exc:
        raise explain(exc, key, signer.now()) from None


def diagnose(
    key: KeyFile, now: datetime, *, server_date: datetime | None = None, error_code: str | None = None
) -> str:
    """Why was this key rejected, as far as we can tell from here?"""
    if key.expires_at is not None and not key.expiry.never and now >= key.expires_at:
        return "expired"
    if server_date is not None and abs(server_date - now) > SKEW_SUSPECT:
        return "clock_skew"
    if error_code in ("invalid_request", "unsupported_grant_type", "invalid_scope"):
        return "malformed"
    return "revoked_or_unknown"


def explain(exc: IssuerRejected, key: KeyFile, now: datetime) -> IssuerRejected:
    """A new ``IssuerRejected`` carrying the diagnosis in data and words."""
    diagnosis = diagnose(key, now, server_date=exc.server_date, error_code=exc.error_code)
    skew = abs((exc.server_date - now).total_seconds()) if exc.server_date else 0.0
    expiry = key.expires_at.isoformat() if key.expires_at else "?"
    hint = DIAGNOSES[diagnosis].format(expiry=expiry, skew=skew, code=exc.error_code)
    return IssuerRejected(
        exc.issuer,
        f"{key.source}: key {key.key_id} of {key.principal}: {hint} [{exc.message}]",
        status=exc.status,
        error_code=exc.error_code,
        diagnosis=diagnosis,
        server_date=exc.server_date,
    )
