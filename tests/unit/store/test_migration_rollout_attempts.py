"""Migration m0003: a database from before rollout attempts gains RolloutTarget.attempt (0 for old rows) and
the blobproblem table, on SQLite and PostgreSQL, keeping its rows."""

from __future__ import annotations

from sqlalchemy import inspect, text

from controller.store.db import Store
from controller.store.tables import BlobProblem, RolloutTarget

MIGRATION = "m0003_rollout_attempts"


def _make_old(db_url: str) -> None:
    """A database as a controller before m0003 left it (newer migrations of other tables stay applied)."""
    store = Store(db_url)
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE blobproblem"))
        conn.execute(text("ALTER TABLE rollouttarget DROP COLUMN attempt"))
        conn.execute(text("DELETE FROM slmops_schema_migrations WHERE name = :n"), {"n": MIGRATION})
        conn.execute(
            text(
                "INSERT INTO rollouttarget (rollout_id, agent_id, profile, wave, state, message, prev_name, "
                "prev_version, assigned_at, updated_at) VALUES ('ro-old', 'a1', 'cpu-int4', 0, 'assigned', '', "
                "'m', '1', 5.0, 5.0)"
            )
        )
    assert "attempt" not in {c["name"] for c in inspect(store.engine).get_columns("rollouttarget")}
    store.close()


def test_old_database_gains_attempts_and_blob_problems(db_url: str) -> None:
    _make_old(db_url)
    store = Store(db_url)  # the upgraded controller starts
    try:
        assert "blobproblem" in inspect(store.engine).get_table_names()
        with store.session() as s:
            old = s.exec(text("SELECT rollout_id, attempt FROM rollouttarget")).all()  # type: ignore[call-overload]
            assert [tuple(r) for r in old] == [("ro-old", 0)]
            target = s.get(RolloutTarget, 1)
            assert target is not None and target.attempt == 0
            target.attempt += 1
            s.add(target)
            s.add(BlobProblem(sha256="ab" * 32, kind="corrupt", used_by="m:1/cpu-int4 model.onnx", detected_at=1.0))
        with store.session() as s:
            assert s.get(RolloutTarget, 1).attempt == 1  # type: ignore[union-attr]
            assert s.get(BlobProblem, "ab" * 32).kind == "corrupt"  # type: ignore[union-attr]
    finally:
        store.close()
    again = Store(db_url)  # applied once: a restart changes nothing
    again.close()
