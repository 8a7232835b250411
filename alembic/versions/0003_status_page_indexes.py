"""status page indexes

Revision ID: 0003
Revises: 0002

Indexes only, no data change: the status page and ``keyd status`` read
bounded slices of the inventory (README "Status page") instead of every
key: keys by status and expiry window (keys.status, keys.expires_at), keys
whose last probe failed (partial: keys.last_error IS NOT NULL), invalid and
group/other-readable locations by source and ref (partial:
key_locations.status = 'invalid'; key_locations.warning IS NOT NULL),
failing or refused token sinks (tokens.state), and the newest events
(events.at, events.id replaces events.at: a cold scan writes every key's
event at one instant, so ordering by at then id sorted them all) and one
key's (events.key_id, at, id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_at"))
        batch_op.create_index("ix_events_at_id", ["at", "id"], unique=False)
        batch_op.create_index("ix_events_key_id_at_id", ["key_id", "at", "id"], unique=False)

    with op.batch_alter_table("key_locations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_key_locations_invalid",
            ["source", "ref"],
            unique=False,
            sqlite_where=sa.text("status = 'invalid'"),
            postgresql_where=sa.text("status = 'invalid'"),
        )
        batch_op.create_index(
            "ix_key_locations_warned",
            ["source", "ref"],
            unique=False,
            sqlite_where=sa.text("warning IS NOT NULL"),
            postgresql_where=sa.text("warning IS NOT NULL"),
        )

    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_keys_failing",
            ["id"],
            unique=False,
            sqlite_where=sa.text("last_error IS NOT NULL"),
            postgresql_where=sa.text("last_error IS NOT NULL"),
        )
        batch_op.create_index("ix_keys_status_expires_at", ["status", "expires_at"], unique=False)

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_state"))

    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index("ix_keys_status_expires_at")
        batch_op.drop_index(
            "ix_keys_failing",
            sqlite_where=sa.text("last_error IS NOT NULL"),
            postgresql_where=sa.text("last_error IS NOT NULL"),
        )

    with op.batch_alter_table("key_locations", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_key_locations_warned",
            sqlite_where=sa.text("warning IS NOT NULL"),
            postgresql_where=sa.text("warning IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_key_locations_invalid",
            sqlite_where=sa.text("status = 'invalid'"),
            postgresql_where=sa.text("status = 'invalid'"),
        )

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_key_id_at_id")
        batch_op.drop_index("ix_events_at_id")
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)
