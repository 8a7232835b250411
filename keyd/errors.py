"""keyd's error root (docs/architecture.md rule 5).

Every error keyd raises on purpose subclasses ``KeydError``: it carries
data, formats its own message, says whether retrying can help
(``retryable``) and which exit code the CLI uses. Callers branch on types
and attributes, never on message text. Messages never contain secrets.

The tree (classes defined in another module name it; the rest live here;
tests/unit/test_errors_tree.py keeps this list complete)::

    KeydError
    ├── ConfigError
    │   ├── UsageError
    │   └── TokenPathError            actions/tokenvault.py
    ├── KeyFileError
    ├── KeyUnavailable                checks/keyload.py
    ├── DirectoryUnavailable          sources/directory.py
    │   └── DirectoryVanished         sources/directory.py
    ├── IssuerError
    │   ├── IssuerRejected
    │   ├── IssuerUnavailable
    │   └── IssuerBadResponse
    │       └── IssuerDiscoveryRefused
    ├── ZitadelApiError
    │   ├── ZitadelApiTransient
    │   │   ├── ZitadelApiUnavailable
    │   │   ├── ZitadelApiBadResponse
    │   │   └── ZitadelListingDoubtful
    │   └── ZitadelApiPermanent
    │       ├── ZitadelApiDenied
    │       ├── ZitadelApiNotFound
    │       └── ZitadelApiRejected
    ├── VaultError
    │   ├── VaultUnavailable
    │   ├── VaultDenied
    │   │   └── VaultAuthFailed
    │   ├── VaultConflict
    │   ├── VaultUnmanaged
    │   └── TokenTargetRefused        actions/tokenvault.py
    ├── StoreError
    │   ├── DriverMissing
    │   ├── DatabaseUnusable
    │   ├── SchemaBehind
    │   │   └── DatabaseMissing
    │   ├── SchemaAhead
    │   └── InventoryConflict         store/inventory.py
    ├── LockHeld
    ├── MailError
    ├── WebhookError                  clients/webhook.py
    ├── Undeliverable                 actions/deliver.py
    ├── _NotConfigured                actions/deliver.py
    ├── TokenFileError                actions/filesink.py
    ├── PublishConflict               actions/publish.py
    ├── PublishError                  actions/publish.py
    └── HookFailed                    actions/hooks.py
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from keyd.text import path_text, storable

# CLI exit codes (documented in `keyd --help`).
EXIT_OK = 0
EXIT_WARNING = 1  # `keyd check`: a key needs attention soon
EXIT_CRITICAL = 2  # `keyd check`: critical; other commands: invalid input
EXIT_UNKNOWN = 3  # `keyd check`: state cannot be determined
EXIT_CONFIG = 4  # configuration or usage error
EXIT_REJECTED = 5  # the issuer rejected the key
EXIT_UNAVAILABLE = 6  # issuer/Vault/DB/SMTP unreachable: retry later
EXIT_BAD_RESPONSE = 7  # the issuer answered something unusable
EXIT_INTERNAL = 8  # an unexpected error (a bug, or a fault keyd has no words for): see --debug


def internal_error_text(exc: BaseException) -> str:
    """One line for an error that is not a ``KeydError``: its type and the
    first line of its text (scrubbed of tokens and keys, cut short)."""
    from keyd.redact import scrub

    lines = scrub(str(exc)).strip().splitlines()
    detail = f": {lines[0][:200]}" if lines else ""
    return f"internal error: {type(exc).__name__}{detail}; run with --debug"


class KeydError(Exception):
    """Base of all keyd errors."""

    retryable: bool = False
    exit_code: int = EXIT_CRITICAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(KeydError):
    """The configuration is wrong. ``where`` names the file and key."""

    exit_code = EXIT_CONFIG

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


class UsageError(ConfigError):
    """A command-line value is wrong (e.g. ``--at`` cannot be parsed)."""


class KeyFileError(KeydError):
    """A key file (or Vault secret holding one) cannot be used.

    ``source`` is the file path or Vault path; ``problem`` is what is wrong,
    in words an operator can act on. Never contains key material.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = path_text(str(source))  # a non-UTF-8 file name stays storable
        self.problem = storable(problem)
        super().__init__(f"{self.source}: {problem}")


class IssuerError(KeydError):
    """Base of token-endpoint outcomes other than success."""

    def __init__(
        self, issuer: str, message: str, *, status: int | None = None, error_code: str | None = None
    ) -> None:
        self.issuer = issuer
        self.status = status
        self.error_code = error_code
        super().__init__(message)


class IssuerRejected(IssuerError):
    """The issuer answered with an OAuth error body: this key is refused
    (docs/zitadel.md §4; includes the 500 ``server_error`` of older versions)."""

    exit_code = EXIT_REJECTED

    def __init__(
        self,
        issuer: str,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        diagnosis: str = "revoked_or_unknown",
        server_date: datetime | None = None,
    ) -> None:
        self.diagnosis = diagnosis
        self.server_date = server_date  # the issuer's Date header, for clock-skew diagnosis
        super().__init__(issuer, message, status=status, error_code=error_code)


class IssuerUnavailable(IssuerError):
    """Connection error, timeout or 502/503/504: never the key's fault.
    The message always says so ("issuer unavailable: …"), whatever the
    caller (``keyd mint`` against a stopped issuer used to print only
    "discovery … failed: ConnectError")."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE

    def __init__(
        self, issuer: str, message: str, *, status: int | None = None, error_code: str | None = None
    ) -> None:
        if not message.startswith(_UNAVAILABLE):
            message = _UNAVAILABLE + message
        super().__init__(issuer, message, status=status, error_code=error_code)


_UNAVAILABLE = "issuer unavailable: "


class IssuerBadResponse(IssuerError):
    """The issuer answered, but not with something usable (HTML, no token,
    oversized body, broken discovery document)."""

    retryable = True
    exit_code = EXIT_BAD_RESPONSE


class ZitadelApiError(KeydError):
    """Base of ZITADEL key-API failures (docs/zitadel.md §5). Carries the
    call (``AddKey``, ``ListKeys``, ``RemoveKey``), the user, key and
    organization it concerned, and the HTTP status; the message names them."""

    def __init__(
        self,
        call: str,
        problem: str,
        *,
        user_id: str | None = None,
        key_id: str | None = None,
        organization_id: str | None = None,
        status: int | None = None,
        zitadel_error: str | None = None,
    ) -> None:
        self.call, self.problem, self.status = call, problem, status
        self.user_id, self.key_id, self.organization_id = user_id, key_id, organization_id
        self.zitadel_error = zitadel_error  # e.g. "Errors.AuthNKey.ExpireBeforeNow"
        about = [
            f"{name} {value}"
            for name, value in (("user", user_id), ("key", key_id), ("organization", organization_id))
            if value
        ]
        target = f" ({', '.join(about)})" if about else ""
        super().__init__(f"ZITADEL {call}{target}: {problem}")


class ZitadelApiTransient(ZitadelApiError):
    """Retrying later can help: unreachable, timeout, 429/5xx, a garbled answer."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class ZitadelApiUnavailable(ZitadelApiTransient):
    """Connection error, timeout, total deadline passed, 429 or 5xx."""


class ZitadelApiBadResponse(ZitadelApiTransient):
    """An answer that is not what the API documents (HTML, wrong shape)."""

    exit_code = EXIT_BAD_RESPONSE


class ZitadelListingDoubtful(ZitadelApiTransient):
    """A listing in which an organization or user lists no key at all while
    keyd holds key files of it: ZITADEL hides keys of users the caller may
    not read instead of answering 403, so nothing is applied."""


class ZitadelApiPermanent(ZitadelApiError):
    """Retrying the same call cannot help until someone changes something."""


class ZitadelApiDenied(ZitadelApiPermanent):
    """401/403, or keyd's own service user cannot authenticate: the message
    says which user lacks which permission on which organization."""

    exit_code = EXIT_CONFIG


class ZitadelApiNotFound(ZitadelApiPermanent):
    """404: the user does not exist (or is not a machine user)."""


class ZitadelApiRejected(ZitadelApiPermanent):
    """400 and other refusals of the request itself (an expiry in the past:
    ``Errors.AuthNKey.ExpireBeforeNow``; an invalid public key)."""


class IssuerDiscoveryRefused(IssuerBadResponse):
    """Discovery names an ``issuer`` other than the configured URL, or a
    token/introspection endpoint on another origin that
    ``issuer.allow_endpoints`` does not list: keyd refuses to send a signed
    assertion there. A configuration matter, not an outage."""

    retryable = False
    exit_code = EXIT_CONFIG


class VaultError(KeydError):
    """Base of Vault failures. ``path`` is mount/path where relevant."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class VaultUnavailable(VaultError):
    """Sealed, unreachable, timing out, 5xx."""

    retryable = True


class VaultDenied(VaultError):
    """403: the policy does not allow this path, or the token is invalid."""


class VaultAuthFailed(VaultDenied):
    """keyd's own Vault token is unusable (expired, revoked, login refused):
    nothing under any path can be read, so a caller must treat the whole
    source as failed, never one secret as "denied"."""


class VaultConflict(VaultError):
    """Check-and-set failed: someone else wrote the secret."""

    retryable = True


class VaultUnmanaged(VaultError):
    """The target secret exists and is not managed by keyd."""


class StoreError(KeydError):
    """The database cannot be used."""

    exit_code = EXIT_UNAVAILABLE
    retryable = True


class DriverMissing(StoreError):
    """The database URL needs a driver this installation lacks (psycopg for
    PostgreSQL comes with the ``keyd[postgres]`` extra). Retrying cannot help."""

    exit_code = EXIT_CONFIG
    retryable = False


class DatabaseUnusable(StoreError):
    """``database.url`` names something keyd can never use: an unsupported
    backend (``mysql://``), or a file that is not a SQLite database. A
    configuration error, not an outage: retrying cannot help."""

    exit_code = EXIT_CONFIG
    retryable = False


class SchemaBehind(StoreError):
    """The database schema is older than this keyd: run ``keyd db upgrade``."""

    exit_code = EXIT_CONFIG
    retryable = False


class DatabaseMissing(SchemaBehind):
    """A read-only command found no SQLite file where the URL points; it
    does not create one (only ``keyd db upgrade`` does)."""


class SchemaAhead(StoreError):
    """The database was migrated by a newer keyd than this one: upgrade keyd
    (running an older keyd against a newer schema could corrupt data)."""

    exit_code = EXIT_CONFIG
    retryable = False


class LockHeld(KeydError):
    """Another daemon owns this inventory (SQLite file lock)."""

    exit_code = EXIT_CONFIG


class MailError(KeydError):
    """Sending e-mail failed; ``stage`` says where (connect, tls, auth, send)."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, stage: str, retryable: bool = True) -> None:
        self.stage = stage
        self.retryable = retryable
        super().__init__(message)
