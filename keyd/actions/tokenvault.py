"""Token write-back, the Vault half: path templates, what is at the target
path now, and whether keyd may write there (README "Validation probe and token write-back").

Ownership rules:
- keyd marks its secrets with ``custom_metadata`` ``managed-by=keyd`` and
  ``key-id``; for a new secret the metadata is written *before* the first
  version, so a crash never leaves a keyd secret that looks foreign.
- A secret without that mark is not keyd's: keyd refuses to write there
  unless ``tokens.adopt`` is set.
- A managed secret whose current version is not the one keyd last wrote
  is still keyd's if it has keyd's shape (a write whose recording was lost
  in a crash, or another keyd daemon); otherwise someone else wrote it:
  a *conflict*, refused unless ``tokens.adopt``.

Read-back: KV v2 versions are immutable and keyd writes with
check-and-set, so once a write returned version N, metadata saying the
current version is still N (live, keyd's mark and key id) proves Vault
serves exactly what keyd wrote. ``listed`` judges one entry of an OpenBao
detailed-metadata folder listing that way; where it cannot tell, the
caller reads the secret back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from keyd.actions.alerts import email_recipients, message_id
from keyd.config import AlertsConfig
from keyd.errors import ConfigError, KeydError, VaultConflict, VaultError
from keyd.redact import Secret
from keyd.store.alerts import AlertSpec
from keyd.store.tokens import SinkTarget
from keyd.timeutil import isoformat_z, parse_rfc3339
from keyd.urls import display_url
from keyd.vocab import Channel, Severity, SinkState

MANAGED_BY = "managed-by"
MANAGED_VALUE = "keyd"
KEY_ID = "key-id"
FIELDS = ("access_token", "token_type", "expires_at", "issued_at", "key_id", "scope")
PLACEHOLDERS = ("principal", "key_id")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


class TokenVault(Protocol):
    """What write-back needs from ``keyd.clients.vault.VaultClient``."""

    def read(self, mount: str, path: str) -> Any: ...
    def read_metadata(self, mount: str, path: str) -> Any: ...
    def write_cas(
        self,
        mount: str,
        path: str,
        data: Mapping[str, Any],
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int: ...
    def write_metadata(self, mount: str, path: str, custom_metadata: Mapping[str, str]) -> None: ...
    def folder_versions(self, mount: str, folder: str) -> Mapping[str, Any] | None: ...


class TokenPathError(ConfigError):
    """A path template, or a value substituted into it, is unsafe."""


class TokenTargetRefused(VaultError):
    """keyd will not write this secret: ``reason`` is ``unmanaged`` or
    ``conflict``."""

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message, path=path)


def check_template(template: str) -> None:
    """Refuse templates that could escape their prefix or name nothing."""
    where = "tokens.path"
    if not template or template.startswith("/") or template.endswith("/"):
        raise TokenPathError(
            where, f'{template!r} must be a relative path like "zitadel/tokens/{{principal}}"'
        )
    for name in _PLACEHOLDER_RE.findall(template):
        if name not in PLACEHOLDERS:
            raise TokenPathError(
                where, f"{template!r}: unknown placeholder {{{name}}} (use {{principal}} or {{key_id}})"
            )
    bare = _PLACEHOLDER_RE.sub("x", template)
    if "{" in bare or "}" in bare:
        raise TokenPathError(where, f"{template!r}: unbalanced braces")
    if any(seg in ("", ".", "..") for seg in bare.split("/")) or _bad_chars(bare):
        raise TokenPathError(where, f"{template!r} has an empty, '.' or '..' segment or control characters")


def _bad_chars(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def render_path(template: str, *, principal: str, key_id: str) -> str:
    """The template with values substituted; a value containing ``/``,
    ``..`` or control characters (or an empty one) is refused, so a hostile
    key file cannot steer the write to another path."""
    check_template(template)
    values = {"principal": principal, "key_id": key_id}
    for name, value in values.items():
        if not value or "/" in value or ".." in value or _bad_chars(value) or value in (".",):
            shown = value.encode("unicode_escape").decode()[:60]
            raise TokenPathError(
                "tokens.path",
                f"{name} {shown!r} cannot be used in a Vault "
                "path ('/', '..' and control characters are "
                "not allowed)",
            )
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class Current:
    """What is at the target path now (never the token itself)."""

    version: int  # current KV version, 0 if none
    readable: bool  # a live current version exists
    managed: bool
    keyd_shaped: bool
    issued_at: datetime | None = None
    expires_at: datetime | None = None


def inspect(vault: TokenVault, mount: str, path: str) -> Current:
    """Read the current state of ``mount/path``: the metadata first (it
    answers "absent" and "not keyd's" on its own), the data only for a
    managed secret, whose shape and dates decide what keyd may do."""
    meta = vault.read_metadata(mount, path)
    if meta is None:
        return Current(version=0, readable=False, managed=False, keyd_shaped=False)
    custom = getattr(meta, "custom_metadata", {}) or {}
    managed = custom.get(MANAGED_BY) == MANAGED_VALUE
    version = int(getattr(meta, "current_version", 0) or 0)
    if getattr(meta, "deleted", False) or not managed:
        return Current(
            version=version, readable=not getattr(meta, "deleted", False), managed=managed, keyd_shaped=False
        )
    secret = vault.read(mount, path)
    if secret is None:  # deleted between the two reads
        return Current(version=version, readable=False, managed=True, keyd_shaped=False)
    data: Mapping[str, Any] = secret.data or {}
    issued, expires = _stamp(data.get("issued_at")), _stamp(data.get("expires_at"))
    token = data.get("access_token")
    shaped = (
        all(f in data for f in FIELDS)
        and isinstance(token, str)
        and bool(token)
        and issued is not None
        and expires is not None
    )
    return Current(
        version=int(secret.version),
        readable=True,
        managed=True,
        keyd_shaped=shaped,
        issued_at=issued,
        expires_at=expires,
    )


def _stamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        return None


def listed(meta: Any, *, version: int, key_id: str) -> str:
    """What one detailed-metadata listing entry says about keyd's write of
    ``version``: ``same`` (current version is that one, live, marked as
    keyd's for ``key_id``: Vault serves what keyd wrote), ``changed`` (another
    version is current, or it is deleted: someone wrote after keyd) or
    ``unknown`` (no entry, a deletion pending, or the mark differs: read
    the secret back to decide, as without a listing)."""
    if meta is None or getattr(meta, "deletion_pending", False):
        return "unknown"
    if int(getattr(meta, "current_version", 0) or 0) != version or getattr(meta, "deleted", False):
        return "changed"
    custom = getattr(meta, "custom_metadata", {}) or {}
    if custom.get(MANAGED_BY) != MANAGED_VALUE or custom.get(KEY_ID) != key_id:
        return "unknown"
    return "same"


def folder_of(mount: str, path: str) -> tuple[str, str]:
    """(mount, folder) of a secret path: what one listing covers."""
    return mount, path.rpartition("/")[0]


def folder_listings(
    vault: TokenVault, places: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Mapping[str, Any] | None]:
    """One detailed-metadata listing per distinct (mount, folder); None
    where the server or the policy does not offer it, or the listing failed
    (the per-secret read-backs then meet the problem and each sink records it)."""

    def one(mount: str, folder: str) -> Mapping[str, Any] | None:
        try:
            return vault.folder_versions(mount, folder)
        except KeydError:
            return None

    return {where: one(*where) for where in dict.fromkeys(places)}


def read_back(vault: TokenVault, mount: str, path: str, *, version: int, access_token: Secret) -> None:
    """Per-secret read-back: ``VaultConflict`` unless Vault serves keyd's
    write of ``version`` (that version, that token)."""
    back = vault.read(mount, path)
    if (
        back is None
        or back.version != version
        or (back.data or {}).get("access_token") != access_token.reveal()
    ):
        ref = f"{mount}/{path}"
        raise VaultConflict(f"read-back of {ref} does not show keyd's write (version {version})", path=ref)


def judge(current: Current, last_written: int | None, *, adopt: bool, ref: str) -> str:
    """``new`` (nothing there), ``ours`` or ``adopt``; raises
    ``TokenTargetRefused`` when keyd must not write."""
    if current.version == 0 and not current.managed:
        return "new"
    if not current.managed:
        if adopt:
            return "adopt"
        raise TokenTargetRefused(
            f"{ref} exists and is not managed by keyd (no custom_metadata {MANAGED_BY}="
            f"{MANAGED_VALUE}); keyd will not overwrite it. Remove it, choose another "
            "tokens.path, or set tokens.adopt = true",
            path=ref,
            reason=SinkState.UNMANAGED,
        )
    if current.version == last_written or not current.readable or current.keyd_shaped:
        return "ours"
    if adopt:
        return "adopt"
    raise TokenTargetRefused(
        f"{ref} version {current.version} was written by someone else (keyd last wrote "
        f"version {last_written}); keyd will not overwrite it. Delete it, or set "
        "tokens.adopt = true",
        path=ref,
        reason=SinkState.CONFLICT,
    )


def refusal_alert(
    sink: SinkTarget, alerts: AlertsConfig | None, reason: str, message: str, now: datetime
) -> AlertSpec | None:
    """The alert (with its outbox targets) for a refused write-back episode;
    None when no alert channel is configured."""
    if alerts is None:
        return None
    about = "token:" + hashlib.sha256(sink.ref.encode()).hexdigest()[:40]
    threshold = isoformat_z(now)  # one alert per episode
    sources = [loc.source for loc in sink.key.files]
    targets: list[tuple[str, str]] = []
    if alerts.email is not None:
        targets += [(Channel.EMAIL, a) for a in email_recipients(alerts.email, sink.key.principal, sources)]
    if alerts.webhook is not None:
        targets.append((Channel.WEBHOOK, display_url(alerts.webhook.url)))  # stored: no secret
    subject = (
        f"[keyd CRITICAL] token write-back for key {sink.key.key_id} of user "
        f"{sink.key.principal} refused: {sink.ref} is "
        f"{'not managed by keyd' if reason == SinkState.UNMANAGED else 'written by someone else'}"
    )
    context = {
        "key_id": sink.key.key_id,
        "principal": sink.key.principal,
        "path": sink.ref,
        "problem": message,
        "decided_at": threshold,
        "kind": reason,
        "severity": Severity.CRITICAL,
        "threshold": threshold,
    }
    return AlertSpec(
        about=about,
        kind=reason,
        threshold=threshold,
        severity=Severity.CRITICAL,
        message_id=message_id(about, reason, threshold),
        subject=subject,
        context=context,
        targets=targets,
    )
