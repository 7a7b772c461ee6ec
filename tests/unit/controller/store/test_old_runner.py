"""Databases of the old migration runner, built with its own SQL (old_runner.py), upgrade in place at a controller
start on SQLite and PostgreSQL: recognised by what they hold, stamped, the old table dropped, rows kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from controller.store import legacy, schema
from controller.store.db import Store
from controller.store.tables import BlobProblem, Device, RolloutTarget, VariantRow
from shared.errors import FailedPrecondition
from tests.fixtures.stores import drop_pg_schema, make_pg_schema, pg_schema_url
from tests.unit.controller.store.old_runner import HISTORIES, REVISION_OF, make_old_database
from tests.unit.controller.store.schema_checks import differences, model_differences, reflected


@pytest.mark.parametrize("history", list(HISTORIES))
def test_old_database_upgrades_in_place(db_url: str, history: str) -> None:
    make_old_database(db_url, history)
    engine = create_engine(db_url)
    found = schema.state(engine)
    engine.dispose()
    assert found.revision is None and found.old_runner is not None
    assert found.old_runner.revision == REVISION_OF[history]
    assert found.old_runner.old_names == HISTORIES[history][2]

    store = Store(db_url)  # the new controller starts
    try:
        assert schema.state(store.engine).at_head
        assert legacy.OLD_TABLE not in inspect(store.engine).get_table_names()
        assert model_differences(store.engine) == []
        with store.session() as s:
            device = s.get(Device, "a1")
            assert device is not None and device.hostname == "h1" and device.healthy and not device.profile_pinned
            target = s.get(RolloutTarget, 1)
            assert target is not None and (target.rollout_id, target.attempt) == ("ro-old", 0)
            variant = s.exec(text("SELECT signature FROM variantrow")).one()  # type: ignore[call-overload]
            assert bytes(variant[0]) == b"\x00\x01"
            target.attempt += 1
            s.add(target)
            s.add(BlobProblem(sha256="ab" * 32, kind="corrupt", used_by="m:1/cpu-int4 model.onnx", detected_at=1.0))
            s.add(
                VariantRow(name="m", version="2", profile="cpu-int4", manifest_json=b"{}", signature=b"s", key_id="k")
            )
        with store.session() as s:
            assert s.get(RolloutTarget, 1).attempt == 1  # type: ignore[union-attr]
            assert s.get(BlobProblem, "ab" * 32).kind == "corrupt"  # type: ignore[union-attr]
    finally:
        store.close()
    again = Store(db_url)  # adopted once: a restart changes nothing
    try:
        assert schema.upgrade(again.engine) == []
    finally:
        again.close()


def test_database_between_revisions_is_refused(db_url: str) -> None:
    """m0003 half done (the column added, the table not: SQLite ran DDL outside the transaction): no revision
    matches, so the controller refuses to guess and says what is there."""
    make_old_database(db_url, "first release, then m0002")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE rollouttarget ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0"))
    engine.dispose()
    with pytest.raises(
        FailedPrecondition, match=r"column rollouttarget\.attempt of revision 0003 but lacks table blob"
    ):
        Store(db_url)


def test_empty_old_runner_table_only(db_url: str) -> None:
    """The old runner's table and no tables (it died before m0001): the upgrade starts from nothing."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {legacy.OLD_TABLE} (name VARCHAR(128) PRIMARY KEY, applied_at FLOAT)"))
    engine.dispose()
    store = Store(db_url)
    try:
        assert schema.state(store.engine).at_head
        assert legacy.OLD_TABLE not in inspect(store.engine).get_table_names()
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def two_db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases on one backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
        return
    schemas = [make_pg_schema(), make_pg_schema()]
    try:
        yield pg_schema_url(schemas[0]), pg_schema_url(schemas[1])
    finally:
        for name in schemas:
            drop_pg_schema(name)


@pytest.mark.parametrize("history", list(HISTORIES))
def test_revision_is_what_the_old_runner_made(two_db_urls: tuple[str, str], history: str) -> None:
    """The revision an old database is stamped with builds the same tables, columns, indexes and constraints as
    the old runner did (revision 0001 is the first release's create_all, spelled out)."""
    old_url, new_url = two_db_urls
    make_old_database(old_url, history)
    old, new = create_engine(old_url), create_engine(new_url)
    try:
        schema.upgrade(new, REVISION_OF[history])
        with old.begin() as conn:
            conn.execute(text(f"DROP TABLE {legacy.OLD_TABLE}"))
        assert differences(old, reflected(new)) == []
        assert differences(new, reflected(old)) == []
    finally:
        old.dispose()
        new.dispose()
