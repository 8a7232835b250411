"""Pure parts of token write-back: path templates, ownership judgement,
refresh schedule, selection, atomic file sink."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.actions.filesink import TokenFileError, safe_join, write_atomic
from keyd.actions.tokens import plan_sinks, refresh_at
from keyd.actions.tokenvault import (
    Current,
    TokenPathError,
    TokenTargetRefused,
    judge,
    listed,
    render_path,
)
from keyd.clients.vault_model import VaultMetadata
from keyd.config import TokensConfig
from keyd.store.keys import KeyRecord, Location

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_render_path_substitutes():
    assert render_path("zitadel/tokens/{principal}", principal="123", key_id="k") == "zitadel/tokens/123"
    assert render_path("t/{principal}-{key_id}", principal="u", key_id="k") == "t/u-k"


@pytest.mark.parametrize("principal", ["a/b", "..", "x..y", "a\nb", "a\x7f", ""])
def test_render_path_refuses_hostile_values(principal):
    with pytest.raises(TokenPathError, match="cannot be used in a Vault path"):
        render_path("zitadel/tokens/{principal}", principal=principal, key_id="k")


@pytest.mark.parametrize(
    "template",
    ["/abs/{principal}", "a/../{principal}", "a//{principal}", "a/{user}", "a/{principal", "a/{principal}/"],
)
def test_bad_templates_are_refused(template):
    with pytest.raises(TokenPathError, match="tokens.path"):
        render_path(template, principal="u", key_id="k")


def test_refresh_at_two_thirds_minus_jitter():
    ttl = timedelta(hours=12)
    assert refresh_at(T0, ttl, Fixed(0.0)) == T0 + timedelta(hours=8)
    assert refresh_at(T0, ttl, Fixed(0.999999)) > T0 + timedelta(hours=8) - ttl / 20
    assert refresh_at(T0, ttl, Fixed(0.5)) == T0 + timedelta(hours=8) - ttl / 40


def cur(**kw: object) -> Current:
    base = {"version": 3, "readable": True, "managed": True, "keyd_shaped": True}
    base.update(kw)
    return Current(**base)  # type: ignore[arg-type]


def test_judge():
    assert judge(cur(version=0, readable=False, managed=False), None, adopt=False, ref="r") == "new"
    assert judge(cur(), 3, adopt=False, ref="r") == "ours"
    assert judge(cur(version=4), 3, adopt=False, ref="r") == "ours"  # keyd-shaped lost write
    with pytest.raises(TokenTargetRefused) as info:
        judge(cur(version=4, keyd_shaped=False), 3, adopt=False, ref="r")
    assert info.value.reason == "conflict"
    with pytest.raises(TokenTargetRefused) as info:
        judge(cur(managed=False), None, adopt=False, ref="r")
    assert info.value.reason == "unmanaged"
    assert judge(cur(managed=False), None, adopt=True, ref="r") == "adopt"
    # managed but soft-deleted: keyd may write again
    assert judge(cur(version=5, readable=False, keyd_shaped=False), 3, adopt=False, ref="r") == "ours"


def test_listed_read_back_entry():
    mark = {"managed-by": "keyd", "key-id": "k1"}

    def meta(version: int = 4, **kw: object) -> VaultMetadata:
        values: dict = {"current_version": version, "custom_metadata": mark, **kw}
        return VaultMetadata(**values)

    assert listed(meta(), version=4, key_id="k1") == "same"
    assert listed(meta(5), version=4, key_id="k1") == "changed"  # someone wrote after keyd
    assert listed(meta(deleted=True), version=4, key_id="k1") == "changed"
    # cannot tell from the listing: read the secret back
    assert listed(None, version=4, key_id="k1") == "unknown"
    assert listed(meta(deletion_pending=True), version=4, key_id="k1") == "unknown"
    assert listed(meta(), version=4, key_id="k2") == "unknown"
    assert listed(meta(custom_metadata={}), version=4, key_id="k1") == "unknown"


def target(
    pk: int,
    principal: str,
    key_id: str,
    expires: datetime | None,
    source: str = "dir",
    ref: str = "/k/x.json",
) -> KeyRecord:
    return KeyRecord(
        pk=pk,
        key_id=key_id,
        kind="serviceaccount",
        principal=principal,
        status="active",
        content_hash="h",
        expires_at=expires,
        locations=(Location(source, ref),),
    )


def test_plan_sinks_selectors_and_rotation(tmp_path):
    keys = [
        target(1, "u1", "old", T0),
        target(2, "u1", "new", T0 + timedelta(days=90)),
        target(3, "u2", "k3", None, source="vault:secret/x", ref="secret/x/k3"),
        target(4, "../evil", "k4", None),
    ]
    cfg = TokensConfig(path="tok/{principal}", file_dir=tmp_path)
    plan, errors = plan_sinks(keys, cfg)
    assert {(a.key_pk, a.path) for a in plan} == {(2, "tok/u1"), (3, "tok/u2")}
    assert plan[0].file_path == str(tmp_path / "tok" / "u1.json")
    assert len(errors) == 1 and "k4" in errors[0]
    plan, _ = plan_sinks(keys, TokensConfig(path="tok/{principal}", principals=("u2",)))
    assert [a.key_pk for a in plan] == [3]
    plan, _ = plan_sinks(keys, TokensConfig(path="tok/{principal}", sources=("secret/x/*",)))
    assert [a.key_pk for a in plan] == [3]


def test_write_atomic_mode_and_replace(tmp_path):
    path = tmp_path / "d" / "t.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["t.json"]


def test_write_atomic_never_empty_and_keeps_old_on_failure(tmp_path):
    path = tmp_path / "t.json"
    write_atomic(path, b"old")
    with pytest.raises(TokenFileError, match="empty"):
        write_atomic(path, b"")
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root ignores directory permissions
            with pytest.raises(TokenFileError, match="cannot write"):
                write_atomic(path, b"new")
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == b"old"


def test_safe_join_refuses_escape(tmp_path: Path):
    assert safe_join(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"
    with pytest.raises(TokenFileError):
        safe_join(tmp_path, "a/../../etc/passwd")
