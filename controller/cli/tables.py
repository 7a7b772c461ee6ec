"""Rich tables shared by several commands."""

from __future__ import annotations

from rich.table import Table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def comparison_table(summary: dict) -> Table:
    """The seed table: one row per evaluated model, then the headline ratios."""
    rows = summary.get("rows", [])
    table = Table(title=summary.get("title", "teacher vs student vs variants"))
    columns = summary.get("columns") or (sorted({k for r in rows for k in r}) if rows else [])
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    ratios = summary.get("ratios", {})
    if ratios:
        table.caption = "  ".join(f"{k}={_fmt(v)}" for k, v in ratios.items())
    return table
