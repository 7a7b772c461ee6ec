"""The trial table and the search summary: what the stage reports, the job summary shows and publish records.

A row: ``number``, ``params``, ``value`` (the metric), ``state`` (``complete`` | ``pruned`` | ``infeasible`` |
``failed`` | ``running``), ``duration_s``, ``step`` (the last step reported; a pruned trial also has ``val_loss``,
its validation loss there), ``metrics`` (accuracy, latency,
footprint, size, parameters of a finished trial), ``violations`` (broken budgets: measured minus allowed) and
``error`` (a failed trial's).
"""

from __future__ import annotations

from typing import Any

from controller.factory.search.space import from_stored
from controller.factory.search.study import ATTR_RESULT, best_trial

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def _duration(t: Any) -> float | None:
    result = t.user_attrs.get(ATTR_RESULT) or {}
    if result.get("seconds") is not None:
        return round(float(result["seconds"]), 2)
    if t.datetime_start and t.datetime_complete:
        return round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
    return None


def trial_row(t: Any) -> dict[str, Any]:
    result = t.user_attrs.get(ATTR_RESULT) or {}
    state = _STATES.get(t.state.name, t.state.name.lower())
    if state == "complete" and not result.get("feasible", True):
        state = "infeasible"
    # a pruned trial's stored value is its last intermediate value: the negated validation loss
    value = None if t.value is None or state == "pruned" else round(float(t.value), 6)
    row: dict[str, Any] = {
        "number": t.number,
        "params": from_stored(t.params),
        "value": value,
        "state": state,
        "duration_s": _duration(t),
        "step": result.get("step"),
    }
    if state == "pruned" and t.intermediate_values:
        row["val_loss"] = round(-t.intermediate_values[max(t.intermediate_values)], 5)
    if result.get("metrics"):
        row["metrics"] = result["metrics"]
    if result.get("violations"):
        row["violations"] = {k: round(v, 4) for k, v in result["violations"].items() if v > 0}
    if t.user_attrs.get("error"):
        row["error"] = t.user_attrs["error"]
    return row


def trial_table(study: Any) -> list[dict[str, Any]]:
    return [trial_row(t) for t in study.get_trials(deepcopy=False)]


def summarize(study: Any, metric: str, storage: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The search's summary: ``trials`` (the table), ``best``, counts per state, the study's name and storage."""
    rows = trial_table(study)
    best = best_trial(study)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {
        "study": study.study_name,
        "storage": storage,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "best": None if best is None else trial_row(best),
        "counts": counts,
        "trials": rows,
        **(extra or {}),
    }


def job_summary(outcomes: dict[str, Any]) -> dict[str, Any] | None:
    """The ``search`` entry of a job's summary from a pipeline run's outcomes (``RunResult.outcomes``):
    the metrics of its ``search`` step (the first one, when several are planned); None without a search."""
    for outcome in outcomes.values():
        if outcome.step.stage == "search":
            return dict(outcome.metrics)
    return None


def format_table(summary: dict[str, Any], limit: int = 50) -> str:
    """The trial table as plain text (``slmops build --follow`` / ``jobs show`` may print it)."""
    rows = summary.get("trials") or []
    names = sorted({k for r in rows for k in r["params"]})
    head = ["#", "state", summary.get("metric", "value"), "s", *names]
    lines = [head]
    best = (summary.get("best") or {}).get("number")
    for r in rows[:limit]:
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        mark = "*" if r["number"] == best else ""
        params = [_fmt(r["params"].get(n)) for n in names]
        lines.append([f"{r['number']}{mark}", r["state"], value, _fmt(r["duration_s"]), *params])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
