"""A zitadel source's listing → rows: the join of what ZITADEL lists with
what the key files hold, in one transaction (see README "ZITADEL as a
source").

* Each listed key gets a location of kind ``zitadel`` (ref
  ``orgs/<org>/users/<user>/keys/<key id>``; metadata only). A listed key
  no file or Vault location holds is a ``Key`` of status ``unheld``
  (fingerprint and content hash are ``zitadel:<key id>`` placeholders
  until a file holding it appears).
* A held key of a user the listing is complete for that ZITADEL no longer
  lists is *gone*: status ``rejected`` with diagnosis ``removed``, recorded
  as a probe row with ``attempts = 0`` (nothing was sent to the issuer) so
  that it is alerted and shown as today's rejections are.
* A key whose file has no expiry takes ZITADEL's (``expiry_source =
  "zitadel"``); every listed key keeps ZITADEL's creation date for the
  lifetime policy.
* A key listed before and not now loses its ``zitadel`` location
  (``missing``); its status is derived again from every location.

A listing that failed never reaches this module (``record_failure`` is
called instead), so an outage or a 403 changes no key. Nor does a listing
in which an organization or user lists no key at all while keyd holds key
files of its users (``ZitadelListingDoubtful``): ZITADEL silently leaves out keys
of users the caller may not read, so "everything was removed at once" is
far more likely a lost ``user.read`` than the truth.
"""

from __future__ import annotations

import logging
from datetime import datetime

from keyd.clients.zitadel import ListedKey
from keyd.errors import ZitadelListingDoubtful
from keyd.inventory.reconcile import SourceOutcome, derive_status, mark_source_ok
from keyd.sources.zitadel import ZitadelListing
from keyd.store.inventory import Engine, InventoryTx, LocationIndex, inventory_tx
from keyd.store.models import Key, KeyLocation, Probe
from keyd.vocab import ExpirySource, KeyKind, KeyStatus, LocationKind, LocationStatus, ProbeOutcome

log = logging.getLogger(__name__)

REMOVED = "removed"  # probes.diagnosis of a key ZITADEL no longer lists


def placeholder(key_id: str) -> str:
    """Fingerprint / content hash of a key no file holds yet."""
    return f"zitadel:{key_id}"


def location_ref(key: ListedKey) -> str:
    return f"orgs/{key.organization_id or '-'}/users/{key.user_id}/keys/{key.key_id}"


def _ref_user(ref: str) -> tuple[str, str] | None:
    """(organization, user) of a location ref this module wrote."""
    parts = ref.split("/")
    return (parts[1], parts[3]) if len(parts) == 6 and parts[0] == "orgs" else None


def reconcile_zitadel(engine: Engine, listing: ZitadelListing, now: datetime) -> SourceOutcome:
    """Fold one complete listing into the inventory; returns the counts."""
    with inventory_tx(engine) as tx:
        outcome = _Join(tx, listing, now).run()
    log.info(
        "%s: %d keys listed (%d new, %d unheld, %d gone)",
        listing.source,
        outcome.keys,
        outcome.new,
        outcome.unheld,
        outcome.gone,
    )
    return outcome


class _Join:
    def __init__(self, tx: InventoryTx, listing: ZitadelListing, now: datetime) -> None:
        self.tx, self.listing, self.now = tx, listing, now
        self.source = listing.source
        self.out = SourceOutcome(source=self.source)
        self.affected: set[int] = set()

    def run(self) -> SourceOutcome:
        index = self.tx.location_index(self.source)
        users = set(self.listing.users)
        for ref in index:  # users listed before in an organization listed now
            known = _ref_user(ref)
            if known is not None and known[0] in self.listing.organizations:
                users.add(known[1])
        self._doubt(index)
        keys = self.tx.keys_by_key_id(k.key_id for k in self.listing.keys)
        for listed in self.listing.keys:
            self._key(listed, keys)
        self.tx.flush()  # new keys get their pks
        slow: list[tuple[ListedKey, Key, LocationIndex | None]] = []
        for listed in self.listing.keys:
            key, entry = keys[listed.key_id], index.pop(location_ref(listed), None)
            # the common case, an unchanged row, is not written at all: it was seen at
            # this source's last successful scan (store.keys.location)
            if entry is None or entry.status != LocationStatus.PRESENT or entry.key_pk != key.id:
                slow.append((listed, key, entry))
        locs = self.tx.locations_by_id([e.id for _, _, e in slow if e] + [e.id for e in index.values()])
        for listed, key, entry in slow:
            self._location(listed, key, locs.get(entry.id) if entry is not None else None)
        for entry in index.values():
            self._unlisted(locs[entry.id])
        self._gone(users, {k.key_id for k in self.listing.keys})
        self._settle()
        self.out.unheld = sum(key.status == KeyStatus.UNHELD for key in keys.values())
        mark_source_ok(self.tx, self.source, self.now)
        self.out.events += self.tx.pending_events
        return self.out

    def _doubt(self, index: dict[str, LocationIndex]) -> None:
        """Refuse a listing in which an organization/user with held keys lists nothing."""
        for scope in sorted(self.listing.empty):
            if scope in self.listing.organizations:  # the users keyd saw there before
                refs = (_ref_user(ref) for ref in index)
                members = {known[1] for known in refs if known is not None and known[0] == scope}
            else:
                members = {scope}
            held = self.tx.held_keys_of(members)
            if held:
                what = "organization" if scope in self.listing.organizations else "user"
                raise ZitadelListingDoubtful(
                    "ListKeys",
                    f"ZITADEL lists no key at all for {what} {scope}, but keyd holds "
                    f"{len(held)} key file(s) of it (e.g. key {held[0].key_id}): keyd's "
                    "service user may have lost user.read there (ZITADEL then hides the keys "
                    "instead of answering 403); nothing was changed. If the keys really were "
                    "all removed, delete their files",
                    organization_id=scope if what == "organization" else None,
                    user_id=None if what == "organization" else scope,
                )

    def _key(self, listed: ListedKey, keys: dict[str, Key]) -> None:
        self.out.seen += 1
        self.out.keys += 1
        key = keys.get(listed.key_id)
        if key is None:
            keys[listed.key_id] = self._new(listed)
            return
        if listed.user_id != key.principal:
            log.warning(
                "%s: ZITADEL lists key %s for user %s, its file says %s",
                self.source,
                key.key_id,
                listed.user_id,
                key.principal,
            )
        if key.zitadel_created_at != listed.created_at:
            key.zitadel_created_at = listed.created_at
        if (key.expiry_source == ExpirySource.ZITADEL or key.expires_at is None) and (
            key.expires_at != listed.expires_at or key.expiry_source != ExpirySource.ZITADEL
        ):
            self._event(
                "key.expiry_from_zitadel", key, expires_at=listed.expires_at, old_expires_at=key.expires_at
            )
            key.expires_at, key.expiry_source = listed.expires_at, ExpirySource.ZITADEL
            self.affected.add(key.id)  # active/expired may move

    def _location(self, listed: ListedKey, key: Key, loc: KeyLocation | None) -> None:
        """A new, returned or re-pointed listing location (by pk: assigning the
        relationship would load every key's collection)."""
        if loc is None:
            loc = KeyLocation(
                source=self.source,
                ref=location_ref(listed),
                kind=LocationKind.ZITADEL,
                first_seen=self.now,
                key_pk=key.id,
            )
            self.tx.add(loc)
            self._event("location.new", key, ref=loc.ref)
        elif loc.status != LocationStatus.PRESENT:
            self._event("location.returned", key, ref=loc.ref, was=loc.status)
        if loc.key_pk != key.id:
            loc.key_pk = key.id
        loc.status, loc.last_seen, loc.last_error = LocationStatus.PRESENT, self.now, None
        key.last_seen = self.now
        self.affected.add(key.id)

    def _new(self, listed: ListedKey) -> Key:
        key = Key(
            key_id=listed.key_id,
            kind=KeyKind.SERVICE_ACCOUNT,
            principal=listed.user_id,
            algorithm="",
            key_size=None,
            fingerprint=placeholder(listed.key_id),
            expires_at=listed.expires_at,
            expiry_source=ExpirySource.ZITADEL,
            zitadel_created_at=listed.created_at,
            content_hash=placeholder(listed.key_id),
            status=KeyStatus.UNHELD,
            first_seen=self.now,
            last_seen=self.now,
            updated_at=self.now,
            probe_failures=0,
        )
        self.tx.add(key)
        self.out.new += 1
        self._event(
            "key.new",
            key,
            type=key.kind,
            principal=key.principal,
            expires_at=key.expires_at,
            status=key.status,
            held=False,
        )
        return key

    def _unlisted(self, loc: KeyLocation) -> None:
        if loc.status != LocationStatus.MISSING:
            self._event("location.missing", loc.key, ref=loc.ref, was=loc.status)
            loc.status = LocationStatus.MISSING
        if loc.key_pk is not None:
            self.affected.add(loc.key_pk)

    def _gone(self, users: set[str], listed: set[str]) -> None:
        """Held keys of fully listed users that ZITADEL no longer lists."""
        for key in self.tx.held_keys_of(users):
            if (
                key.kind != KeyKind.SERVICE_ACCOUNT
                or key.key_id in listed
                or key.status == KeyStatus.REJECTED
            ):
                continue
            message = (
                f"ZITADEL no longer lists key {key.key_id} of user {key.principal} "
                f"(source {self.source}): it was removed; delete this key file"
            )
            self.tx.add_probe(
                Probe(
                    key_pk=key.id,
                    at=self.now,
                    outcome=ProbeOutcome.REJECTED,
                    diagnosis=REMOVED,
                    message=message,
                    attempts=0,
                )
            )
            self._event("key.removed", key, was=key.status, status=KeyStatus.REJECTED)
            key.status, key.updated_at = KeyStatus.REJECTED, self.now
            key.last_probe_outcome, key.last_probe_at = ProbeOutcome.REJECTED, self.now
            key.last_error, key.next_probe_at = message, None
            self.out.gone += 1

    def _settle(self) -> None:
        counts = self.tx.location_status_counts(self.affected)
        for key in self.tx.keys_by_pk(self.affected):
            target = derive_status(key, counts.get(key.id, {}), self.now, changed=False)
            if target != key.status:
                self._event("key.status", key, was=key.status, status=target)
                key.status, key.updated_at = target, self.now

    def _event(self, kind: str, key: Key | None, **detail: object) -> None:
        self.tx.event(self.now, kind, source=self.source, key=key, detail=dict(detail))
