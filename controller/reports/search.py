"""Hyperparameter search plots for ``slmops report --html``: per study, the metric of every trial (pruned and
infeasible ones marked) and the parameters' importances (``optuna.importance``, PED-ANOVA).

The studies are read from where the ``search`` stage stores them (``controller/factory/search/storage.py``:
beside the controller's SQLite database, or in the ``*_optuna`` schema of its PostgreSQL database); a study
whose first trial started in the report's window is plotted (the newest ``MAX_STUDIES``).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC
from pathlib import Path
from typing import Any

from controller.factory.search.storage import open_storage, redact, study_storage_url
from controller.factory.search.study import best_trial
from controller.factory.search.table import trial_table

log = logging.getLogger(__name__)

MAX_STUDIES = 3
_NAME = re.compile(r"^search-(?P<study>.+)-(?P<kind>trials|importance)\.png$")
_STATE_STYLE = {
    "complete": ("tab:blue", "o"),
    "infeasible": ("tab:orange", "X"),
    "pruned": ("tab:gray", "v"),
    "failed": ("tab:red", "x"),
}


def caption(name: str) -> str:
    """The figure caption of a search plot's file name ("" for other plots)."""
    match = _NAME.match(name)
    if not match:
        return ""
    if match["kind"] == "trials":
        return (
            f"Search {match['study']}: the metric of every trial on the validation split (best starred; pruned "
            "trials at their last validation loss, not comparable; infeasible: broke a budget)."
        )
    return f"Search {match['study']}: how much each parameter explains the metric (optuna PED-ANOVA importances)."


def _short(study: Any) -> str:
    """``<last job>.<step>`` (the study name's step and hash when no job is recorded)."""
    jobs = study.user_attrs.get("jobs") or []
    step = study.study_name.split(".")[1] if study.study_name.count(".") >= 2 else study.study_name
    return f"{jobs[-1]}.{step}" if jobs else study.study_name.removeprefix("slmops.")


def trials_png(study: Any) -> bytes:
    from controller.reports.plots import _figure, _png

    rows = trial_table(study)
    fig, (ax,) = _figure(1, 3.2)
    best = best_trial(study)
    for state, (color, marker) in _STATE_STYLE.items():
        pts = [(r["number"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None]
        if state == "pruned":
            pts = [(r["number"], 0.0) for r in rows if r["state"] == "pruned"]
        if pts:
            ax.scatter(*zip(*pts, strict=True), c=color, marker=marker, label=state, s=40)
    if best is not None:
        ax.scatter([best.number], [best.value], marker="*", s=260, c="gold", edgecolors="k", label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(str(study.user_attrs.get("metric", "metric")))
    ax.set_title(study.study_name)
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def importance_png(study: Any) -> bytes | None:
    """A bar chart of the parameter importances (None with fewer than two complete trials or one parameter)."""
    import optuna

    from controller.reports.plots import _figure, _png

    try:
        # PED-ANOVA: numpy only (fANOVA, optuna's default, needs scikit-learn)
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        log.info("no importances for %s: %s", study.study_name, exc)
        return None
    if not importances:
        return None
    fig, (ax,) = _figure(1, 0.5 + 0.45 * len(importances))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (share of the metric's variance)")
    ax.set_title(f"{study.study_name}: parameter importances")
    return _png(fig)


def _studies(url: str, since: float, until: float) -> list[Any]:
    import optuna

    storage = open_storage(url)
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        started = summary.datetime_start
        if not summary.study_name.startswith("slmops.") or started is None:
            continue
        ts = started.replace(tzinfo=started.tzinfo or UTC).timestamp()
        if since <= ts <= until:
            found.append((ts, summary.study_name))
    names = [name for _, name in sorted(found)[-MAX_STUDIES:]]
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def search_plots(db_url: str, since: float, until: float) -> dict[str, bytes]:
    """``{"search-<job>.<step>-trials.png": ..., "search-<job>.<step>-importance.png": ...}`` for the studies
    that started between ``since`` and ``until`` (epoch seconds); {} when there are none."""
    url = study_storage_url(db_url, Path("."))
    if url.startswith("sqlite") and not Path(url.split(":///", 1)[-1]).is_file():
        return {}
    try:
        studies = _studies(url, since, until)
    except Exception as exc:  # the report goes on without these plots
        log.warning("search plots skipped: cannot read the studies at %s: %s", redact(url), exc)
        return {}
    plots: dict[str, bytes] = {}
    for study in studies:
        short = _short(study)
        plots[f"search-{short}-trials.png"] = trials_png(study)
        importance = importance_png(study)
        if importance is not None:
            plots[f"search-{short}-importance.png"] = importance
    return plots
