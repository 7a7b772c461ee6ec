"""Numbered schema migrations. Each module ``mNNNN_name.py`` defines ``upgrade(conn)``; applied ones are
recorded in ``slmops_schema_migrations`` so each runs once per database. Never edit an applied migration:
add a new one (ALTER TABLE ... ADD COLUMN, new tables), never drop data.
"""

from __future__ import annotations

import importlib
import pkgutil
import time

from sqlalchemy import text
from sqlalchemy.engine import Engine

_TABLE = "slmops_schema_migrations"


def _migration_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("m") and m.name[1:5].isdigit())


def apply_migrations(engine: Engine) -> list[str]:
    """Apply migrations not yet recorded; returns the names applied now."""
    applied_now: list[str] = []
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_TABLE} (name VARCHAR(128) PRIMARY KEY, applied_at FLOAT)"))
        if engine.dialect.name == "postgresql":  # one controller migrates at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        done = {row[0] for row in conn.execute(text(f"SELECT name FROM {_TABLE}"))}
        for name in _migration_names():
            if name in done:
                continue
            module = importlib.import_module(f"{__name__}.{name}")
            module.upgrade(conn)
            conn.execute(
                text(f"INSERT INTO {_TABLE} (name, applied_at) VALUES (:n, :t)"), {"n": name, "t": time.time()}
            )
            applied_now.append(name)
    return applied_now
