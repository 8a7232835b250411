"""reconcile/record_failure on SQLite AND PostgreSQL (real databases)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from keyd.errors import KeyFileError, VaultUnavailable
from keyd.exposure import Exposure
from keyd.inventory.reconcile import SourceOutcome, is_expired, reconcile, record_failure
from keyd.sources.base import Candidate, ScanResult
from keyd.sources.keyfile import parse_keyfile
from keyd.store.inventory import inventory_snapshot, inventory_tx, source_index
from keyd.store.models import Event, Key, KeyLocation, SourceState
from tests.support.keys import make_key_file, rsa_key

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2027, 1, 1, tzinfo=UTC)
SRC = "directory:/keys"


def cand(
    ref: str,
    key_id: str,
    *,
    user: str = "u1",
    expires_at: datetime | None = LATER,
    key: Any = None,
    **kw: Any,
) -> Candidate:
    made = make_key_file(key_id=key_id, user_id=user, expires_at=expires_at, private_key=key or rsa_key())
    kf = parse_keyfile(made.text, source=ref)
    return Candidate(ref=ref, keyfile=kf, size=100, mtime_ns=1, inode=7, **kw)


def bad(ref: str, problem: str = "is not valid JSON") -> Candidate:
    return Candidate(ref=ref, error=KeyFileError(ref, problem))


def scan(engine: Engine, *cands: Candidate, source: str = SRC, now: datetime = NOW) -> SourceOutcome:
    return reconcile(engine, ScanResult(source=source, candidates=list(cands)), now)


def keys(engine: Engine) -> dict[str, Key]:
    with Session(engine, expire_on_commit=False) as s:
        return {k.key_id: k for k in s.scalars(select(Key))}


def locations(engine: Engine) -> dict[str, KeyLocation]:
    with Session(engine, expire_on_commit=False) as s:
        return {loc.ref: loc for loc in s.scalars(select(KeyLocation))}


def events(engine: Engine) -> list[tuple[str, str | None, dict[str, Any]]]:
    with Session(engine) as s:
        return [
            (e.kind, e.key_id, json.loads(e.detail) if e.detail else {})
            for e in s.scalars(select(Event).order_by(Event.id))
        ]


def kinds(engine: Engine) -> list[str]:
    return [k for k, _, _ in events(engine)]


def test_new_keys_active_or_expired(migrated_engine: Engine) -> None:
    out = scan(
        migrated_engine,
        cand("/keys/a.json", "k1"),
        cand("/keys/b.json", "k2", expires_at=NOW - timedelta(days=1)),
        cand("/keys/c.json", "k3", expires_at=NOW),
    )  # dead at the instant (§2)
    assert (out.new, out.keys, out.changed, out.missing, out.ok) == (3, 3, 0, 0, True)
    ks = keys(migrated_engine)
    assert {k: v.status for k, v in ks.items()} == {"k1": "active", "k2": "expired", "k3": "expired"}
    assert ks["k1"].expires_at == LATER and ks["k1"].principal == "u1"
    assert ks["k1"].first_seen == NOW and ks["k1"].algorithm == "RS256"
    assert kinds(migrated_engine).count("key.new") == 3
    assert kinds(migrated_engine).count("location.new") == 3
    loc = locations(migrated_engine)["/keys/a.json"]
    assert (loc.status, loc.size, loc.mtime_ns, loc.inode) == ("present", 100, 1, 7)
    with Session(migrated_engine) as s:
        state = s.get(SourceState, SRC)
        assert state is not None and state.last_success_at == NOW
        assert state.consecutive_failures == 0


def test_one_key_in_two_places(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k), cand("/keys/copy.json", "k1", key=k))
    ks = keys(migrated_engine)
    assert list(ks) == ["k1"]
    locs = locations(migrated_engine)
    assert {loc.key_pk for loc in locs.values()} == {ks["k1"].id}
    # one copy disappears: the key stays present through the other
    out = scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    assert out.missing == 0
    assert keys(migrated_engine)["k1"].status == "active"
    assert locations(migrated_engine)["/keys/copy.json"].status == "missing"


def test_changed_content_rearms_and_clears_rejected(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    with Session(migrated_engine) as s, s.begin():
        key = s.scalars(select(Key)).one()
        key.status, key.next_probe_at, key.probe_failures = "rejected", None, 3
        key.last_probe_outcome = "rejected"
    # same content: rejected survives the scan
    out = scan(migrated_engine, cand("/keys/a.json", "k1", key=k), now=NOW + timedelta(hours=1))
    assert out.changed == 0 and keys(migrated_engine)["k1"].status == "rejected"
    # new expiry = new content: re-armed
    new_exp = LATER + timedelta(days=90)
    out = scan(
        migrated_engine, cand("/keys/a.json", "k1", key=k, expires_at=new_exp), now=NOW + timedelta(hours=2)
    )
    assert out.changed == 1
    key = keys(migrated_engine)["k1"]
    assert (key.status, key.expires_at, key.probe_failures, key.next_probe_at) == ("active", new_exp, 0, None)
    kind, key_id, detail = [e for e in events(migrated_engine) if e[0] == "key.changed"][0]
    assert key_id == "k1" and detail["old_status"] == "rejected"
    assert detail["old_expires_at"] == "2027-01-01T00:00:00Z"


def test_missing_then_returned(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k), cand("/keys/b.json", "k2"))
    out = scan(migrated_engine, cand("/keys/b.json", "k2"), now=NOW + timedelta(hours=1))
    assert out.missing == 1
    assert keys(migrated_engine)["k1"].status == "missing"  # kept, not deleted
    assert locations(migrated_engine)["/keys/a.json"].status == "missing"
    assert "key.missing" in kinds(migrated_engine)
    assert "location.missing" in kinds(migrated_engine)
    out = scan(
        migrated_engine,
        cand("/keys/a.json", "k1", key=k),
        cand("/keys/b.json", "k2"),
        now=NOW + timedelta(hours=2),
    )
    assert (out.returned, out.new) == (1, 0)
    assert keys(migrated_engine)["k1"].status == "active"
    assert kinds(migrated_engine)[-3:] == ["location.returned", "key.returned"] or {
        "location.returned",
        "key.returned",
    } <= set(kinds(migrated_engine))


def test_rejected_key_that_went_missing_returns_rejected(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    with Session(migrated_engine) as s, s.begin():
        key = s.scalars(select(Key)).one()
        key.status, key.last_probe_outcome = "rejected", "rejected"
    scan(migrated_engine)
    assert keys(migrated_engine)["k1"].status == "missing"
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    assert keys(migrated_engine)["k1"].status == "rejected"


def test_invalid_file_keeps_key_unless_all_locations_invalid(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(
        migrated_engine,
        cand("/keys/a.json", "k1", key=k),
        cand("/keys/b.json", "k1", key=k),
        bad("/keys/junk.json"),
    )
    locs = locations(migrated_engine)
    junk = locs["/keys/junk.json"]
    assert (junk.status, junk.key_pk, junk.last_error) == ("invalid", None, "is not valid JSON")
    out = scan(
        migrated_engine,
        bad("/keys/a.json", "field 'key' is not a PEM private key"),
        cand("/keys/b.json", "k1", key=k),
        bad("/keys/junk.json"),
    )
    assert out.invalid == 2 and keys(migrated_engine)["k1"].status == "active"
    a = locations(migrated_engine)["/keys/a.json"]
    assert a.status == "invalid" and a.size is None  # re-read next time
    out = scan(migrated_engine, bad("/keys/a.json"), bad("/keys/b.json"), bad("/keys/junk.json"))
    assert keys(migrated_engine)["k1"].status == "invalid"
    assert "key.invalid" in kinds(migrated_engine)
    # the same problem again is not a new event
    n = len(events(migrated_engine))
    scan(migrated_engine, bad("/keys/a.json"), bad("/keys/b.json"), bad("/keys/junk.json"))
    assert len(events(migrated_engine)) == n
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k), bad("/keys/b.json"), bad("/keys/junk.json"))
    assert keys(migrated_engine)["k1"].status == "active"


def test_source_failure_leaves_everything_and_recovers(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    before = (keys(migrated_engine)["k1"].status, locations(migrated_engine)["/keys/a.json"].status)
    for i in range(2):
        out = record_failure(
            migrated_engine, SRC, VaultUnavailable("Vault is sealed"), NOW + timedelta(hours=i + 1)
        )
        assert not out.ok and out.error == "Vault is sealed"
    assert (
        (keys(migrated_engine)["k1"].status, locations(migrated_engine)["/keys/a.json"].status)
        == before
        == ("active", "present")
    )
    with Session(migrated_engine) as s:
        state = s.get(SourceState, SRC)
        assert state is not None
        assert (state.consecutive_failures, state.error_count, state.last_error) == (2, 2, "Vault is sealed")
        assert state.last_success_at == NOW
    failed = [e for e in events(migrated_engine) if e[0] == "source.failed"]
    assert failed[-1][2] == {"error": "Vault is sealed", "consecutive_failures": 2}
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k), now=NOW + timedelta(hours=5))
    assert kinds(migrated_engine)[-1] == "source.recovered"
    with Session(migrated_engine) as s:
        state = s.get(SourceState, SRC)
        assert state is not None
        assert (state.consecutive_failures, state.error_count, state.last_error) == (0, 2, None)


def test_unchanged_only_moves_the_expiry_status(migrated_engine: Engine) -> None:
    """No per-row ``last_seen`` rewrite: the row keeps the instant its content
    was read; ``keyd status`` shows the source's last successful scan."""
    scan(migrated_engine, cand("/keys/a.json", "k1", expires_at=NOW + timedelta(days=1)))
    later = NOW + timedelta(days=2)
    out = scan(
        migrated_engine,
        Candidate(ref="/keys/a.json", unchanged=True, size=100, mtime_ns=1, inode=7),
        now=later,
    )
    assert (out.unchanged, out.keys, out.new) == (1, 1, 0)
    key = keys(migrated_engine)["k1"]
    assert key.status == "expired" and key.last_seen == NOW
    assert kinds(migrated_engine)[-1] == "key.expired"
    (row,) = inventory_snapshot(migrated_engine).keys
    assert row.last_seen == later and row.locations[0].last_seen == later


def test_key_present_in_another_source_is_not_missing(migrated_engine: Engine) -> None:
    k = rsa_key()
    scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    scan(migrated_engine, cand("secret/zitadel/keys/a", "k1", key=k), source="vault:secret/x")
    out = scan(migrated_engine)  # gone from the directory
    assert out.missing == 0 and keys(migrated_engine)["k1"].status == "active"


def test_file_replaced_by_another_key(migrated_engine: Engine) -> None:
    scan(migrated_engine, cand("/keys/a.json", "k1"))
    scan(migrated_engine, cand("/keys/a.json", "k2"))
    ks = keys(migrated_engine)
    assert (ks["k1"].status, ks["k2"].status) == ("missing", "active")
    assert "location.replaced" in kinds(migrated_engine)


def test_no_key_material_in_the_database(migrated_engine: Engine) -> None:
    scan(migrated_engine, cand("/keys/a.json", "k1"), bad("/keys/junk.json"))
    record_failure(migrated_engine, SRC, VaultUnavailable("boom"), NOW)
    dump = []
    with migrated_engine.connect() as conn:
        for table in ("keys", "key_locations", "events", "source_states"):
            dump.extend(str(row) for row in conn.execute(text(f"SELECT * FROM {table}")))
    blob = "\n".join(dump)
    assert "PRIVATE KEY" not in blob and "MII" not in blob


def test_expiry_rule_matches_checks() -> None:
    from keyd.checks.expiry import evaluate

    for delta in (-1, 0, 1):
        at = LATER + timedelta(microseconds=delta)
        assert is_expired(LATER, at) == (evaluate(LATER, at).status == "expired")
    assert not is_expired(None, NOW)
    assert not is_expired(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), NOW)


@pytest.mark.parametrize("n", [1200])
def test_many_keys_in_one_scan(migrated_engine: Engine, n: int) -> None:
    k = rsa_key()
    made = make_key_file(key_id="x", user_id="u", expires_at=LATER, private_key=k)
    base = parse_keyfile(made.text, source="x")
    cands = [
        Candidate(
            ref=f"/keys/{i}.json",
            keyfile=base.__class__(**{**base.__dict__, "key_id": f"k{i}", "content_hash": f"{i:064d}"}),
        )
        for i in range(n)
    ]  # > the 500-item IN chunks
    out = scan(migrated_engine, *cands)
    assert out.new == n and out.keys == n
    out = scan(migrated_engine, *cands[: n // 2])
    assert out.missing == n - n // 2


def test_broken_file_fixed_becomes_a_key(migrated_engine: Engine) -> None:
    scan(migrated_engine, bad("/keys/a.json"))
    assert locations(migrated_engine)["/keys/a.json"].key_pk is None
    out = scan(migrated_engine, cand("/keys/a.json", "k1"))
    assert out.new == 1 and out.invalid == 0
    loc = locations(migrated_engine)["/keys/a.json"]
    assert loc.status == "present" and loc.last_error is None
    assert loc.key_pk == keys(migrated_engine)["k1"].id
    assert "location.replaced" not in kinds(migrated_engine)
    returned = [d for k, _, d in events(migrated_engine) if k == "location.returned"]
    assert returned == [{"ref": "/keys/a.json", "was": "invalid"}]


def test_unchanged_file_with_new_permission_warning(migrated_engine: Engine) -> None:
    scan(migrated_engine, cand("/keys/a.json", "k1"))
    unchanged = Candidate(
        ref="/keys/a.json",
        unchanged=True,
        size=100,
        mtime_ns=1,
        inode=7,
        warnings=(Exposure("/keys/a.json", "readable by group/other"),),
    )
    out = scan(migrated_engine, unchanged, now=NOW + timedelta(hours=1))
    assert (out.unchanged, out.warnings, out.keys) == (1, 1, 1)
    loc = locations(migrated_engine)["/keys/a.json"]
    assert loc.warning == unchanged.warnings and loc.last_seen == NOW + timedelta(hours=1)
    out = scan(
        migrated_engine,
        Candidate(ref="/keys/a.json", unchanged=True, size=100, mtime_ns=1, inode=7),
        now=NOW + timedelta(hours=2),
    )
    assert locations(migrated_engine)["/keys/a.json"].warning == ()
    assert keys(migrated_engine)["k1"].last_seen == NOW + timedelta(hours=2)


def test_race_with_another_writer_is_retried(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyd.store.inventory import InventoryTx

    k = rsa_key()
    theirs = cand("/other/a.json", "k1", key=k)
    real = InventoryTx.keys_by_key_id
    calls = []

    def racing(self: InventoryTx, key_ids: object) -> dict[str, Key]:
        wanted = list(key_ids)  # type: ignore[call-overload]
        calls.append(wanted)
        if len(calls) == 1:  # another writer commits the same key meanwhile
            scan(migrated_engine, theirs, source="directory:/other")
            return {}
        return real(self, wanted)

    monkeypatch.setattr(InventoryTx, "keys_by_key_id", racing)
    out = scan(migrated_engine, cand("/keys/a.json", "k1", key=k))
    assert len(calls) >= 3 and out.new == 0  # ours retried and found their key
    ks = keys(migrated_engine)
    assert list(ks) == ["k1"]
    assert {loc.key_pk for loc in locations(migrated_engine).values()} == {ks["k1"].id}


def _warm(engine: Engine, quiet: list[str], now: datetime, **kw: Any) -> SourceOutcome:
    """A warm scan's reconcile as ``scan_all`` does it: the index its
    stamps came from, and the unchanged refs as bare ``quiet`` paths."""
    index = source_index(engine, SRC)
    return reconcile(engine, ScanResult(source=SRC, quiet=quiet, **kw), now, index)


def test_a_warm_scan_with_the_scans_index_sees_what_is_gone(migrated_engine: Engine) -> None:
    """Every held ref quiet (no lookup per ref), one gone, one warned:
    the counts and the one missing key are the same either way."""
    scan(migrated_engine, *(cand(f"/keys/{i}.json", f"k{i}") for i in range(3)))
    out = _warm(migrated_engine, ["/keys/2.json", "/keys/0.json", "/keys/1.json"], NOW + timedelta(hours=1))
    assert (out.seen, out.unchanged, out.keys, out.missing) == (3, 3, 3, 0)
    warned = [("/keys/1.json", (Exposure("/keys/1.json", "readable by other users"),))]
    out = _warm(migrated_engine, ["/keys/0.json", "/keys/2.json"], NOW + timedelta(hours=2), warned=warned)
    assert (out.seen, out.unchanged, out.keys, out.warnings) == (3, 3, 3, 1)
    out = _warm(migrated_engine, ["/keys/0.json"], NOW + timedelta(hours=3), warned=warned)
    assert (out.seen, out.keys, out.missing) == (2, 2, 1)
    assert {k: v.status for k, v in keys(migrated_engine).items()} == {
        "k0": "active",
        "k1": "active",
        "k2": "missing",
    }
    assert locations(migrated_engine)["/keys/1.json"].warning == warned[0][1]


def test_unsettled_keys_are_index_ranges_and_this_sources_strays(migrated_engine: Engine) -> None:
    """What may move without a file changing: an active key past its
    expiry, an expired one that is not, and of the missing ones only a key
    this source still holds a present location of (a stray status that
    its warm scan repairs); the missing keys of files long gone are not
    read on every scan."""
    due = cand("/keys/due.json", "due", expires_at=NOW + timedelta(hours=1))
    scan(migrated_engine, due, cand("/keys/gone.json", "gone"), cand("/keys/stray.json", "stray"))
    scan(migrated_engine, due, cand("/keys/stray.json", "stray"))  # "gone" goes
    with migrated_engine.begin() as conn:
        conn.execute(text("UPDATE keys SET status = 'missing' WHERE key_id = 'stray'"))
    ids = {k.id: k.key_id for k in keys(migrated_engine).values()}
    later = NOW + timedelta(hours=2)
    with inventory_tx(migrated_engine) as tx:
        here = {ids[s.id] for s in tx.unsettled_key_states(later, SRC)}
        everywhere = {ids[s.id] for s in tx.unsettled_key_states(later)}
    assert here == {"due", "stray"} and everywhere == {"due", "stray", "gone"}
    out = _warm(migrated_engine, ["/keys/due.json", "/keys/stray.json"], later)
    assert out.returned == 1
    assert {k: v.status for k, v in keys(migrated_engine).items()} == {
        "due": "expired",
        "gone": "missing",
        "stray": "active",
    }


def test_a_present_location_without_a_key_is_not_held(migrated_engine: Engine) -> None:
    """The index's one pass over the present rows splits off any that
    hold no key: not skippable, read again like an invalid one."""
    scan(migrated_engine, cand("/keys/a.json", "k1"), cand("/keys/b.json", "k2"))
    with migrated_engine.begin() as conn:
        conn.execute(text("UPDATE key_locations SET key_pk = NULL WHERE ref = '/keys/b.json'"))
    index = source_index(migrated_engine, SRC)
    assert list(index.held) == ["/keys/a.json"] and index.other == {"/keys/b.json"}
    assert index.keys == {keys(migrated_engine)["k1"].id}
