"""``keyd check`` with token write-back to a real OpenBao: a dry run lists
the probe and the Vault write it skipped, mints no token and writes
nothing; the real run probes, mints and writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hvac.exceptions
import pytest
from sqlalchemy.engine import Engine

from keyd.cli import main
from keyd.store import snapshot
from tests.support.daemon import wait_until, write_config
from tests.support.issuer import TOKEN_PATH, IssuerServer
from tests.support.keys import make_key_file
from tests.support.openbao import OpenBao, kv_prefix, openbao  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.openbao]


def one_key_with_write_back(
    tmp_path: Path,
    db_url: str,
    issuer: IssuerServer,
    bao: OpenBao,
    kv_prefix: str,  # noqa: F811
) -> Path:
    """Key 100 of svc-a, registered; its token goes to {kv_prefix}/tokens/svc-a."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    make_key_file(
        keys,
        key_id="100",
        user_id="svc-a",
        register_with=issuer,
        expires_at=datetime.now(UTC) + timedelta(days=200),
    )
    return write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        issuer_url=issuer.url,
        issuer_extra='timeout = "2s"\n',
        vault=(bao.addr, bao.root_token),
        tokens_path=f"{kv_prefix}/tokens/{{principal}}",
    )


def test_dry_run_skips_the_vault_write(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    openbao: OpenBao,  # noqa: F811
    kv_prefix: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = one_key_with_write_back(tmp_path, db_url, issuer, openbao, kv_prefix)
    path = f"{kv_prefix}/tokens/svc-a"

    assert main(["--config", str(config), "check", "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "tokens" in [s["name"] for s in doc["stages"]]
    assert any(
        line.startswith("tokens: would create the token of key 100") for line in doc["skipped_side_effects"]
    ), doc["skipped_side_effects"]
    assert "probe: would probe key 100 (svc-a): never probed" in doc["skipped_side_effects"]
    assert issuer.requests_seen == 0 and issuer.tokens_issued == 0  # nothing minted
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client.secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )

    assert main(["--config", str(config), "check"]) == 0
    capsys.readouterr()
    assert issuer.requests_by_path[TOKEN_PATH] == 2  # one probe, one token written back
    secret = openbao.client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    assert secret["data"]["data"]


def test_a_sink_serving_an_expired_token_is_critical(
    tmp_path: Path,
    db_url: str,
    migrated_engine: Engine,
    issuer: IssuerServer,
    openbao: OpenBao,  # noqa: F811
    kv_prefix: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every sink failing and every written token expired used to be OK."""
    config = one_key_with_write_back(tmp_path, db_url, issuer, openbao, kv_prefix)
    issuer.token_lifetime = 3  # seconds: refresh due after 2, expired after 3
    assert main(["--config", str(config), "check"]) == 0
    capsys.readouterr()
    openbao.kv_put(f"{kv_prefix}/tokens/svc-a", {"access_token": "someone else's"})
    [sink] = snapshot.tokens(migrated_engine)
    assert sink.expires_at is not None
    wait_until(lambda: datetime.now(UTC) > sink.expires_at, timeout=30, what="expiry")

    assert main(["--config", str(config), "check"]) == 2  # refresh refused: conflict
    out = capsys.readouterr().out
    assert out.startswith("KEYD CRITICAL - ") and "token(s) expired in place" in out
    assert f"to secret/{kv_prefix}/tokens/svc-a: the token in place expired at" in out
