"""Comparing databases with the models, and with each other, as Alembic's autogenerate does."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from controller.store import schema


def differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """What autogenerate would write to bring the database at ``engine`` to ``metadata`` (the project's options:
    types compared, server defaults not)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={**schema.CONTEXT_OPTIONS, "target_metadata": metadata})
        return compare_metadata(context, metadata)


def model_differences(engine: Engine) -> list[Any]:
    """Differences between the database and the models in controller/store/tables.py."""
    return differences(engine, schema.target_metadata())


def reflected(engine: Engine) -> MetaData:
    """The database's tables as metadata (Alembic's version table left out)."""
    metadata = MetaData()
    metadata.reflect(engine)
    version_table = metadata.tables.get("alembic_version")
    if version_table is not None:
        metadata.remove(version_table)
    return metadata
