"""Controller replicas (several ``controller serve`` processes on one PostgreSQL database).

The ``controllerreplica`` table (each replica's address and heartbeat, and which one leads the periodic work) and
``job.claimed_by`` (the replica that claimed a build job; empty for the jobs already there).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controllerreplica",
        sa.Column("replica_id", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("is_leader", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id"),
    )
    # The server default fills the rows already there; a plain string keeps SQLite's ADD COLUMN in place.
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:  # SQLite: the table is copied without the column
        batch.drop_column("claimed_by")
    op.drop_table("controllerreplica")
