"""Text a database cannot hold — a NUL (PostgreSQL), a lone surrogate
(SQLite's UTF-8 encoder) — in a location ref, an error or an event detail
is stored escaped (``keyd.text.storable``, applied to every bound
parameter in ``keyd.store.engine``) instead of aborting the source's whole
transaction. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from keyd.errors import KeyFileError
from keyd.sources.base import Candidate
from keyd.store.models import Event, Key, KeyLocation, SourceState
from tests.integration.inventory.test_reconcile import NOW, cand, scan


def test_unstorable_text_is_escaped_and_the_scan_goes_on(migrated_engine: Engine) -> None:
    odd_ref = "secret/zitadel/keys/a\x00b\udb37"
    bad = Candidate(ref=odd_ref, error=KeyFileError(odd_ref, "odd \udb37 and \x00 inside"))
    good = cand("/keys/good.json", "100")
    out = scan(migrated_engine, bad, good, source="vault:secret/\x00zitadel")
    assert out.ok and out.new == 1 and out.invalid == 1
    with Session(migrated_engine) as s:
        refs = {loc.ref: loc for loc in s.scalars(select(KeyLocation))}
        assert set(refs) == {"secret/zitadel/keys/a\\x00b\\udb37", "/keys/good.json"}
        odd = refs["secret/zitadel/keys/a\\x00b\\udb37"]
        assert odd.status == "invalid"
        assert odd.last_error == "odd \\udb37 and \\x00 inside"
        assert odd.source == "vault:secret/\\x00zitadel"
        assert [k.key_id for k in s.scalars(select(Key))] == ["100"]
        assert s.scalar(select(SourceState.consecutive_failures)) == 0
        details = [e.detail or "" for e in s.scalars(select(Event))]
        assert any("odd" in d for d in details)

    # the next scan finds the same (escaped) row: no duplicate, no new event
    again = scan(migrated_engine, bad, good, source="vault:secret/\x00zitadel", now=NOW + timedelta(hours=1))
    assert again.ok and again.invalid == 1 and again.events == 0


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    refs=st.lists(
        st.text(st.characters(codec=None), min_size=1, max_size=30), min_size=1, max_size=4, unique=True
    ),
    problem=st.text(st.characters(codec=None), max_size=60),
)
def test_any_text_in_refs_and_errors_is_stored(
    migrated_engine: Engine, refs: list[str], problem: str
) -> None:
    """Arbitrary text (surrogates, NUL, controls) through the store: the
    scan is recorded, the rows come back, nothing but keyd errors escape."""
    cands = [Candidate(ref=ref, error=KeyFileError(ref, problem or "x")) for ref in refs]
    out = scan(migrated_engine, *cands, source="vault:any")
    assert out.ok
    with Session(migrated_engine) as s:
        stored = set(s.scalars(select(KeyLocation.ref).where(KeyLocation.source == "vault:any")))
    assert {c.ref for c in cands} <= stored


def test_two_names_for_one_stored_ref_do_not_lose_the_scan(migrated_engine: Engine) -> None:
    good = cand("/keys/good.json", "100")
    first = Candidate(ref="/keys/bad\x00", error=KeyFileError("/keys/bad\x00", "junk"))
    second = Candidate(ref="/keys/bad\\x00", error=KeyFileError("/keys/bad\\x00", "junk"))
    out = scan(migrated_engine, first, second, good)
    assert out.ok and out.new == 1 and out.invalid == 1
