"""The controller's database: one SQLAlchemy engine (SQLite file by default, PostgreSQL at scale).

``Store(url)`` opens the database and brings its schema to the latest Alembic revision (``schema.upgrade``). Use
``store.session()`` as a context manager; it commits on success and rolls back on error.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from controller.store import schema
from shared.errors import ConfigError, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'controller.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith(("postgresql", "postgres")):
        if url.startswith("postgres://") or url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    raise ConfigError("--db", "url", f"unsupported database URL '{url}': use sqlite:///PATH or postgresql+psycopg://")


def hold_sqlite_lock(url: str) -> IO[str] | None:
    """Take ``controller.lock`` next to a SQLite database for this process's lifetime (None for PostgreSQL).

    SQLite serves one controller process: a second one on the same file is refused (ConfigError naming the
    holder's pid). The lock is an exclusive ``flock`` that the kernel frees when the process dies; keep the
    returned file open while serving and close it to release.
    """
    if not url.startswith("sqlite"):
        return None
    db_path = url.split(":///", 1)[-1]
    if not db_path or db_path == ":memory:":
        return None
    path = Path(db_path).resolve().parent / "controller.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FailedPrecondition(
            f"the SQLite database {db_path} is already served by another controller (pid {holder}, lock {path}); "
            "SQLite allows one controller process: stop that one, or use PostgreSQL (--db postgresql+psycopg://…) "
            "to run several replicas",
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextmanager
def unavailable_if_unreachable(engine: Engine) -> Iterator[None]:
    """Turns a failure to reach the database (connection refused, bad credentials ...) into Unavailable."""
    try:
        yield
    except Exception as exc:
        if "could not connect" in str(exc) or "Connection refused" in str(exc):
            redacted = engine.url.render_as_string(hide_password=True)
            raise Unavailable(f"cannot reach the database at {redacted}: {exc}") from exc
        raise


class Store:
    """Owns the engine; every controller component takes a Store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        with unavailable_if_unreachable(self.engine):
            applied = schema.upgrade(self.engine)
        if applied:
            log.info("applied schema revisions %s to %s", ", ".join(applied), self.redacted_url)

    @property
    def redacted_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
