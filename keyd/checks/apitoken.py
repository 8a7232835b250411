"""keyd's own access token for ZITADEL's API (docs/zitadel.md §4–5).

keyd authenticates as its own service user: the key file named by
``rotation.credential`` (a path or a systemd credential, never inline),
JWT-bearer grant with the scopes ``openid`` and
``urn:zitadel:iam:org:project:id:zitadel:aud`` through the same ``mint``
code that probes keys. The access token lives in memory only and is
reused until 2/3 of its lifetime has passed; the key file is re-read
whenever a new token is needed, so a credential rotated on disk is picked
up without a restart. ``invalidate`` drops a token the API refused.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import mint
from keyd.clients.issuer import IssuerClient, TokenResponse
from keyd.clients.zitadel import API_SCOPES, ZitadelKeyAPI
from keyd.clock import Clock
from keyd.config import Config
from keyd.errors import (
    ConfigError,
    IssuerError,
    KeyFileError,
    ZitadelApiDenied,
    ZitadelApiUnavailable,
)
from keyd.redact import Secret
from keyd.sources.keyfile import read_keyfile
from keyd.vocab import KeyKind

REUSE_SHARE = 2 / 3


class ApiTokenProvider:
    """A ``keyd.clients.zitadel.TokenSource``; thread-safe (one mint at a time)."""

    def __init__(self, credential: Path, issuer: IssuerClient, signer: AssertionSigner, clock: Clock) -> None:
        self.credential = Path(credential)
        self._issuer, self._signer, self._clock = issuer, signer, clock
        self._lock = threading.Lock()
        self._token: TokenResponse | None = None
        self._principal: str | None = None
        self.mints = 0  # tokens minted so far (for tests and metrics)

    @property
    def principal(self) -> str:
        """keyd's service user id, once its key file was read (else the file)."""
        return self._principal or f"(of {self.credential})"

    def token(self) -> Secret:
        with self._lock:
            current = self._token
            if current is not None and self._clock.now() < _renew_at(current):
                return current.access_token
            self._token = self._mint()
            return self._token.access_token

    def invalidate(self, token: Secret) -> None:
        with self._lock:
            if self._token is not None and self._token.access_token == token:
                self._token = None

    def _mint(self) -> TokenResponse:
        call = "API token"
        try:
            key = read_keyfile(self.credential, validate="quick")
        except KeyFileError as exc:
            raise ZitadelApiDenied(
                call, f"keyd's API credential (rotation.credential) is unusable: {exc}"
            ) from None
        if key.kind != KeyKind.SERVICE_ACCOUNT:
            raise ZitadelApiDenied(
                call,
                f"rotation.credential {self.credential} is an {key.kind} key; keyd needs a service-user key",
            )
        self._principal = key.principal
        try:
            response = mint(key, self._issuer, self._signer, API_SCOPES)
        except IssuerError as exc:
            cls = ZitadelApiUnavailable if exc.retryable else ZitadelApiDenied
            raise cls(
                call,
                f"keyd's service user cannot get an access token (rotation.credential): {exc}",
                user_id=key.principal,
                key_id=key.key_id,
                status=exc.status,
            ) from None
        self.mints += 1
        return response


def _renew_at(token: TokenResponse) -> datetime:
    return token.issued_at + (token.expires_at - token.issued_at) * REUSE_SHARE


def key_api_for(
    config: Config, issuer: IssuerClient, clock: Clock, *, credential: Path | None = None
) -> ZitadelKeyAPI:
    """The key-API client for ``config``: base URL ``issuer.url``, keyd's
    token from ``credential`` (a source's own) or ``rotation.credential``.
    The caller closes it."""
    credential = credential or (config.rotation.credential if config.rotation else None)
    if config.issuer is None or credential is None:
        raise ConfigError(
            "rotation.credential",
            "ZITADEL's key API needs [issuer] and the key "
            "file of keyd's own service user (rotation.credential or the "
            "systemd credential zitadel-api-key)",
        )
    signer = AssertionSigner(clock, lifetime=config.issuer.assertion_lifetime, skew=config.issuer.clock_skew)
    tokens = ApiTokenProvider(credential, issuer, signer, clock)
    timeout = config.issuer.timeout.total_seconds()
    return ZitadelKeyAPI(
        config.issuer.url,
        tokens,
        clock=clock,
        timeout=timeout,
        deadline=3 * timeout,
        ca_bundle=config.issuer.ca_bundle,
    )
