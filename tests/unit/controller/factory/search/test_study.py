"""The search loop on a real optuna study in SQLite, with a cheap trial function: the budget counts finished
trials across runs, a trial a dead run left RUNNING is tried again, an infeasible trial is never the best, a
failing trial is recorded and the search goes on, and trials run in parallel on a task runner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from controller.factory.backends.local import LocalTaskRunner
from controller.factory.recipe import load_recipe
from controller.factory.search.space import SearchSection
from controller.factory.search.study import SearchRun, best_trial, open_study, run_study
from controller.factory.search.table import format_table, summarize


def fake_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Module level (a runner may pickle it): the score is the batch size; 64 breaks a budget; 7 crashes the
    first trial."""
    size = job["params"]["batch_size"]
    if size == 7 and job["number"] == 0:
        raise RuntimeError("out of memory")
    return {
        "state": "complete",
        "value": float(size),
        "metrics": {"accuracy": float(size)},
        "violations": {"max_parameters": 1.0 if size == 64 else -1.0},
        "feasible": size != 64,
        "seconds": 0.01,
    }


def _section(**changes: Any) -> SearchSection:
    raw = {"name": "r", "data": {"task": "smart-building"}, "student": {"model": "/m"}, "profiles": ["cpu-int4"]}
    raw["search"] = {"space": {"batch_size": [8, 16, 32, 64]}, "budget": {"n_trials": 4}, **changes}
    search = load_recipe(yaml.safe_dump(raw), "/r.yaml").search
    assert search is not None
    return search


def _run(tmp_path: Path, section: SearchSection, **kw: Any) -> SearchRun:
    jobs: list[dict[str, Any]] = []

    def make_job(trial: Any, params: dict[str, Any]) -> dict[str, Any]:
        jobs.append(params)
        return {"params": params, "number": trial.number}

    run = SearchRun(section, f"sqlite:///{tmp_path}/search.db", "study-1", make_job, fake_trial, **kw)
    run.jobs = jobs  # type: ignore[attr-defined]
    return run


def test_infeasible_trials_are_never_best_and_the_budget_spans_runs(tmp_path: Path) -> None:
    section = _section(enqueue=[{"batch_size": 64}, {"batch_size": 16}, {"batch_size": 8}])
    study = run_study(_run(tmp_path, section), None)
    assert len(study.trials) == 4
    assert best_trial(study).params["batch_size"] != 64  # the highest score broke a budget
    summary = summarize(study, "accuracy", "sqlite:///x")
    assert summary["trials"][0]["state"] == "infeasible" and summary["trials"][0]["violations"] == {
        "max_parameters": 1.0
    }
    assert "infeasible" in format_table(summary)
    # the same study with a larger budget runs only the missing trials
    again = _run(tmp_path, _section(budget={"n_trials": 6}))
    study = run_study(again, None)
    assert len(again.jobs) == 2 and len(study.trials) == 6  # type: ignore[attr-defined]


def test_a_trial_left_running_by_a_dead_run_is_tried_again(tmp_path: Path) -> None:
    run = _run(tmp_path, _section(budget={"n_trials": 2}))
    dead = open_study(run).ask({"batch_size": CategoricalDistribution([8, 16, 32, 64])})
    dead.suggest_categorical("batch_size", [8, 16, 32, 64])
    study = run_study(run, None)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 2
    assert run.jobs[0] == {"batch_size": 16}  # type: ignore[attr-defined]  # its parameters, first
    assert study.trials[1].user_attrs.get("retry_of") == dead.number


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    section = _section(space={"batch_size": [7, 8]}, enqueue=[{"batch_size": 7}], budget={"n_trials": 2})
    study = run_study(_run(tmp_path, section), None)
    rows = summarize(study, "accuracy", "")["trials"]
    assert rows[0]["state"] == "failed" and "out of memory" in rows[0]["error"]
    assert [r["state"] for r in rows[1:]] == ["complete", "complete"]


def test_trials_run_in_parallel_on_a_task_runner(tmp_path: Path) -> None:
    runner = LocalTaskRunner(max_workers=2)
    try:
        study = run_study(_run(tmp_path, _section(budget={"n_trials": 5})), runner)
    finally:
        runner.close()
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 5


def slow_trial(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.3)
    return fake_trial(job)


def test_a_wall_time_budget_starts_no_trial_after_it(tmp_path: Path) -> None:
    run = _run(tmp_path, _section(budget={"timeout_s": 1.0}))
    run.trial_fn = slow_trial
    started = time.time()
    study = run_study(run, None)
    starts = [t.datetime_start.timestamp() for t in study.trials]
    assert len(starts) >= 2 and max(starts) <= started + 1.0 + 0.25  # none begun after the budget (+ clock slack)
    assert time.time() - started < 1.0 + 0.3 + 2.0  # the last one finished, nothing more
