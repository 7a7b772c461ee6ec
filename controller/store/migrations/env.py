"""Alembic's environment for the controller's schema. It runs only through ``controller.store.schema`` (the
controller's start and ``slmops db``), which hands over an open connection in ``config.attributes`` inside its
transaction, on PostgreSQL under the migration advisory lock. Offline (``--sql``) mode is not supported."""

from __future__ import annotations

from alembic import context

from controller.store import schema

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the controller's migrations with `slmops db upgrade` (controller.store.schema)")
context.configure(connection=connection, target_metadata=schema.target_metadata(), **schema.CONTEXT_OPTIONS)
with context.begin_transaction():
    context.run_migrations()
