"""Indexes for the heartbeat's desired-state lookup (targets by agent, rollouts by state)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection


def upgrade(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_rollouttarget_agent_id ON rollouttarget (agent_id)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_rollout_state ON rollout (state)"))
