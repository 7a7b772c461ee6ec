"""`slmops db upgrade|current|downgrade|revision`: the controller's database schema (Alembic revisions).

The controller upgrades its database at every start; these act on the database directly (no controller needed):
upgrade ahead of a start, see where a database stands, undo revisions, and (contributors) write a new revision.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli.common import console
from shared.defaults import DEFAULT_CONTROLLER_DATA_DIR
from shared.errors import FailedPrecondition, InvalidArgument, NotFound

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the controller's database schema: upgrade, current, downgrade")
    actions = db.add_subparsers(dest="action", required=True)
    p = actions.add_parser("upgrade", help="apply the pending schema revisions (a controller start does this too)")
    p.add_argument("revision", nargs="?", default="head", help="the revision to stop at (default: head, the latest)")
    _add_database_flags(p)
    p.set_defaults(func=upgrade)
    p = actions.add_parser("current", help="the database's schema revision and whether it is the latest (head)")
    _add_database_flags(p)
    p.set_defaults(func=current)
    p = actions.add_parser(
        "downgrade", help="undo schema revisions down to REVISION: what they added is dropped, data included"
    )
    p.add_argument("revision", help="the revision to keep (base: undo them all)")
    p.add_argument("--yes", action="store_true", help="drop it (without: only list what would be undone)")
    _add_database_flags(p)
    p.set_defaults(func=downgrade)
    p = actions.add_parser(
        "revision", help="contributors (source checkout): write the next revision from changes to store/tables.py"
    )
    p.add_argument("-m", "--message", required=True, help="what the revision changes (its title and file name)")
    p.add_argument("--empty", action="store_true", help="an empty revision to fill in by hand (say, moving data)")
    p.set_defaults(func=revision)


def _add_database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default=os.environ.get("SLMOPS_DB", ""), help="database URL (default: SQLite in the data dir)"
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SLMOPS_DATA_DIR", str(DEFAULT_CONTROLLER_DATA_DIR)),
        help="the controller's data dir, for its SQLite database",
    )


@contextmanager
def _database(args: argparse.Namespace, create: bool = False) -> Iterator[Engine]:
    """The engine for --db or the data dir's SQLite file; a SQLite file must exist unless ``create``."""
    from alembic.util import CommandError

    from controller.store.db import make_engine, sqlite_url, unavailable_if_unreachable

    url = args.db or sqlite_url(Path(args.data_dir))
    engine = make_engine(url)
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if path and path != ":memory:" and not Path(path).exists():
        if not create:
            engine.dispose()
            raise NotFound(f"no controller database at {path}: give --data-dir DIR or --db URL")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with unavailable_if_unreachable(engine):
            yield engine
    except CommandError as exc:  # an unknown revision, one not above or below the current one ...
        raise InvalidArgument(f"{exc}; `slmops db current` shows where the database stands") from None
    finally:
        engine.dispose()


def _describe(revisions: list[str]) -> str:
    from controller.store import schema

    script = schema.script_directory()
    return "\n".join(f"  {rev}  {script.get_revision(rev).doc}" for rev in revisions)  # type: ignore[union-attr]


def upgrade(args: argparse.Namespace) -> int:
    from controller.store import schema

    with _database(args, create=True) as engine:
        applied = schema.upgrade(engine, args.revision)
        now = schema.state(engine)
    if applied:
        console.print(f"applied:\n{_describe(applied)}")
    console.print(f"revision {now.revision or 'none'}{' (head)' if now.at_head else ''}")
    return 0


def current(args: argparse.Namespace) -> int:
    from controller.store import schema

    with _database(args) as engine:
        now = schema.state(engine)
    if now.old_runner is not None:
        old = now.old_runner
        console.print(
            f"made by the old migration runner ({', '.join(old.old_names) or 'nothing'} applied); it holds revision "
            f"{old.revision or 'none'}. `slmops db upgrade` or a controller start records that and upgrades to "
            f"{now.head}"
        )
    elif now.revision is None:
        console.print(f"empty: no schema yet (head is {now.head}; `slmops db upgrade` or a controller start makes it)")
    elif now.at_head:
        console.print(f"{now.revision} (head)")
    elif not schema.known(now.revision):
        console.print(f"{now.revision}: not a revision of this slmops (a newer release upgraded it)")
    else:
        pending = schema.revisions_between(now.revision, now.head)
        console.print(f"{now.revision}, not the head ({now.head}); pending:\n{_describe(pending)}")
    return 0


def downgrade(args: argparse.Namespace) -> int:
    from controller.store import schema

    with _database(args) as engine:
        if not args.yes:
            now = schema.state(engine)
            revision = now.revision or (now.old_runner.revision if now.old_runner else None)
            target = None if args.revision == "base" else args.revision
            undo = list(reversed(schema.revisions_between(target, revision)))
            if not undo:
                console.print(f"nothing to undo: the database is at revision {revision or 'none'}")
                return 0
            console.print(f"would undo (dropping the tables and columns they added):\n{_describe(undo)}")
            console.print("add --yes to do it")
            return 1
        undone = schema.downgrade(engine, args.revision)
        now = schema.state(engine)
    console.print(f"undone:\n{_describe(undone)}" if undone else "nothing to undo")
    console.print(f"revision {now.revision or 'none'}")
    return 0


def revision(args: argparse.Namespace) -> int:
    """Compares the models with a scratch SQLite database at the head and writes what differs as the next
    revision into the source tree's versions/ directory."""
    import tempfile

    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from controller.store import schema
    from controller.store.db import make_engine, sqlite_url

    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(sqlite_url(Path(scratch)))
        try:
            schema.upgrade(engine)
            with engine.begin() as conn:
                options = {**schema.CONTEXT_OPTIONS, "target_metadata": schema.target_metadata()}
                diff = compare_metadata(MigrationContext.configure(conn, opts=options), schema.target_metadata())
                if not diff and not args.empty:
                    raise FailedPrecondition(
                        "controller/store/tables.py and the head revision agree: nothing to write (--empty writes an "
                        "empty revision to fill in by hand)"
                    )
                rev_id = f"{int(schema.head()) + 1:04d}"
                script = command.revision(
                    schema.alembic_config(conn), message=args.message, autogenerate=not args.empty, rev_id=rev_id
                )
        finally:
            engine.dispose()
    path = script.path if script is not None and not isinstance(script, list) else "?"
    console.print(
        f"wrote {path}: check it (names, a server_default for a new NOT NULL column), run ruff format on it and "
        "`pytest tests/unit/controller/store`"
    )
    return 0
