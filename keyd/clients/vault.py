"""Vault / OpenBao client: KV v2 and keyd's own token (the only hvac importer).

Contract:

* ``VaultClient(cfg, clock)`` talks to one server with a finite timeout,
  TLS verification on unless ``cfg.verify`` is false (``cfg.ca_bundle``
  names a CA file) and ``cfg.namespace`` sent on every request. Nothing is
  taken from ``VAULT_*`` environment variables or ``~/.vault-token``: the
  config loader already decided where the token comes from.
* Every operation first calls ``ensure_token()``: keyd renews its own token
  when less than a third of its TTL (or a floor) remains, logs in again
  with AppRole when renewal is refused or exhausted, and fails with
  ``VaultAuthFailed`` when a plain token is dead (it cannot log in again).
* A 403 during an operation is checked with lookup-self: a dead token means
  re-login (AppRole) and one retry, or ``VaultAuthFailed``; a live token
  means the policy denies that path: ``VaultDenied`` naming it.
* Errors are mapped to types (``keyd.errors``): 403/401 → ``VaultDenied``,
  CAS mismatch → ``VaultConflict``, 404 → ``None`` / empty, everything else
  (sealed, 5xx, connection, timeout, TLS, odd answers) → ``VaultUnavailable``.
  Messages are rebuilt here from the path and Vault's short error list,
  scrubbed; hvac/requests exception texts (URLs, bodies) never pass
  through, and the token and secret data never appear in any message or log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import hvac  # noqa: TID251 - this module is the one hvac importer
import hvac.exceptions as hx  # noqa: TID251
import requests

from keyd.clients.deadline import DeadlineSession
from keyd.clients.vault_model import (
    TOKEN_HELP,
    TokenTimer,
    VaultHealth,
    VaultMetadata,
    VaultSecret,
    check_auth_config,
    health_from,
    list_keys,
    metadata_from,
    norm_prefix,
    num,
    secret_from,
    transport_problem,
    url_path,
    vault_ref,
    walk_tree,
)
from keyd.clock import Clock
from keyd.config import VaultConfig
from keyd.errors import (
    VaultAuthFailed,
    VaultConflict,
    VaultDenied,
    VaultError,
    VaultUnavailable,
)
from keyd.redact import REDACTED, Secret, scrub

__all__ = ["VaultClient", "VaultHealth", "VaultMetadata", "VaultSecret"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CAS_MISMATCH = "check-and-set parameter did not match"  # not "... required": that is no conflict
POOL_SIZE = 16  # keep-alive connections kept per server; at least the token write-back pool


class _Unsupported(Exception):
    """OpenBao's detailed-metadata listing is not available here; ``server``:
    not on this server at all (no such endpoint, or an odd answer), as
    opposed to a missing folder or a policy denying that folder."""

    def __init__(self, *, server: bool = False, denied: bool = False) -> None:
        self.server, self.denied = server, denied
        super().__init__()


class VaultClient:
    """KV v2 operations with keyd's own token kept alive. Thread-safe for
    token handling (one lock); close() when done."""

    def __init__(
        self,
        cfg: VaultConfig,
        clock: Clock,
        *,
        session: requests.Session | None = None,
        max_connections: int = POOL_SIZE,
    ) -> None:
        check_auth_config(cfg)
        self._cfg = cfg
        self._clock = clock
        verify: bool | str = (str(cfg.ca_bundle) if cfg.ca_bundle else True) if cfg.verify else False
        if session is None:  # every request: a total deadline of vault.timeout
            session = DeadlineSession(cfg.timeout.total_seconds(), pool_maxsize=max(1, max_connections))
        verify = _pin_environment(session, cfg.addr, verify)
        session.verify = verify  # hvac prefers a given session's verify over its argument
        self._hvac = hvac.Client(
            url=cfg.addr,
            token="",
            verify=verify,
            timeout=max(1, round(cfg.timeout.total_seconds())),
            namespace=cfg.namespace,
            session=session,
        )
        self._lock = threading.RLock()
        self._token: Secret | None = None
        self._timer = TokenTimer()
        self._detailed: bool | None = None  # OpenBao detailed-metadata listing works?
        self._no_detailed = False  # the server has no detailed-metadata listing at all
        self._denied_folders: set[tuple[str, str]] = set()  # detailed listing denied there

    # --- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        self._hvac.adapter.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def addr(self) -> str:
        return self._cfg.addr

    # --- keyd's own token ----------------------------------------------------

    def ensure_token(self) -> None:
        """Make sure keyd holds a usable token: log in / look it up the first
        time, renew it when a third of its TTL (or the floor) is left, log in
        again (AppRole) when it cannot be renewed. Raises ``VaultAuthFailed``
        when no usable token can be had, ``VaultUnavailable`` on outages."""
        with self._lock:
            if self._token is None:
                self._authenticate()
            elif self._timer.due(self._clock.now()):
                self._refresh()

    def _authenticate(self) -> None:
        if self._cfg.auth == "approle":
            self._login()
            return
        assert self._cfg.token is not None  # check_auth_config
        self._use_token(self._cfg.token)
        if not self._lookup_self():
            self._token = None
            raise VaultAuthFailed(
                f"Vault at {self.addr} rejected keyd's token (expired, revoked or wrong): {TOKEN_HELP}"
            )
        log.info("vault: using token auth at %s", self.addr)

    def _use_token(self, token: Secret) -> None:
        self._token = token
        self._hvac.token = token.reveal()
        self._timer.reset()

    def _login(self) -> None:
        assert self._cfg.role_id is not None and self._cfg.secret_id is not None
        mount = self._cfg.approle_mount
        self._token = None
        self._hvac.token = ""
        try:
            resp = self._hvac.auth.approle.login(
                role_id=self._cfg.role_id.reveal(),
                secret_id=self._cfg.secret_id.reveal(),
                use_token=False,
                mount_point=mount,
            )
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest):
            raise VaultAuthFailed(
                f"Vault at {self.addr} refused keyd's AppRole login (auth/{mount}): check "
                "vault.role_id_file and vault.secret_id_file (a secret_id can expire or be "
                "used up)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - mapped to a typed, scrubbed error
            raise self._translate(exc, "log in with AppRole at", f"auth/{mount}") from None
        auth = resp.get("auth") if isinstance(resp, dict) else None
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
            raise VaultUnavailable(f"Vault at {self.addr} answered the AppRole login without a token")
        self._use_token(Secret(auth["client_token"]))
        ttl = num(auth.get("lease_duration"))
        self._timer.set(ttl, ttl, bool(auth.get("renewable")), self._clock.now())
        log.info("vault: logged in with AppRole at %s (token TTL %ds)", self.addr, int(ttl))

    def _lookup_self(self) -> bool:
        """Refresh TTL facts from the server; False when the token is dead."""
        try:
            resp = self._hvac.auth.token.lookup_self()
        except (hx.Forbidden, hx.Unauthorized):
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "look up keyd's token at", "auth/token/lookup-self") from None
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise VaultUnavailable(f"Vault at {self.addr} answered lookup-self without data")
        ttl = num(data.get("ttl"))
        grant = num(data.get("period")) or num(data.get("creation_ttl")) or ttl
        self._timer.set(ttl, grant, bool(data.get("renewable")), self._clock.now())
        return True

    def _refresh(self) -> None:
        """Renewal is due. The server decides, not keyd's clock: TTLs are
        whole seconds and clocks skew, so a token keyd thinks dead is still
        offered for renewal, and looked up before giving up on it."""
        timer = self._timer
        if timer.renewable and not timer.exhausted:
            if self._renew() and not timer.due(self._clock.now()):
                return
            timer.exhausted = True  # refused, or capped by the token's max TTL
        if self._cfg.auth == "approle":
            self._login()
            return
        remaining = timer.remaining(self._clock.now())
        if remaining <= 0 and not (self._lookup_self() and timer.remaining(self._clock.now()) > 0):
            raise VaultAuthFailed(f"keyd's Vault token has expired and cannot be renewed: {TOKEN_HELP}")
        if not timer.warned:
            log.warning(
                "vault: keyd's token expires in %ds and cannot be renewed: %s",
                int(timer.remaining(self._clock.now())),
                TOKEN_HELP,
            )
            timer.warned = True

    def _renew(self) -> bool:
        try:
            resp = self._hvac.auth.token.renew_self()
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest):
            log.info("vault: renewal of keyd's token was refused")
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "renew keyd's token at", "auth/token/renew-self") from None
        auth = resp.get("auth") if isinstance(resp, dict) else None
        if not isinstance(auth, dict):
            return False
        ttl = num(auth.get("lease_duration"))
        timer = self._timer
        timer.set(ttl, max(timer.grant, ttl), bool(auth.get("renewable")), self._clock.now())
        log.info("vault: renewed keyd's token (TTL now %ds)", int(ttl))
        return True

    # --- the operation wrapper ----------------------------------------------

    def _call(self, what: str, ref: str, fn: Callable[[], T]) -> T:
        """Run one hvac call with a live token and typed errors. A 403 from a
        dead token re-logs in (AppRole) and retries once."""
        self.ensure_token()
        try:
            return self._attempt(what, ref, fn)
        except VaultAuthFailed:
            raise
        except VaultDenied:
            with self._lock:
                if self._lookup_self():
                    raise
                if self._cfg.auth != "approle":
                    raise VaultAuthFailed(
                        f"Vault at {self.addr} no longer accepts keyd's "
                        f"token (expired or revoked): {TOKEN_HELP}"
                    ) from None
                log.info("vault: keyd's token was revoked or expired; logging in again")
                self._login()
            return self._attempt(what, ref, fn)

    def _attempt(self, what: str, ref: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except _Unsupported:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed error
            raise self._translate(exc, what, ref) from None

    def _translate(self, exc: BaseException, what: str, ref: str) -> VaultError:
        """Build a keyd error from an hvac/requests failure without copying
        its text (URLs, bodies): only Vault's short error strings, scrubbed."""
        where = f"{what} {ref}"
        if isinstance(exc, VaultError):
            return exc
        if isinstance(exc, (hx.Forbidden, hx.Unauthorized)):
            return VaultDenied(
                f"Vault denied keyd to {where}: permission denied (check the "
                "policy attached to keyd's Vault token)",
                path=ref,
            )
        if isinstance(exc, hx.InvalidRequest) and _CAS_MISMATCH in self._errors(exc):
            return VaultConflict(
                f"cannot {where}: it was changed by someone else (check-and-set version mismatch)", path=ref
            )
        if isinstance(exc, hx.VaultDown):
            detail = self._errors(exc) or "sealed or in maintenance"
            return VaultUnavailable(
                f"Vault at {self.addr} is unavailable (503: {detail}); could not {where}", path=ref
            )
        if isinstance(exc, hx.VaultError):
            status = _status_of(exc)
            detail = self._errors(exc) or "no detail"
            return VaultUnavailable(f"Vault at {self.addr} failed to {where} ({status}: {detail})", path=ref)
        return VaultUnavailable(
            f"Vault at {self.addr}: could not {where}: {transport_problem(exc, self._cfg.timeout)}", path=ref
        )

    def _errors(self, exc: hx.VaultError) -> str:
        errors = exc.errors if isinstance(exc.errors, list) else []
        text = "; ".join(" ".join(str(e).split()) for e in errors[:3])[:300]
        if self._token:
            text = text.replace(self._token.reveal(), REDACTED)
        return scrub(text)

    # --- KV v2 ---------------------------------------------------------------

    def list_recursive(self, mount: str, prefix: str) -> list[str]:
        """All secret paths under ``prefix`` (relative to the mount, sorted).
        A missing prefix is an empty list; a denied listing raises."""

        def folder(name: str) -> list[tuple[str, None]]:
            def op() -> list[str]:
                try:
                    resp = self._hvac.secrets.kv.v2.list_secrets(path=name, mount_point=mount)
                except hx.InvalidPath:
                    return []
                return list_keys(resp)

            return [(key, None) for key in self._call("list", vault_ref(mount, name), op)]

        return sorted(walk_tree(mount, norm_prefix(prefix), folder))

    def list_versions(self, mount: str, prefix: str) -> dict[str, VaultMetadata | None]:
        """Secret paths under ``prefix`` with their metadata when the server
        can give it in the listing (OpenBao ``detailed-metadata``: one call
        per folder instead of one per secret), else mapped to ``None``."""
        prefix = norm_prefix(prefix)
        if self._detailed is not False and not self._no_detailed:
            try:
                found = walk_tree(mount, prefix, lambda name: self._detailed_folder(mount, name))
                self._detailed = True
                return found
            except _Unsupported as exc:
                self._no_detailed = self._no_detailed or exc.server
                if exc.server or exc.denied:
                    self._detailed = False  # no endpoint, odd answer or denied: plain LIST
        return dict.fromkeys(self.list_recursive(mount, prefix))

    def folder_versions(self, mount: str, folder: str) -> dict[str, VaultMetadata | None] | None:
        """The entries of ONE folder (not recursive; subfolders end in ``/``)
        with their metadata, from a single OpenBao ``detailed-metadata``
        listing: how token write-back reads back a whole round of writes.
        None when that listing is not available (HashiCorp Vault, a policy
        without ``list`` there, a missing folder, an outage): the caller
        then reads each secret. A denied folder is not asked again."""
        folder = norm_prefix(folder)
        if self._no_detailed or (mount, folder) in self._denied_folders:
            return None
        try:
            found = dict(self._detailed_folder(mount, folder))
        except _Unsupported as exc:
            if exc.server:
                self._no_detailed = True
            elif exc.denied:
                self._denied_folders.add((mount, folder))
            return None
        except VaultAuthFailed:
            raise
        except VaultError as exc:
            log.info(
                "vault: detailed listing of %s failed (%s); reading per secret", vault_ref(mount, folder), exc
            )
            return None
        return found

    def _detailed_folder(self, mount: str, folder: str) -> list[tuple[str, VaultMetadata | None]]:
        url = f"/v1/{url_path(mount)}/detailed-metadata/{url_path(folder)}"

        def op() -> Any:
            try:
                return self._hvac.adapter.list(url)
            except hx.InvalidPath:
                raise _Unsupported from None  # missing prefix, or no such endpoint: ask LIST
            except (hx.InvalidRequest, hx.UnsupportedOperation, hx.UnexpectedError):
                raise _Unsupported(server=True) from None  # 400/405: HashiCorp Vault

        try:
            resp = self._call("list", vault_ref(mount, folder), op)
        except VaultAuthFailed:
            raise
        except VaultDenied:  # policies written for metadata/ only
            raise _Unsupported(denied=True) from None
        info = resp.get("data", {}).get("key_info") if isinstance(resp, dict) else None
        if not isinstance(info, dict):
            raise _Unsupported(server=True)
        return [
            (key, self._metadata(info[key]) if isinstance(info.get(key), dict) else None)
            for key in list_keys(resp)
        ]

    def read(self, mount: str, path: str) -> VaultSecret | None:
        """The current version, or None if absent, deleted or destroyed."""

        def op() -> Any:
            try:
                return self._hvac.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                )
            except hx.InvalidPath:
                return None

        return secret_from(self._call("read", vault_ref(mount, path), op), vault_ref(mount, path))

    def read_metadata(self, mount: str, path: str) -> VaultMetadata | None:
        """Current version and custom metadata, or None if there is none."""

        def op() -> Any:
            try:
                return self._hvac.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
            except hx.InvalidPath:
                return None

        resp = self._call("read metadata of", vault_ref(mount, path), op)
        body = resp.get("data") if isinstance(resp, dict) else None
        return self._metadata(body) if isinstance(body, dict) else None

    def _metadata(self, body: Mapping[str, Any]) -> VaultMetadata:
        return metadata_from(body, self._clock.now())

    def write_cas(
        self,
        mount: str,
        path: str,
        data: Mapping[str, Any],
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Write a new version only if the current one is ``cas`` (0: the
        secret must not exist) and set ``custom_metadata`` if given. Returns
        the new version; raises ``VaultConflict`` on a mismatch.

        KV v2 stores metadata apart from data, so this is two writes. When
        creating (cas=0) the metadata goes first: a crash in between leaves
        an empty secret already marked (e.g. as keyd's), never keyd's data
        unmarked, which would look like someone else's secret next time.
        When updating, data goes first so a lost CAS race changes nothing."""
        ref = vault_ref(mount, path)
        if cas == 0 and custom_metadata is not None:
            existing = self.read_metadata(mount, path)
            if existing is not None and existing.current_version > 0:
                raise VaultConflict(
                    f"cannot create {ref}: it already exists (version {existing.current_version})", path=ref
                )
            self.write_metadata(mount, path, custom_metadata)

        def op() -> Any:
            return self._hvac.secrets.kv.v2.create_or_update_secret(
                path=path, secret=dict(data), cas=cas, mount_point=mount
            )

        resp = self._call("write", ref, op)
        body = resp.get("data") if isinstance(resp, dict) else None
        version = int(num(body.get("version"))) if isinstance(body, dict) else 0
        if version <= 0:
            raise VaultUnavailable(f"Vault did not report the new version of {ref}", path=ref)
        if cas != 0 and custom_metadata is not None:
            self.write_metadata(mount, path, custom_metadata)
        return version

    def write_metadata(self, mount: str, path: str, custom_metadata: Mapping[str, str]) -> None:
        """Replace the secret's custom metadata (other settings untouched)."""
        url = f"/v1/{url_path(mount)}/metadata/{url_path(path)}"
        payload = {"custom_metadata": {str(k): str(v) for k, v in custom_metadata.items()}}
        self._call(
            "write metadata of", vault_ref(mount, path), lambda: self._hvac.adapter.post(url, json=payload)
        )

    def health(self) -> VaultHealth:
        """Server state; no token needed. Raises ``VaultUnavailable`` if unreachable."""

        def op() -> Any:
            return self._hvac.adapter.get("/v1/sys/health", raise_exception=False)

        resp = self._attempt("read health of", "sys/health", op)
        body: Any = resp
        if isinstance(resp, requests.Response):
            try:
                body = resp.json()
            except ValueError:
                body = None
        return health_from(body, self.addr)


# --- helpers -----------------------------------------------------------------


def _pin_environment(session: requests.Session, addr: str, verify: bool | str) -> bool | str:
    """Resolve what requests would take from the environment (proxy
    variables and ``no_proxy`` for ``addr``, ``REQUESTS_CA_BUNDLE`` when
    ``verify`` is plain True) once, pin it on ``session`` and stop
    consulting the environment per request. Same behaviour, but requests
    otherwise re-scans ``os.environ`` on every call, which was a fifth of
    keyd's client CPU per Vault request (bench/probe.py). Netrc
    credentials are no longer attached: keyd authenticates with
    X-Vault-Token, never with basic auth."""
    if not session.trust_env:
        return verify
    settings = session.merge_environment_settings(addr, {}, None, verify, None)
    session.proxies.update(settings.get("proxies") or {})
    session.trust_env = False
    pinned: bool | str = settings.get("verify", verify)
    return pinned


def _status_of(exc: hx.VaultError) -> str:
    names = {
        hx.InvalidRequest: "400",
        hx.InvalidPath: "404",
        hx.RateLimitExceeded: "429",
        hx.InternalServerError: "500",
        hx.VaultNotInitialized: "501",
        hx.BadGateway: "502",
        hx.PreconditionFailed: "412",
    }
    return names.get(type(exc), "HTTP error")
