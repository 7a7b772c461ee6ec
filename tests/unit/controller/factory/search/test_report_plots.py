"""``slmops report --html`` plots the searches it finds in the study database: the metric per trial and the
parameter importances, for studies that started in the report's window."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from controller.factory.search.storage import open_storage, study_storage_url
from controller.reports.render import render_report
from controller.reports.search import caption, search_plots
from controller.store.db import Store

PNG = b"\x89PNG"


def _study(db_url: str) -> None:
    storage = open_storage(study_storage_url(db_url, Path(".")))
    study = optuna.create_study(study_name="slmops.search.abc", storage=storage, direction="maximize")
    study.set_user_attr("jobs", ["job-7"])
    dists = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "hidden_size": IntDistribution(32, 128)}
    for i, (lr, width) in enumerate([(1e-3, 32), (5e-3, 64), (1e-2, 96), (2e-4, 128), (3e-3, 48)]):
        state = TrialState.PRUNED if i == 3 else TrialState.COMPLETE
        value = -2.0 if state == TrialState.PRUNED else width / 128 + lr * 10
        study.add_trial(
            create_trial(
                params={"learning_rate": lr, "hidden_size": width}, distributions=dists, value=value, state=state
            )
        )


def test_search_plots_are_drawn_for_studies_in_the_window(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/controller.db"
    assert search_plots(db_url, 0, time.time()) == {}  # no study database yet
    _study(db_url)
    plots = search_plots(db_url, time.time() - 3600, time.time() + 60)
    assert sorted(plots) == ["search-job-7.search-importance.png", "search-job-7.search-trials.png"]
    assert all(p.startswith(PNG) for p in plots.values())
    assert search_plots(db_url, time.time() + 60, time.time() + 120) == {}  # outside the window
    assert "importances" in caption("search-job-7.search-importance.png") and caption("latency.png") == ""


def test_the_html_report_embeds_them(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/controller.db")
    try:
        _study(store.url)
        report = render_report(store, 3600, html=True, png=True)
    finally:
        store.close()
    assert report.html is not None and b"PED-ANOVA importances" in report.html
    assert "search-job-7.search-trials.png" in report.pngs
