"""The initial schema: every table in controller/store/tables.py as first released."""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import controller.store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def upgrade(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)
