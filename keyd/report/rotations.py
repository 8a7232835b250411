"""Rotation lines for ``keyd status`` (README "Rotation"): every unfinished
or failed rotation, and the application keys keyd does not rotate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from keyd.redact import scrub
from keyd.report import render
from keyd.store.rotations import RotationSnapshot
from keyd.timeutil import isoformat_z
from keyd.vocab import RotationState

_STEP: dict[str, str] = {
    RotationState.PLANNED: "registering a new key",
    RotationState.REGISTERED: "proving the new key",
    RotationState.PROVEN: "publishing the new key",
    RotationState.PUBLISHED: "new key published",
}


def rotation_lines(
    rows: Sequence[RotationSnapshot],
    application_keys: Sequence[str],
    at: datetime,
    *,
    enabled: bool,
    application_total: int | None = None,
) -> list[str]:
    """One line per rotation, one for the application keys (the first of
    them, ``application_total`` in all when given); empty when there is
    nothing to say."""
    lines: list[str] = []
    for row in rows:
        who = f"key {row.old_key_id} ({row.principal})"
        if row.state == RotationState.FAILED:
            text = f"{who}: FAILED at {row.failed_step}: {render.shorten(scrub(row.last_error or ''), 160)}"
        else:
            text = f"{who}: {row.state}, {_STEP.get(row.state, row.state)}"
            if row.state == RotationState.PUBLISHED and row.retire_after is not None:
                text += f"; old key retired from {isoformat_z(row.retire_after)}"
            if row.last_error:
                text += f" ({render.shorten(scrub(row.last_error), 120)})"
        lines.append(f"{text} (since {render.ago(row.planned_at, at)})")
    total = len(application_keys) if application_total is None else application_total
    if application_keys:
        shown = ", ".join(application_keys[:5]) + (" …" if total > 5 else "")
        lines.append(
            f"{total} application key(s) not rotated (ZITADEL's app-key API; expiry alerts only): {shown}"
        )
    if not enabled and not rows:
        return []
    return lines
