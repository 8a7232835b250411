"""probe due index

Revision ID: 0005
Revises: 0004

An index only, no data change: ``keyd.store.probes.due_targets`` (every
probe chunk in the daemon) and the count of keys still due after a chunk
read the active keys by ``next_probe_at``; with only the single-column
indexes, both planners walked every active key through the status index
and sorted them (40-80 ms per statement at 100,000 keys on SQLite, twice
per chunk: the probe round's cost grew with the inventory). On
``(status, next_probe_at, id)`` each reads only the keys that are due, in
probe order.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index("ix_keys_probe_due", ["status", "next_probe_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index("ix_keys_probe_due")
