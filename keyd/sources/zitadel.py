"""ZITADEL itself as a source (docs/zitadel.md §5): the keys its ListKeys
call names for the service users of some organizations, or of named users.

A listing is metadata only (key id, user, organization, creation date,
expiry): ZITADEL never hands a private key out again, so nothing here can
sign or be published to. Either every configured organization/user is
listed completely, or ``list_all`` raises the ``ZitadelApiError`` of the
first one that failed (unreachable, 403, a malformed page): a partial
listing would make keys look removed, so it is never returned.
Application (API app) keys are not listed: ZITADEL serves them through its
app-key API, which this source does not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyd.clients.zitadel import ListedKey, ZitadelKeyAPI
from keyd.config import ZitadelSourceConfig


@dataclass(frozen=True)
class ZitadelListing:
    """Everything one zitadel source listed in one scan.

    ``users`` are the users the listing is complete for (the configured
    users, or every user with a key in a listed organization); a held key of
    one of them that is not in ``keys`` is gone from ZITADEL.
    ``organizations`` are the organizations listed completely.
    """

    source: str
    keys: tuple[ListedKey, ...]
    users: frozenset[str]
    organizations: frozenset[str]
    empty: frozenset[str] = frozenset()  # organizations and users that listed no key at all


class ZitadelSource:
    def __init__(self, cfg: ZitadelSourceConfig, api: ZitadelKeyAPI) -> None:
        self.cfg, self.api = cfg, api

    def list_all(self) -> ZitadelListing:
        keys: dict[str, ListedKey] = {}
        empty: set[str] = set()
        for org in self.cfg.organizations:
            found = self.api.list_keys(organization_id=org)
            keys.update((k.key_id, k) for k in found)
            empty.update(() if found else (org,))
        for user in self.cfg.users:
            found = self.api.list_keys(user_id=user)
            keys.update((k.key_id, k) for k in found)
            empty.update(() if found else (user,))
        users = set(self.cfg.users) | {k.user_id for k in keys.values()}
        ordered = tuple(sorted(keys.values(), key=lambda k: (k.created_at, k.key_id)))
        return ZitadelListing(
            self.cfg.name, ordered, frozenset(users), frozenset(self.cfg.organizations), frozenset(empty)
        )
