"""alert rung expiry: alerts.threshold "7d@<instant>" becomes threshold "7d" + alerts.expires_at

Revision ID: 0002
Revises: 0001

Until 0001 a ladder rung was stored as one string, ``<label>@<expiry>``
(``7d@2027-01-01T00:00:00Z``, ``expired@…``), in ``alerts.threshold``. Now
the label stays in ``threshold`` and the expiry instant gets its own
nullable column, ``expires_at``. Existing rows of the ladder kinds
(``expiring``, ``expired``) are split; every other threshold (episode ids
such as ``ok@<instant>`` included) is left as it is, with ``expires_at``
NULL.

Uniqueness, formerly UNIQUE (about, kind, threshold), is two partial unique
indexes, since unique constraints treat NULLs as distinct on both backends:
(about, kind, threshold, expires_at) WHERE expires_at IS NOT NULL, and
(about, kind, threshold) WHERE expires_at IS NULL.

Self-contained on purpose (no keyd imports): it must keep working however
keyd changes later.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LADDER_KINDS = ("expiring", "expired")
RUNG_INDEX = "uq_alerts_about_kind_threshold_expires_at"
PLAIN_INDEX = "uq_alerts_about_kind_threshold"
OLD_CONSTRAINT = "uq_alerts_about_kind_threshold"

alerts = sa.table(
    "alerts",
    sa.column("id", sa.Integer()),
    sa.column("kind", sa.String(16)),
    sa.column("threshold", sa.String(64)),
    sa.column("expires_at", sa.DateTime(timezone=True)),
)


def _split(threshold: str) -> tuple[str, datetime] | None:
    """``7d@2027-01-01T00:00:00Z`` → ("7d", that instant in UTC); None when
    the text is not a rung name (left as it is)."""
    label, at, instant = threshold.rpartition("@")
    if not at or not label:
        return None
    try:
        value = datetime.fromisoformat(instant)
    except ValueError:
        return None
    if value.tzinfo is None:
        return None
    return label, value.astimezone(UTC)


def _stored(value: datetime) -> datetime:
    """As keyd's UTCDateTime stores it: aware UTC, naive UTC on SQLite."""
    return value.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else value


def _online_only() -> None:
    if op.get_context().as_sql:
        raise RuntimeError(
            "revision 0002 moves existing rows: run it on the database (keyd db upgrade), not --sql"
        )


def _split_rungs() -> None:
    _online_only()
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(alerts.c.id, alerts.c.threshold).where(
            alerts.c.kind.in_(LADDER_KINDS), alerts.c.threshold.contains("@", autoescape=True)
        )
    ).all()
    for row_id, threshold in rows:
        parts = _split(threshold)
        if parts is not None:
            bind.execute(
                sa.update(alerts)
                .where(alerts.c.id == row_id)
                .values(threshold=parts[0], expires_at=_stored(parts[1]))
            )


def _join_rungs() -> None:
    _online_only()
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(alerts.c.id, alerts.c.threshold, alerts.c.expires_at).where(
            alerts.c.expires_at.is_not(None)
        )
    ).all()
    for row_id, threshold, expires_at in rows:
        at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        instant = at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        bind.execute(
            sa.update(alerts)
            .where(alerts.c.id == row_id)
            .values(threshold=f"{threshold}@{instant}", expires_at=None)
        )


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        # dropped before the split: two rungs of one label for different
        # expiries share a threshold afterwards
        batch_op.drop_constraint(OLD_CONSTRAINT, type_="unique")
    _split_rungs()
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(
            RUNG_INDEX,
            ["about", "kind", "threshold", "expires_at"],
            unique=True,
            sqlite_where=sa.text("expires_at IS NOT NULL"),
            postgresql_where=sa.text("expires_at IS NOT NULL"),
        )
        batch_op.create_index(
            PLAIN_INDEX,
            ["about", "kind", "threshold"],
            unique=True,
            sqlite_where=sa.text("expires_at IS NULL"),
            postgresql_where=sa.text("expires_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(PLAIN_INDEX)
        batch_op.drop_index(RUNG_INDEX)
    _join_rungs()
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.create_unique_constraint(OLD_CONSTRAINT, ["about", "kind", "threshold"])
