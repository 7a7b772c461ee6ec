"""The seed comparison table: the deployed student variant vs the teacher, and int4 vs fp32.

Input: the evaluation records of one build (each ``evaluate`` step's metrics: ``role`` = teacher |
reference | variant, ``profile``, ``label`` and the measured figures). Output: a JSON-able dict (stored as
``Job.summary_json``) and a rich table.

Figures (fractions 0..1 unless named ``_pts``):
- ``accuracy_retention`` = deployed accuracy / teacher accuracy
- ``latency_reduction`` = 1 - deployed mean latency per answer / teacher's
- ``memory_reduction`` = 1 - deployed footprint / teacher footprint (weights + KV cache at the evaluated
  context length; process peak RSS is shown beside it)
- ``int4_size_reduction`` = 1 - int4 weights bytes / fp32 weights bytes (same student)
- ``int4_accuracy_change_pts`` = (int4 accuracy - fp32 accuracy) * 100
The deployed variant is the int4 one if there is one, else the variant with the smallest footprint.
"""

from __future__ import annotations

import io
import json
from typing import Any

TARGETS: dict[str, tuple[str, float]] = {
    "accuracy_retention": (">=", 0.92),
    "latency_reduction": (">=", 0.85),
    "memory_reduction": (">=", 0.90),
    "int4_size_reduction": (">=", 0.75),
    "int4_accuracy_change_pts": (">=", -2.0),
}

_COLUMNS = [
    ("accuracy", "accuracy", "{:.1%}"),
    ("json_validity", "JSON ok", "{:.1%}"),
    ("latency_ms_mean", "latency ms", "{:.2f}"),
    ("ttft_ms_mean", "TTFT ms", "{:.2f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
    ("footprint_bytes", "footprint MB", "MB"),
    ("weights_bytes", "weights MB", "MB"),
    ("peak_rss_bytes", "peak RSS MB", "MB"),
]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _get(rec: dict[str, Any] | None, key: str) -> float | None:
    if not rec or rec.get("skipped") or key not in rec:
        return None
    return float(rec[key])


def build_report(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    teacher = next((e for e in evaluations if e.get("role") == "teacher"), None)
    reference = next((e for e in evaluations if e.get("role") == "reference"), None)
    variants = [e for e in evaluations if e.get("role") == "variant" and not e.get("skipped")]
    int4 = next((v for v in variants if v.get("precision") == "int4" or "int4" in v.get("profile", "")), None)
    fp32 = reference or next(
        (v for v in variants if v.get("precision") == "fp32" or "fp32" in v.get("profile", "")), None
    )
    deployed = int4 or (min(variants, key=lambda v: v.get("footprint_bytes", float("inf"))) if variants else None)

    def one_minus(x: float | None) -> float | None:
        return None if x is None else 1.0 - x

    figures: dict[str, float | None] = {
        "accuracy_retention": _ratio(_get(deployed, "accuracy"), _get(teacher, "accuracy")),
        "latency_reduction": one_minus(_ratio(_get(deployed, "latency_ms_mean"), _get(teacher, "latency_ms_mean"))),
        "memory_reduction": one_minus(_ratio(_get(deployed, "footprint_bytes"), _get(teacher, "footprint_bytes"))),
        "int4_size_reduction": one_minus(_ratio(_get(int4, "weights_bytes"), _get(fp32, "weights_bytes"))),
        "int4_accuracy_change_pts": (
            None
            if _get(int4, "accuracy") is None or _get(fp32, "accuracy") is None
            else (_get(int4, "accuracy") - _get(fp32, "accuracy")) * 100  # type: ignore[operator]
        ),
    }
    meets = {}
    for name, (op, target) in TARGETS.items():
        value = figures.get(name)
        meets[name] = None if value is None else (value >= target if op == ">=" else value <= target)
    rows = [_row(e) for e in evaluations]
    return {
        "models": rows,
        "deployed": (deployed or {}).get("label", ""),
        "int4": (int4 or {}).get("label", ""),
        "fp32": (fp32 or {}).get("label", ""),
        "teacher": (teacher or {}).get("label", ""),
        "figures": figures,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "meets_targets": meets,
    }


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "role",
        "profile",
        "label",
        "precision",
        "skipped",
        "reason",
        "n",
        "size_bytes",
        "kv_cache_bytes",
        "context_length",
        "decode_tokens_per_s",
        "ttft_ms_p95",
        "latency_ms_p95",
    )
    row = {k: rec[k] for k in keep if k in rec}
    row.update({k: rec[k] for k, _, _ in _COLUMNS if k in rec})
    return row


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "MB":
        return f"{float(value) / 1e6:.2f}"
    return spec.format(value)


def render_table(report: dict[str, Any], width: int = 120) -> str:
    """The table and the figures as text (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Seed comparison: student variants vs teacher", show_lines=False)
    table.add_column("model", no_wrap=True)
    table.add_column("role")
    for _, title, _ in _COLUMNS:
        table.add_column(title, justify="right")
    notes = []
    for row in report["models"]:
        if row.get("skipped"):
            table.add_row(f"{row.get('label', '?')} (skipped)", row.get("role", ""), *["-"] * len(_COLUMNS))
            notes.append(f"{row.get('label', '?')}: not evaluated: {row.get('reason', '')}")
            continue
        table.add_row(row.get("label", "?"), row.get("role", ""), *[_fmt(row.get(k), spec) for k, _, spec in _COLUMNS])
    figures = Table(
        title=f"Figures (deployed: {report.get('deployed') or '-'}, teacher: {report.get('teacher') or '-'})"
    )
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_column("target", justify="right")
    figures.add_column("met", justify="center")
    for name, value in report["figures"].items():
        met = report["meets_targets"].get(name)
        shown = "-" if value is None else (f"{value:+.1f}" if name.endswith("_pts") else f"{value:.1%}")
        figures.add_row(name, shown, report["targets"].get(name, ""), "-" if met is None else ("yes" if met else "NO"))
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(table)
    for note in notes:
        console.print(note)
    console.print(figures)
    return console.export_text()


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True)
