"""Databases made by the old migration runner (before Alembic).

That runner recorded the names of the ``mNNNN`` modules it had applied in ``slmops_schema_migrations``, but its
``m0001`` ran ``create_all`` on the tables of whichever release first started, so those names do not say what a
database holds. What it holds is looked up instead: the Alembic revision whose tables, columns and indexes are all
there (each revision 0001-0003 is one old module: m0001 as first released, m0002, m0003). The controller stamps
that revision, drops the old table and upgrades from there (``controller.store.schema.upgrade``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Inspector

from shared.errors import FailedPrecondition

OLD_TABLE = "slmops_schema_migrations"

_FIRST_TABLES = (
    "baseline",
    "detectorstate",
    "device",
    "drifteventrow",
    "enrollmenttoken",
    "installevent",
    "job",
    "keyvalue",
    "modelversionrow",
    "profilerow",
    "rollout",
    "rollouttarget",
    "sampledprompt",
    "telemetrybatchrow",
    "telemetrywindowrow",
    "variantrow",
)

# What each revision adds, in order: a database of the old runner has every mark of the revisions up to the one
# it is at, and none of the later ones. (Frozen like the revisions: later revisions need no marks, since only the
# old runner's databases are looked at, and it never went past m0003.)
REVISION_MARKS: tuple[tuple[str, frozenset[str]], ...] = (
    ("0001", frozenset(f"table {name}" for name in _FIRST_TABLES)),
    ("0002", frozenset({"index rollout.ix_rollout_state", "index rollouttarget.ix_rollouttarget_agent_id"})),
    ("0003", frozenset({"table blobproblem", "column rollouttarget.attempt"})),
)


@dataclass(frozen=True)
class OldDatabase:
    """A database of the old runner: the revision it matches (None: none of its tables yet) and the module
    names its runner table lists."""

    revision: str | None
    old_names: tuple[str, ...]


def _marks(insp: Inspector) -> set[str]:
    tables = set(insp.get_table_names())
    found = {f"table {name}" for name in tables}
    for table in ("rollout", "rollouttarget"):
        if table in tables:
            found |= {f"index {table}.{ix['name']}" for ix in insp.get_indexes(table)}
            found |= {f"column {table}.{col['name']}" for col in insp.get_columns(table)}
    return found


def matching_revision(conn: Connection) -> str | None:
    """The last revision whose marks (and all earlier ones') the database has; None for a database without the
    first tables. Raises FailedPrecondition for a database between revisions (say, an interrupted migration)."""
    found = _marks(inspect(conn))
    level: str | None = None
    gap = False
    for revision, marks in REVISION_MARKS:
        have = marks & found
        if have == marks and not gap:
            level = revision
            continue
        if have:
            raise FailedPrecondition(
                f"the database matches no schema revision: it has {', '.join(sorted(have))} of revision {revision} "
                f"but lacks {', '.join(sorted(marks - have)) or 'an earlier revision'} (after revision "
                f"{level or 'none'}); restore a backup, or complete or undo that change by hand"
            )
        gap = True
    return level


def detect(conn: Connection) -> OldDatabase | None:
    """The old runner's database behind ``conn`` (one with no Alembic revision recorded), or None for an empty
    one. The controller's tables without the old runner's table count as old too: what is there decides."""
    has_old_table = inspect(conn).has_table(OLD_TABLE)
    revision = matching_revision(conn)
    if revision is None and not has_old_table:
        return None
    names: tuple[str, ...] = ()
    if has_old_table:
        names = tuple(row[0] for row in conn.execute(text(f"SELECT name FROM {OLD_TABLE} ORDER BY name")))
    return OldDatabase(revision, names)


def drop_old_table(conn: Connection) -> None:
    conn.execute(text(f"DROP TABLE IF EXISTS {OLD_TABLE}"))
