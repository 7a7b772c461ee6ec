"""Rollout attempts: ``rollouttarget.attempt`` (0 for targets from before; sent as DesiredModel.attempt) and
the ``blobproblem`` table (registry blobs found corrupt or missing, or reported so by agents).

Databases created after this migration was written already have both (m0001 creates the current tables):
each step checks first.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, MetaData, String, Table, inspect, text
from sqlalchemy.engine import Connection

_BLOB_PROBLEM = Table(  # the table as this migration creates it (later changes go in later migrations)
    "blobproblem",
    MetaData(),
    Column("sha256", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("used_by", String, nullable=False),
    Column("detail", String, nullable=False),
    Column("detected_at", Float, nullable=False),
)


def upgrade(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("rollouttarget")}
    if "attempt" not in columns:
        conn.execute(text("ALTER TABLE rollouttarget ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0"))
    _BLOB_PROBLEM.create(conn, checkfirst=True)
