"""``Decision``: one alert to raise, as the alert evaluation and the
zitadel-source findings hand it to ``actions.alerts._emit``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What to raise, which rung or episode, how bad, the subject line,
    facts for the message beyond the key's own, and for a ladder rung the
    expiry it counts down to (``alerts.expires_at``)."""

    kind: str  # vocab.AlertKind
    threshold: str
    severity: str  # vocab.Severity
    subject: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
