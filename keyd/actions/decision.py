"""``Decision``: one alert to raise, as the alert evaluation and the
zitadel-source findings hand it to ``actions.alerts._emit``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What to raise, which rung or episode, how bad, the subject line, and
    facts for the message beyond the key's own."""

    kind: str  # vocab.AlertKind
    threshold: str
    severity: str  # vocab.Severity
    subject: str
    extra: Mapping[str, Any] = field(default_factory=dict)
