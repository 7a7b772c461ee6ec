"""The ``search`` stage end to end on real parts: optuna's study in SQLite next to the controller database, real
training of tiny students, the onnxruntime-genai builder and evaluation, the registry.

Three trials are enqueued so the outcome does not depend on the sampler: a good one, one whose learning rate is
far too small (the median pruner stops it on its validation loss) and one too large for the parameter budget
(infeasible). The best trial's values reach train-student, the target's quantize and the published lineage;
running the stage again resumes the stored study without rerunning a trial. A second test runs the trials as
Ray tasks on a real local Ray head.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.factory.pipeline import PipelineStep
from controller.factory.runner import PipelineRunner
from controller.registry.registry import Registry
from tests.fixtures.ray import RayHead

STUDENT = {
    "init": {"arch": "llama", "hidden_size": 48, "num_layers": 1, "num_heads": 2, "intermediate_size": 96},
    "learning_rate": 0.003,
    "max_steps": 30,
    "batch_size": 16,
    "max_seq_len": 96,
    "num_threads": 1,
}
GOOD = {"learning_rate": 0.005, "hidden_size": 32, "int4_block_size": 64}
SEARCH: dict[str, Any] = {
    "space": {"learning_rate": {"low": 1e-6, "high": 1e-2, "log": True}, "hidden_size": [32, 64]},
    "metric": {"limit": 8},
    "budget": {"n_trials": 3},
    "pruner": {"n_startup_trials": 1, "report_every": 10},
    "enqueue": [GOOD, {"learning_rate": 1e-6, "hidden_size": 32}, {"learning_rate": 0.005, "hidden_size": 64}],
}
SEARCH["space"]["int4_block_size"] = [32, 64]
# Ray 2.60 turns token authentication on by default: with several test heads on one machine the driver found
# another head's token and could not connect. The session's test head is local (127.0.0.1): no auth needed.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _steps(task_data: dict[str, Path], tokenizer: Path, search: dict[str, Any], publish: bool) -> list[PipelineStep]:
    data = {"data": str(task_data["train"]), "tokenizer": str(tokenizer)}
    config = {
        **data,
        "search": search,
        "validation": str(task_data["validation"]),
        "student": STUDENT,
        "build": {"profile": "cpu-int4", "precision": "int4"},
        "budgets": {"max_parameters": 60000},  # hidden 32: ~45k parameters; hidden 64: ~130k (infeasible)
        "task": "smart-building",
        "max_new_tokens": 40,
    }
    steps = [PipelineStep("search", "search", config)]
    if not publish:
        return steps
    student = {**STUDENT, **data, "max_steps": 5, "search": "search.best_config"}
    build = {"profile": "cpu-int4", "precision": "int4", "model": "train-student.model", "search": "search.best_config"}
    variant = {"profile": "cpu-int4", "precision": "int4", "execution_provider": "cpu", "model": "quantize.model"}
    return [
        *steps,
        PipelineStep("train-student", "train-student", student, needs=["search"]),
        PipelineStep("quantize", "quantize", build, needs=["train-student", "search"], profile="cpu-int4"),
        PipelineStep(
            "publish",
            "publish",
            {"name": "searched", "variants": [variant], "search": "search.best_config"},
            needs=["quantize", "search"],
        ),
    ]


def _trials_in_db(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


@pytest.mark.slow
def test_a_search_feeds_the_pipeline_and_resumes_its_study(
    tmp_path: Path, task_data: dict[str, Path], tiny_hf_model: Path, registry: Registry
) -> None:
    extras = {"db_url": f"sqlite:///{tmp_path}/controller.db", "job_id": "job-1", "registry": registry}
    steps = _steps(task_data, tiny_hf_model, SEARCH, publish=True)
    result = PipelineRunner(tmp_path / "run1", None, extras=extras).run(steps)

    summary = result.outcomes["search"].metrics
    assert [r["state"] for r in summary["trials"]] == ["complete", "pruned", "infeasible"]
    assert summary["best"]["number"] == 0 and summary["best"]["params"] == GOOD
    pruned = summary["trials"][1]
    assert pruned["step"] == 10 and pruned["val_loss"] > 0  # stopped at its first report
    assert summary["trials"][2]["violations"]["max_parameters"] > 0
    # stored in the study database beside controller.db (optuna's own tables, not the controller's)
    assert _trials_in_db(tmp_path / "search.db") == [(0, "COMPLETE"), (1, "PRUNED"), (2, "COMPLETE")]

    # the best trial's values override the hand-set ones downstream
    student = result.outcomes["train-student"].metrics
    assert student["searched"] == {"learning_rate": 0.005, "init": {"hidden_size": 32}}
    assert student["parameters"] == summary["best"]["metrics"]["parameters"]
    assert result.outcomes["quantize"].metrics["searched"] == {"int4_block_size": 64}
    lineage = registry.get_model("searched", "1").lineage["search"]
    assert lineage["best_params"] == GOOD and lineage["counts"] == {"complete": 1, "pruned": 1, "infeasible": 1}

    # the job resubmitted (a new job id, as after a controller restart): the stored study is resumed, no trial reruns
    resubmitted = {**extras, "job_id": "job-2"}
    steps = _steps(task_data, tiny_hf_model, SEARCH, False)
    again = PipelineRunner(tmp_path / "run2", None, extras=resubmitted).run(steps)
    assert again.outcomes["search"].metrics["trials"] == summary["trials"]
    assert not (tmp_path / "run2" / "00-search" / "trials").exists()
    # a larger budget continues the same study with one more trial
    bigger = {**SEARCH, "budget": {"n_trials": 4}}
    more = PipelineRunner(tmp_path / "run3", None, extras=extras).run(_steps(task_data, tiny_hf_model, bigger, False))
    assert [r["number"] for r in more.outcomes["search"].metrics["trials"]] == [0, 1, 2, 3]
    assert [p.name for p in (tmp_path / "run3" / "00-search" / "trials").iterdir()] == ["0003"]


@pytest.mark.slow
def test_search_trials_run_as_ray_tasks(
    tmp_path: Path, task_data: dict[str, Path], tiny_hf_model: Path, ray_head: RayHead
) -> None:
    import ray

    from controller.factory.backends.ray import RayTaskRunner

    runner = RayTaskRunner(ray_head.gcs_address)
    try:
        assert runner.parallelism(_resources()) == 2  # two 1-CPU trials at once on the 2-CPU head
        search = {**SEARCH, "enqueue": [GOOD, {"learning_rate": 0.003, "hidden_size": 32}], "budget": {"n_trials": 2}}
        extras = {"db_url": f"sqlite:///{tmp_path}/controller.db", "job_id": "ray-1", "task_runner": runner}
        result = PipelineRunner(tmp_path / "run", None, extras=extras).run(
            _steps(task_data, tiny_hf_model, search, publish=False)
        )
    finally:
        runner.close()
        ray.shutdown()
    rows = result.outcomes["search"].metrics["trials"]
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert all(r["metrics"]["parameters"] < 60000 for r in rows)
    assert _trials_in_db(tmp_path / "search.db") == [(0, "COMPLETE"), (1, "COMPLETE")]


def _resources():  # type: ignore[no-untyped-def]
    from controller.factory.spec import Resources

    return Resources(num_cpus=1, memory_mb=512)


@pytest.mark.slow
def test_a_search_recipe_builds_on_ray_and_records_its_search(ray_jobs) -> None:  # type: ignore[no-untyped-def]
    """The whole job on Ray: the search stage is a Ray task that runs its trials as Ray tasks."""
    import yaml

    from tests.integration.factory.test_jobs import registry_of, tiny_recipe, wait

    recipe = tiny_recipe()
    del recipe["teacher"]
    recipe["student"]["max_steps"] = 10
    recipe["search"] = {
        "profile": "cpu-int4",
        "space": {"learning_rate": [0.003, 0.01]},
        "enqueue": [{"learning_rate": 0.003}, {"learning_rate": 0.01}],
        "metric": {"limit": 4},
        "budget": {"n_trials": 2},
        "pruner": {"kind": "none", "report_every": 5},
    }
    job = wait(ray_jobs, ray_jobs.submit(yaml.safe_dump(recipe)).job_id, timeout=900)
    assert job.state == "SUCCEEDED", job.error
    lineage = registry_of(ray_jobs).get_model("tiny-demo", "1").lineage["search"]
    assert lineage["counts"] == {"complete": 2} and lineage["best_params"]["learning_rate"] in (0.003, 0.01)
    assert _trials_in_db(ray_jobs.data_dir / "search.db") == [(0, "COMPLETE"), (1, "COMPLETE")]
