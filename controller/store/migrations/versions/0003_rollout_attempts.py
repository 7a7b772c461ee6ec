"""Rollout attempts and blob problems (the old runner's m0003_rollout_attempts).

``rollouttarget.attempt`` (0 for the targets already there; sent as DesiredModel.attempt) and the ``blobproblem``
table (registry blobs found corrupt or missing, or reported so by agents).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The server default fills the rows already there; a plain string keeps SQLite's ADD COLUMN in place.
    with op.batch_alter_table("rollouttarget") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "blobproblem",
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("used_by", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )


def downgrade() -> None:
    op.drop_table("blobproblem")
    with op.batch_alter_table("rollouttarget") as batch:  # SQLite: the table is copied without the column
        batch.drop_column("attempt")
