"""The controller's state: tables (``tables.py``), the database (``db.py``) and its schema revisions
(``schema.py``, ``migrations/``)."""

import logging

# Alembic logs at INFO as it loads and on every migration run ("Context impl SQLiteImpl." ...); the store logs the
# revisions it applies itself. Set here, before anything imports alembic; a level set for "alembic" is kept.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)
