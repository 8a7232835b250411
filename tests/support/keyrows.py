"""Put keys into an inventory DB the way the inventory would, for probe and
token tests that must not depend on a full scan (owned by the probe
engineer; small on purpose)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, MetaData, select
from sqlalchemy.orm import Session

from keyd.sources.keyfile import KeyFile, parse_keyfile_mapping
from keyd.store.models import Base, Key, KeyLocation


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def add_key(
    engine: Engine,
    keyfile: KeyFile,
    *,
    ref: str,
    source: str = "dir",
    now: datetime,
    status: str = "active",
    next_probe_at: datetime | None = None,
    probe_failures: int = 0,
) -> int:
    """Insert a key row and one present location; returns the key's pk."""
    with Session(engine) as session, session.begin():
        key = Key(
            key_id=keyfile.key_id,
            kind=keyfile.kind,
            principal=keyfile.principal,
            algorithm=keyfile.algorithm,
            key_size=keyfile.key_size,
            fingerprint=keyfile.fingerprint,
            expires_at=keyfile.expires_at,
            content_hash=keyfile.content_hash,
            status=status,
            first_seen=now,
            last_seen=now,
            updated_at=now,
            next_probe_at=next_probe_at,
            probe_failures=probe_failures,
        )
        session.add(key)
        session.flush()
        session.add(
            KeyLocation(
                source=source,
                ref=ref,
                key_pk=key.id,
                status="present",
                first_seen=now,
                last_seen=now,
                content_hash=keyfile.content_hash,
            )
        )
        return key.id


def add_row(
    session: Session,
    key_id: str,
    *,
    principal: str,
    expires_at: datetime | None,
    now: datetime,
    algorithm: str = "ES256",
    fingerprint: str = "f" * 64,
) -> Key:
    """A plain active service-user key row with one present location at
    ``/k/<key_id>.json`` in source ``dir``, in the caller's session (alert
    and rotation tests that need rows, not key files)."""
    key = Key(
        key_id=key_id,
        kind="serviceaccount",
        principal=principal,
        algorithm=algorithm,
        fingerprint=fingerprint,
        expires_at=expires_at,
        content_hash="0",
        status="active",
        first_seen=now,
        last_seen=now,
        updated_at=now,
    )
    session.add(key)
    session.flush()
    session.add(
        KeyLocation(
            source="dir",
            ref=f"/k/{key_id}.json",
            key_pk=key.id,
            status="present",
            first_seen=now,
            last_seen=now,
        )
    )
    return key


def add_vault_key(
    engine: Engine, bao: Any, data: dict[str, Any], *, source: str, now: datetime, as_field: bool = True
) -> str:
    """Write the key file ``data`` to OpenBao under ``zitadel/keys/<keyId>``
    (as a ``keyfile`` JSON field, or as the secret's own fields) and add it
    to the inventory from there; returns its ref (``secret/zitadel/keys/…``)."""
    path = f"zitadel/keys/{data['keyId']}"
    bao.kv_put(path, {"keyfile": json.dumps(data)} if as_field else data)
    ref = f"secret/{path}"
    add_key(engine, parse_keyfile_mapping(data, source=ref), ref=ref, source=source, now=now)
    return ref


def key_row(engine: Engine, key_id: str) -> Key:
    with Session(engine, expire_on_commit=False) as session:
        key = session.scalars(select(Key).where(Key.key_id == key_id)).one()
        session.expunge(key)
        return key


def dump_all(engine: Engine) -> str:
    """Every row of every table as text (canary tests grep this)."""
    meta = MetaData()
    meta.reflect(engine)
    out = io.StringIO()
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                out.write(f"{table.name}: {tuple(row)!r}\n")
    return out.getvalue()


def rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine, expire_on_commit=False) as session:
        found = list(session.scalars(select(model)))
        for r in found:
            session.expunge(r)
        return found


def failing_for(load_key: Any, key_id: str) -> Any:
    """``load_key`` that raises ``ZeroDivisionError`` (a stand-in for a bug)
    for ``key_id`` and loads every other key as before: for isolation tests."""

    def load(target: Any) -> Any:
        if target.key_id == key_id:
            raise ZeroDivisionError("bug")
        return load_key(target)

    return load
