"""The schema's Alembic revisions, on SQLite and PostgreSQL: a controller start brings a database to the head once,
the head agrees with the models in tables.py, and every revision upgrades and downgrades cleanly, keeping rows."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from controller.store import legacy, schema
from controller.store.db import Store
from controller.store.tables import Device, RolloutTarget
from shared.errors import FailedPrecondition
from tests.unit.controller.store.schema_checks import model_differences

REVISIONS = schema.revisions_between(None, "head")


def test_revisions_are_numbered_in_order() -> None:
    """One line of revisions, 0001 up; a new one takes the next number (``slmops db revision``)."""
    assert REVISIONS[:3] == ["0001", "0002", "0003"]
    assert [f"{n:04d}" for n in range(1, len(REVISIONS) + 1)] == REVISIONS
    assert REVISIONS[-1] == schema.head()


def test_store_start_upgrades_once_and_keeps_data(db_url: str) -> None:
    store = Store(db_url)
    assert schema.state(store.engine).at_head
    with store.session() as s:
        s.add(Device(agent_id="a1", hostname="h1", profile="cpu-int4"))
    store.close()
    again = Store(db_url)  # a restart: nothing applied, nothing lost
    try:
        assert schema.upgrade(again.engine) == []
        with again.session() as s:
            assert s.get(Device, "a1").hostname == "h1"  # type: ignore[union-attr]
            versions = s.exec(text("SELECT version_num FROM alembic_version")).all()  # type: ignore[call-overload]
            assert [v[0] for v in versions] == [schema.head()]
        assert legacy.OLD_TABLE not in inspect(again.engine).get_table_names()
    finally:
        again.close()


def test_models_agree_with_the_head(db_url: str) -> None:
    """Autogenerate finds nothing between tables.py and a database upgraded to the head: a model change without
    its revision fails here (write one with `slmops db revision -m ...`)."""
    store = Store(db_url)
    try:
        assert model_differences(store.engine) == []
    finally:
        store.close()


def test_a_newer_release_s_database_is_refused(db_url: str) -> None:
    """A database a newer release upgraded (a revision this code lacks): the controller says so instead of
    starting on a schema it does not know."""
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        with pytest.raises(FailedPrecondition, match="revision 9999, which this slmops does not know"):
            Store(db_url)
        assert schema.state(engine).revision == "9999"
    finally:
        engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_each_revision_upgrades_and_downgrades(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        schema.downgrade(engine, "base")
        assert _tables(engine) == set()
        for i, revision in enumerate(REVISIONS):  # each step up, down and up again
            assert schema.upgrade(engine, revision) == [revision]
            before = REVISIONS[i - 1] if i else "base"
            assert schema.downgrade(engine, before) == [revision]
            assert schema.upgrade(engine, revision) == [revision]
        assert schema.state(engine).revision == REVISIONS[-1]
        schema.upgrade(engine)
        assert model_differences(engine) == []
        assert schema.downgrade(engine, "base") == list(reversed(REVISIONS))
        assert _tables(engine) == set()
        schema.upgrade(engine)
        assert model_differences(engine) == []
    finally:
        engine.dispose()


def test_rows_survive_0003_both_ways(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        schema.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO rollouttarget (rollout_id, agent_id, profile, wave, state, message, prev_name, "
                    "prev_version, assigned_at, updated_at) VALUES ('ro', 'a1', 'p', 0, 'assigned', '', '', '', 1, 1)"
                )
            )
        assert schema.upgrade(engine, "0003") == ["0003"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT rollout_id, attempt FROM rollouttarget")).all() == [("ro", 0)]
        assert schema.downgrade(engine, "0002") == ["0003"]
        assert "attempt" not in {c["name"] for c in inspect(engine).get_columns("rollouttarget")}
        assert "blobproblem" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT rollout_id, agent_id FROM rollouttarget")).all() == [("ro", "a1")]
        # the unique (rollout_id, agent_id) and the indexes are still there after SQLite's table copy
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("rollouttarget")}
        assert {"ix_rollouttarget_rollout_id", "ix_rollouttarget_agent_id"} <= indexes
        uniques = [sorted(u["column_names"]) for u in inspect(engine).get_unique_constraints("rollouttarget")]
        assert uniques == [["agent_id", "rollout_id"]]
    finally:
        engine.dispose()
    store = Store(db_url)  # a controller start brings it back to the head
    try:
        with store.session() as s:
            assert s.get(RolloutTarget, 1).attempt == 0  # type: ignore[union-attr]
    finally:
        store.close()
