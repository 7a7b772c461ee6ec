"""The controller's schema as Alembic revisions: ``versions/NNNN_slug.py``, each with ``upgrade()`` and
``downgrade()``, applied in order by ``controller.store.schema`` (at every controller start and by
``slmops db upgrade``) and recorded in ``alembic_version``. A revision is frozen once written: it spells out its
tables and columns instead of importing ``tables.py``. Change the schema with a new revision
(``slmops db revision -m "what changed"``), never by editing an old one.
"""
