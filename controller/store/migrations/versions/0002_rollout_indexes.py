"""Rollout indexes: targets by agent, rollouts by state (the old runner's m0002_rollout_indexes).

For the heartbeat's desired-state lookup.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rollouttarget_agent_id", "rollouttarget", ["agent_id"], unique=False)
    op.create_index("ix_rollout_state", "rollout", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_rollout_state", table_name="rollout")
    op.drop_index("ix_rollouttarget_agent_id", table_name="rollouttarget")
