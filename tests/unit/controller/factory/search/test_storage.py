"""Where a study lives: beside a SQLite controller database (optuna's ``alembic_version`` table would collide with
the controller's), in a schema of its own on PostgreSQL; study names ignore the budget so a larger budget
resumes the same study."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from controller.factory.search.storage import input_identity, open_storage, redact, study_name, study_storage_url
from controller.store.db import Store


def test_sqlite_studies_go_to_a_second_file(tmp_path: Path) -> None:
    url = study_storage_url(f"sqlite:///{tmp_path}/data/controller.db", tmp_path / "x")
    assert url == f"sqlite:///{(tmp_path / 'data' / 'search.db').resolve()}"
    assert study_storage_url("", tmp_path) == f"sqlite:///{(tmp_path / 'search.db').resolve()}"


def test_optuna_and_the_controller_both_use_alembic_version(tmp_path: Path) -> None:
    """Why the study is not in controller.db: both keep a revision in a table of the same name."""
    store = Store(f"sqlite:///{tmp_path}/controller.db")
    store.close()
    open_storage(study_storage_url(f"sqlite:///{tmp_path}/controller.db", tmp_path))
    controller = set(inspect(create_engine(f"sqlite:///{tmp_path}/controller.db")).get_table_names())
    search = set(inspect(create_engine(f"sqlite:///{tmp_path}/search.db")).get_table_names())
    assert {"alembic_version", "job"} <= controller and "trials" not in controller
    assert {"alembic_version", "studies", "trials", "trial_intermediate_values"} <= search


def test_postgres_studies_go_to_their_own_schema() -> None:
    url = study_storage_url("postgresql+psycopg://u:pw@db:5432/slm", Path("/unused"))
    assert url == "postgresql+psycopg://u:pw@db:5432/slm?options=-csearch_path%3Dslmops_optuna"
    scoped = study_storage_url("postgres://u@db/slm?options=-csearch_path%3Dt_1", Path("/unused"))
    assert scoped == "postgresql+psycopg://u@db/slm?options=-csearch_path%3Dt_1_optuna"
    assert redact(url) == "postgresql+psycopg://u:***@db:5432/slm?options=-csearch_path%3Dslmops_optuna"


def test_study_names_follow_step_space_and_inputs_but_not_job_or_budget(tmp_path: Path) -> None:
    """A job resubmitted after a controller restart (a new job id, the same inputs) continues the same study."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    ids = input_identity({"data": str(data), "teacher": str(model)})
    cfg = {"search": {"space": {"batch_size": [8]}, "budget": {"n_trials": 3}}, "task": "t"}
    name = study_name("search", cfg, ids)
    assert name.startswith("slmops.search.")
    assert study_name("search", {**cfg, "search": {**cfg["search"], "budget": {"n_trials": 9}}}, ids) == name
    assert study_name("search", {**cfg, "search": {"space": {"batch_size": [16]}}}, ids) != name
    copy = tmp_path / "elsewhere.jsonl"  # the same content at another path (e.g. a Ray worker's copy)
    copy.write_bytes(data.read_bytes())
    assert study_name("search", cfg, input_identity({"data": str(copy), "teacher": str(model)})) == name
    (model / "config.json").write_text('{"hidden_size": 16}')  # another teacher: another study
    assert study_name("search", cfg, input_identity({"data": str(data), "teacher": str(model)})) != name


@pytest.mark.postgres
def test_a_postgres_controller_keeps_its_studies_in_their_own_schema(pg_url: str) -> None:
    import optuna

    from controller.factory.search.storage import prepare_storage

    store = Store(pg_url)  # the controller's tables (and its alembic_version) in the test's schema
    url = study_storage_url(pg_url, Path("/unused"))
    schema = url.rsplit("%3D", 1)[-1]
    try:
        prepare_storage(url)
        study = optuna.create_study(study_name="slmops.j.search.x", storage=open_storage(url))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        with store.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names(schema=schema))
            mine = set(inspect(conn).get_table_names())
        assert {"studies", "trials", "alembic_version"} <= tables and "trials" not in mine and "job" in mine
        assert len(optuna.load_study(study_name="slmops.j.search.x", storage=open_storage(url)).trials) == 2
    finally:
        store.close()
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
