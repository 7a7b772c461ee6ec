"""A finished job's summary (``Job.summary_json``) on the terminal: the seed table, warnings, search trials."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from controller.cli.common import console


def print_summary(summary: dict[str, Any]) -> None:
    """The comparison table, the hold-out rows explained, any warnings and the search trial table (if any)."""
    if summary.get("models"):
        from controller.factory.report import render_table

        console.print(render_table(summary, width=console.width), highlight=False, markup=False)
        for note in holdout_notes(summary["models"]):
            console.print(note, highlight=False, markup=False)
    for warning in summary.get("warnings") or []:
        console.print(f"[yellow]warning[/]: {escape(str(warning))}")
    trials = trial_rows(summary)
    if trials:
        search = summary["search"]
        best = (search.get("best") or {}).get("number")
        console.print(trials_table(trials, str(search.get("metric") or "value"), best))


def holdout_notes(models: list[dict[str, Any]]) -> list[str]:
    """What each hold-out row measures: accuracy against the file's own answers, or agreement with the teacher."""
    notes = []
    for row in models:
        if row.get("role") != "holdout" or row.get("skipped"):
            continue
        label = row.get("label", "?")
        if "reference_accuracy" in row:
            notes.append(
                f"{label}: accuracy vs references {row['reference_accuracy']:.1%}"
                f" (n={int(row.get('reference_n', 0))}); teacher agreement {row.get('teacher_agreement', 0):.1%}"
            )
        elif row.get("measures") == "teacher_agreement":
            notes.append(f"{label}: teacher agreement (the hold-out file has no answers of its own)")
    return notes


def trial_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    search = summary.get("search")
    trials = search.get("trials") if isinstance(search, dict) else None
    return [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []


def trials_table(trials: list[dict[str, Any]], metric: str = "value", best: Any = None) -> Table:
    """One row per trial: number (``*`` marks the best), state, the metric, seconds and parameters."""
    title = f"search: {len(trials)} trial(s)" + (f", best #{best}" if best is not None else "")
    table = Table(title=title)
    for col in ("#", "state", metric, "seconds", "params"):
        table.add_column(col, overflow="fold", justify="left" if col in ("state", "params") else "right")
    for t in trials:
        value = t.get("value")
        duration = t.get("duration_s")
        params = t.get("params") or {}
        table.add_row(
            f"{t.get('number', '-')}{'*' if best is not None and t.get('number') == best else ''}",
            str(t.get("state", "-")).lower(),
            f"{value:.4g}" if isinstance(value, int | float) else "-",
            f"{duration:.0f}" if isinstance(duration, int | float) else "-",
            escape(", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params)),
        )
    return table
