"""``job.steps_json``: every step's start and end as the job worker saw them (``[{"index", "step", "status",
"seconds", "at"}]``), so a follower that polls (``slmops build --follow``) prints each one, however short.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("steps_json", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("steps_json")
