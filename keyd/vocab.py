"""keyd's vocabulary: every state, outcome and kind, named once.

Each is a ``StrEnum``, so a member *is* its string: it is stored in the
database, written to JSON, logged and used as a metric label exactly as the
bare string was (no migration), and a value read back from the database
compares equal to its member (``row.status == KeyStatus.ACTIVE``). Adding a
value is adding a member here; the column comments in
``keyd/store/models.py`` point at these classes.
"""

from __future__ import annotations

from enum import StrEnum


class KeyStatus(StrEnum):
    """``keys.status``: where a key stands in its lifecycle."""

    ACTIVE = "active"
    EXPIRED = "expired"
    MISSING = "missing"  # no longer found in any source
    INVALID = "invalid"
    REJECTED = "rejected"  # the issuer refused it (probe), or ZITADEL no longer lists it
    UNHELD = "unheld"  # ZITADEL lists it, but no file or Vault location holds it


class LocationStatus(StrEnum):
    """``key_locations.status``: one place a key file was found."""

    PRESENT = "present"
    MISSING = "missing"
    INVALID = "invalid"  # cannot be parsed; the location has no key


class LocationKind(StrEnum):
    """``key_locations.kind``: NULL for key files (directory, Vault)."""

    ZITADEL = "zitadel"  # listed by a zitadel source: metadata only


class ExpirySource(StrEnum):
    """``keys.expiry_source``: NULL when the key file says (``keyd status`` shows ``file``)."""

    ZITADEL = "zitadel"  # the file has none; a zitadel source's listing does


class KeyKind(StrEnum):
    """``keys.kind``: the ``type`` field of a ZITADEL key file (docs/zitadel.md §1)."""

    SERVICE_ACCOUNT = "serviceaccount"
    APPLICATION = "application"


class ExpiryStatus(StrEnum):
    """A key's expiry at one instant (``keyd.checks.expiry``)."""

    VALID = "valid"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    NEVER = "never"  # 9999-12-31T23:59:59Z
    UNKNOWN = "unknown"  # no expiry in the file


class ProbeOutcome(StrEnum):
    """``probes.outcome`` / ``keys.last_probe_outcome``: one mint attempt."""

    OK = "ok"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    BAD_RESPONSE = "bad_response"
    UNREADABLE = "unreadable"  # the key file could not be read: never stored, never sent


class AlertKind(StrEnum):
    """``alerts.kind``."""

    EXPIRING = "expiring"
    EXPIRED = "expired"
    ROTATED = "rotated"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    RECOVERED = "recovered"
    UNTRACKED = "untracked"
    UNHELD = "unheld"  # ZITADEL lists a key no location holds
    POLICY = "policy"  # never-expiring, too long a lifetime, too many keys per user
    ROTATION_FAILED = "rotation_failed"  # keyd's rotation of a key failed
    ROTATION_BLOCKED = "rotation_blocked"  # a conflict or a missing permission stops it
    TEST = "test"


class Severity(StrEnum):
    """``alerts.severity`` and the verdict of ``keyd check``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Channel(StrEnum):
    """``deliveries.channel``."""

    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryState(StrEnum):
    """``deliveries.state``: an outbox row."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # still retried, less often
    SUPERSEDED = "superseded"  # never sent: a tighter rung replaced the alert first


class SinkState(StrEnum):
    """``tokens.state``: a token write-back sink."""

    OK = "ok"
    PENDING = "pending"
    FAILED = "failed"
    UNMANAGED = "unmanaged"  # the secret exists and keyd did not create it
    CONFLICT = "conflict"  # someone else wrote the secret since keyd did


class TokenOutcome(StrEnum):
    """What one write-back round did with one sink (``keyd check --json``)."""

    WRITTEN = "written"
    KEPT = "kept"  # the token in place is still fresh
    FAILED = "failed"
    UNMANAGED = "unmanaged"
    CONFLICT = "conflict"
    DUE = "due"  # dry run: would refresh
    NEW = "new"  # dry run: would create


class CheckStatus(StrEnum):
    """The verdict of ``keyd check`` (monitoring-plugin style, one exit code each)."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


class ProblemKind(StrEnum):
    """What a ``keyd check`` problem is about (``keyd.check/1``'s ``kind``)."""

    EXPIRED = "expired"
    EXPIRING = "expiring"
    REJECTED = "rejected"
    INVALID = "invalid"
    POLICY = "policy"  # a key ZITADEL lists outside the configured policy
    ROTATION = "rotation"
    TOKEN = "token"
    SOURCE = "source"
    ISSUER = "issuer"
    STAGE = "stage"


class RotationState(StrEnum):
    """``rotations.state`` (README "Rotation"); each change is a ``rotation.<state>`` event."""

    PLANNED = "planned"
    REGISTERED = "registered"  # the new key exists in ZITADEL
    PROVEN = "proven"  # the new key minted a token
    PUBLISHED = "published"  # written to every location of the old key
    RETIRED = "retired"  # the old key removed from ZITADEL
    FAILED = "failed"  # waits for an operator (``keyd rotate KEY_ID`` resumes it)


class RotationStep(StrEnum):
    """``rotations.failed_step``: where a rotation failed, retried or started over."""

    REGISTER = "register"
    CLEANUP = "cleanup"  # removing keys an interrupted register left
    PROOF = "proof"
    PUBLISH = "publish"
    CONFLICT = "conflict"  # a location changed under keyd: blocked
    PERMISSION = "permission"  # ZITADEL denied the call: blocked
    HOOK = "hook"
    RETIRE = "retire"
    RESTART = "restart"


class RotationEvent(StrEnum):
    """``events.kind`` ``rotation.<this>``, besides one per ``RotationState`` reached."""

    RESUMED = "resumed"
    RETRY = "retry"
    RESTARTED = "restarted"
    HOOK_DONE = "hook_done"
    ORPHANS_REMOVED = "orphans_removed"
    BLOCKED = "blocked"


class RotationReason(StrEnum):
    """``rotations.reason``: why a rotation was planned."""

    DUE = "due"  # ``rotation.before`` from its expiry
    NEVER_EXPIRING = "never_expiring"  # ``rotation.rotate_never_expiring`` after first seen
    MANUAL = "manual"  # ``keyd rotate KEY_ID``
