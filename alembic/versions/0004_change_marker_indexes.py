"""change marker indexes

Revision ID: 0004
Revises: 0003

Indexes only, no data change: ``keyd.store.snapshot.change_marker`` (every
15 s in the daemon, to decide whether ``/metrics`` needs a new snapshot)
reads ``max(updated_at)`` of keys, token sinks and rotations; without an
index that walked the whole table (40-57 ms at 100,000 keys on SQLite,
0.3 % of a core on its own), with one it reads one index entry.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keys_updated_at"), ["updated_at"], unique=False)

    with op.batch_alter_table("rotations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rotations_updated_at"), ["updated_at"], unique=False)

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_updated_at"))

    with op.batch_alter_table("rotations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rotations_updated_at"))

    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keys_updated_at"))
