"""`slmops db upgrade|current|downgrade|revision` on SQLite and PostgreSQL, an old runner's database adopted by
`slmops db upgrade`, and controllers starting at once on one PostgreSQL database (the advisory lock)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, create_engine, inspect

from controller.cli.main import build_parser, run
from controller.store import schema
from controller.store.db import Store
from tests.fixtures.stores import drop_pg_schema, make_pg_schema, pg_schema_url
from tests.unit.controller.store.old_runner import make_old_database
from tests.unit.controller.store.schema_checks import differences


def slmops(*argv: str) -> int:
    return run(build_parser().parse_args(list(argv)))


def state(url: str) -> schema.SchemaState:
    engine = create_engine(url)
    try:
        return schema.state(engine)
    finally:
        engine.dispose()


def tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_upgrade_current_downgrade(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = schema.head()
    assert tables(db_url) == []  # (on SQLite this makes the empty file)
    assert slmops("db", "current", "--db", db_url) == 0
    assert "empty: no schema yet" in capsys.readouterr().out
    assert slmops("db", "upgrade", "0002", "--db", db_url) == 0
    out = capsys.readouterr().out
    assert "0001  The first schema" in out and "revision 0002\n" in out
    assert slmops("db", "current", "--db", db_url) == 0
    assert f"0002, not the head ({head}); pending:\n  0003  Rollout attempts" in capsys.readouterr().out
    assert slmops("db", "upgrade", "--db", db_url) == 0
    assert f"revision {head} (head)" in capsys.readouterr().out
    assert slmops("db", "current", "--db", db_url) == 0
    assert capsys.readouterr().out == f"{head} (head)\n"

    assert slmops("db", "downgrade", "0001", "--db", db_url) == 1  # without --yes: only says what it would undo
    assert "would undo" in capsys.readouterr().out
    assert state(db_url).revision == head
    assert slmops("db", "downgrade", "0001", "--yes", "--db", db_url) == 0
    assert "revision 0001" in capsys.readouterr().out
    assert "rollout" in tables(db_url)
    assert slmops("db", "upgrade", "nope", "--db", db_url) == 2  # an unknown revision: an error, not a traceback
    assert "Can't locate revision" in capsys.readouterr().err


def test_data_dir_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "controller"
    assert slmops("db", "current", "--data-dir", str(data_dir)) == 2  # nothing there: says so, creates nothing
    assert "no controller database at" in capsys.readouterr().err
    assert not data_dir.exists()
    assert slmops("db", "upgrade", "--data-dir", str(data_dir)) == 0
    assert (data_dir / "controller.db").exists()
    assert slmops("db", "current", "--data-dir", str(data_dir)) == 0
    assert "(head)" in capsys.readouterr().out


def test_upgrade_adopts_an_old_runner_database(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_old_database(db_url, "first release, then m0002")
    assert slmops("db", "current", "--db", db_url) == 0
    out = capsys.readouterr().out
    assert "old migration runner (m0001_initial, m0002_rollout_indexes applied); it holds revision 0002" in out
    assert slmops("db", "upgrade", "--db", db_url) == 0
    assert "0003  Rollout attempts" in capsys.readouterr().out
    assert state(db_url).at_head


def test_controllers_starting_at_once_on_postgresql() -> None:
    """Four controllers start on one empty PostgreSQL database: the advisory lock lets one migrate, the others
    wait and find the head."""
    name = make_pg_schema()
    url = pg_schema_url(name)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            Store(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert state(url).at_head
    finally:
        drop_pg_schema(name)


def test_revision_writes_the_next_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contributor's path: a model change, `slmops db revision -m ...`, and the new revision brings a database
    to the changed models (into a copy of the revisions, with a changed copy of the models)."""
    scripts = tmp_path / "migrations"
    shutil.copytree(schema.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(schema, "SCRIPT_LOCATION", scripts)
    schema.script_directory.cache_clear()
    try:
        assert slmops("db", "revision", "-m", "nothing") == 2  # models and head agree: nothing written
        assert "agree: nothing to write" in capsys.readouterr().err

        changed = MetaData()
        for table in schema.target_metadata().sorted_tables:
            table.to_metadata(changed)
        changed.tables["device"].append_column(Column("note", String(), nullable=False, server_default=""))
        monkeypatch.setattr(schema, "target_metadata", lambda: changed)
        assert slmops("db", "revision", "-m", "device note") == 0
        written = scripts / "versions" / f"{int(schema.head()) + 1:04d}_device_note.py"
        assert written.exists(), capsys.readouterr().out
        schema.script_directory.cache_clear()
        assert schema.head() == written.name[:4]
        assert "batch_alter_table('device'" in written.read_text()

        engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
        schema.upgrade(engine)
        assert differences(engine, changed) == []
        schema.downgrade(engine, "-1")
        assert "note" not in {c["name"] for c in inspect(engine).get_columns("device")}
        engine.dispose()
    finally:
        schema.script_directory.cache_clear()
