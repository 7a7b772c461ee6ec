"""The search loop: an optuna study (TPE sampler, median pruner) driven with ask-and-tell, its trials run on a
:class:`~controller.factory.backends.base.TaskRunner` (Ray, local threads) or, without one, in this process.

Resuming: the study is opened with ``load_if_exists``. Finished trials (complete, pruned, infeasible) count
against ``n_trials`` and are never rerun; trials a previous run left ``RUNNING`` (the controller died) are
marked failed and their parameters are enqueued again, so they are the next ones tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from controller.factory.backends.base import TaskRunner
from controller.factory.backends.local import LocalTaskRunner
from controller.factory.search.space import SearchSection, suggest, to_stored
from controller.factory.spec import Resources

log = logging.getLogger(__name__)

ATTR_RESULT = "slmops_result"  # user attr of a finished trial: metrics, violations, seconds, feasible


def make_pruner(settings: dict[str, Any]) -> Any:
    import optuna

    if settings.get("kind", "median") == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(settings.get("n_startup_trials", 2)),
        n_warmup_steps=int(settings.get("n_warmup_steps", 0)),
    )


def make_sampler(section: SearchSection) -> Any:
    """TPE, seeded; broken budgets are the trials' constraints (``Trial.set_constraint``), which TPE reads."""
    import optuna

    s = section.sampler
    return optuna.samplers.TPESampler(
        seed=s.seed,
        n_startup_trials=s.n_startup_trials,
        constant_liar=True,  # parallel trials: in-flight ones count as bad, so they are not all alike
    )


@dataclass
class SearchRun:
    """One search: the study and how to make a trial's job from its parameters."""

    section: SearchSection
    storage_url: str
    study_name: str
    make_job: Callable[[Any, dict[str, Any]], Any]  # (optuna trial, params) -> TrialJob
    trial_fn: Callable[[Any], dict[str, Any]]
    resources: Resources = field(default_factory=Resources)
    on_trial: Callable[[int, int, Any], None] = lambda _done, _total, _best: None
    check_cancelled: Callable[[], None] = lambda: None
    job_id: str = ""


def open_study(run: SearchRun) -> Any:
    import optuna

    from controller.factory.search.storage import open_storage, prepare_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepare_storage(run.storage_url)
    return optuna.create_study(
        study_name=run.study_name,
        storage=open_storage(run.storage_url),
        direction=run.section.metric.direction,
        sampler=make_sampler(run.section),
        pruner=make_pruner(run.section.pruner.model_dump()),
        load_if_exists=True,
    )


def recover(study: Any) -> int:
    """Fail the trials a dead run left RUNNING and enqueue their parameters again; returns how many."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        log.info(
            "search %s: trial %d was left running by an earlier run: it is tried again", study.study_name, t.number
        )
    return len(stale)


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _tell(study: Any, trial: Any, future: Future[Any]) -> None:
    from optuna.trial import TrialState

    try:
        result = future.result()
    except Exception as exc:  # a failed trial is recorded; the search goes on
        log.warning("search %s: trial %d failed: %s", study.study_name, trial.number, exc)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr(ATTR_RESULT, {k: v for k, v in result.items() if k != "value"})
    for name, excess in (result.get("violations") or {}).items():
        trial.set_constraint(name, excess)  # > 0: broken; TPE keeps infeasible trials apart
    if result["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, result["value"])


def run_study(run: SearchRun, runner: TaskRunner | None) -> Any:
    """Run trials until the budget is spent; returns the study (finished trials from earlier runs included)."""
    runner = runner or LocalTaskRunner()  # no job backend: one trial at a time, in this process
    study = open_study(run)
    study.set_user_attr("metric", run.section.metric.name)
    jobs = list(study.user_attrs.get("jobs", []))
    if run.job_id and run.job_id not in jobs:
        study.set_user_attr("jobs", [*jobs, run.job_id])  # the jobs that ran this study (a resubmit resumes it)
    recover(study)
    if not study.get_trials(deepcopy=False):
        for params in run.section.enqueue:
            enqueue(study, params)
    budget = run.section.budget
    deadline = time.monotonic() + budget.timeout_s if budget.timeout_s else None
    total = budget.n_trials or 0
    width = max(1, runner.parallelism(run.resources))
    pending: dict[Future[Any], Any] = {}
    failures = 0
    while True:
        run.check_cancelled()
        # failed trials do not use the budget (a search whose trials all fail stops below)
        while len(pending) < width and (not total or finished(study) + len(pending) < total) and not _past(deadline):
            trial = study.ask()
            job = run.make_job(trial, suggest(trial, run.section.space))
            pending[runner.submit(run.trial_fn, job, resources=run.resources)] = trial
        if not pending:
            break
        done, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
        for future in done:
            trial = pending.pop(future)
            _tell(study, trial, future)
            failures += int(future.exception() is not None)
            run.on_trial(finished(study), total, _best_value(study))
        if failures >= max(3, total):
            break  # trials keep failing: stop and let the caller report the errors
    return study


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _best_value(study: Any) -> float | None:
    best = best_trial(study)
    return None if best is None else best.value


def best_trial(study: Any) -> Any:
    """The best complete trial that met every constraint (None if there is none)."""
    from optuna.trial import TrialState

    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (t.user_attrs.get(ATTR_RESULT) or {}).get("feasible", True)
    ]
    if not feasible:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(feasible, key=lambda t: t.value)


def enqueue(study: Any, params: dict[str, Any]) -> None:
    """Try ``params`` first (e.g. the hand-set configuration, as a baseline trial)."""
    study.enqueue_trial(to_stored(params), skip_if_exists=True)
