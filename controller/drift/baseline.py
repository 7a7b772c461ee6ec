"""Baselines: the reference figures drift is measured against, per (profile, model name, model version).

A :class:`~controller.store.tables.Baseline` row holds, in ``metrics_json``, one entry per scalar metric
``{"mean": m, "std": s, "n": windows}`` plus ``"prompt_len_edges": [...]``, and the reference prompt-length
histogram (bin counts) in ``prompt_len_hist_json``. An entry without a ``std`` (e.g. a single figure from
evaluation on the build machine) is kept for reference, but the monitor learns that metric's scale from
the device's first windows, because a build machine's latency says nothing about a device's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlmodel import Session, select

from controller.store.db import Store
from controller.store.tables import Baseline, TelemetryWindowRow

# The prompt NLL is retired (students learn answer tokens only: it sits near ln(vocabulary)); the drift signals
# (shared/signals.py) come from the version's reference, stored under "signal:<name>".
SCALAR_METRICS = ("latency_p95_ms", "format_validity")
HIST_KEY = "prompt_len_hist"
EDGES_KEY = "prompt_len_edges"


def scalar_value(window: TelemetryWindowRow, metric: str) -> float | None:
    """The window's value of a scalar metric, or None when the window did not measure it."""
    if window.request_count <= 0:
        return None
    value = float(getattr(window, metric))
    if metric == "format_validity":
        return value if value >= 0 else None
    return value if value > 0 else None


def histogram_value(window: TelemetryWindowRow) -> tuple[list[float], list[float]] | None:
    """(counts, edges) of the window's prompt-length histogram, or None when empty."""
    try:
        counts = [float(c) for c in json.loads(window.prompt_len_hist_json or "[]")]
        edges = [float(e) for e in json.loads(window.prompt_len_edges_json or "[]")]
    except (ValueError, TypeError):
        return None
    if not counts or sum(counts) <= 0:
        return None
    return counts, edges


def scalar_summary(values: Sequence[float], trim_mads: float = 4.0) -> dict[str, float]:
    """Mean and standard deviation of a metric's values, leaving out outliers further than ``trim_mads``
    robust standard deviations (1.4826 * MAD) from the median: one latency spike among the windows a
    baseline is learned from would otherwise inflate the scale and hide a real shift. ``n`` counts the
    values kept, ``trimmed`` the ones left out."""
    v = np.asarray(values, dtype=float)
    median = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - median)))
    keep = v[np.abs(v - median) <= trim_mads * mad] if mad > 0 else v
    std = float(np.std(keep, ddof=1)) if len(keep) > 1 else 0.0
    return {"mean": float(np.mean(keep)), "std": std, "n": len(keep), "trimmed": len(v) - len(keep)}


def std_upper_bound(std: float, n: int, z: float = 1.645) -> float:
    """One-sided 95% upper confidence bound of a standard deviation estimated from ``n`` values
    (chi-square quantile by the Wilson-Hilferty approximation). A scale learned from few windows is
    more often too small than too large; a too small one means false alarms, so detectors use this."""
    nu = n - 1
    if nu < 2:
        return std
    c = 2.0 / (9.0 * nu)
    quantile = nu * max(1.0 - c - z * math.sqrt(c), 0.05) ** 3
    return std * math.sqrt(nu / quantile)


def usable_scalar(entry: Any) -> bool:
    return isinstance(entry, dict) and "mean" in entry and "std" in entry


def baseline_from_windows(windows: Iterable[TelemetryWindowRow]) -> tuple[dict[str, Any], list[float]]:
    """Baseline figures from telemetry windows: (metrics dict, histogram counts)."""
    values: dict[str, list[float]] = {m: [] for m in SCALAR_METRICS}
    hist: list[float] = []
    edges: list[float] | None = None
    for w in windows:
        for metric in SCALAR_METRICS:
            v = scalar_value(w, metric)
            if v is not None:
                values[metric].append(v)
        h = histogram_value(w)
        if h is not None and (edges is None or h[1] == edges) and (not hist or len(hist) == len(h[0])):
            edges = h[1]
            hist = [a + b for a, b in zip(hist, h[0], strict=True)] if hist else h[0]
    metrics: dict[str, Any] = {m: scalar_summary(v) for m, v in values.items() if v}
    if hist:
        metrics[EDGES_KEY] = edges or []
    return metrics, hist


def load_baseline(session: Session, profile: str, model_name: str, model_version: str) -> Baseline | None:
    return session.get(Baseline, (profile, model_name, model_version))


def baseline_metrics(row: Baseline | None) -> dict[str, Any]:
    """The row's figures as one dict: scalar entries, ``prompt_len_edges`` and ``prompt_len_hist``."""
    if row is None:
        return {}
    try:
        metrics = dict(json.loads(row.metrics_json or "{}"))
        hist = json.loads(row.prompt_len_hist_json or "[]")
    except ValueError:
        return {}
    if hist:
        metrics[HIST_KEY] = hist
    return metrics


def merge_learned(
    session: Session,
    profile: str,
    model_name: str,
    model_version: str,
    learned: dict[str, Any],
    now: float,
    source: str = "canary",
    mark_learned: bool = True,
) -> Baseline:
    """Add figures to the row, creating it (with ``source``) when there is none. ``mark_learned``: the figures
    were learned live by the monitor (tagged ``learned``), not measured by the factory."""
    row = load_baseline(session, profile, model_name, model_version)
    if row is None:
        row = Baseline(profile=profile, model_name=model_name, model_version=model_version, source=source)
    metrics = json.loads(row.metrics_json or "{}")
    for key, value in learned.items():
        if key == HIST_KEY:
            row.prompt_len_hist_json = json.dumps(value)
        else:
            metrics[key] = {**value, "learned": True} if isinstance(value, dict) and mark_learned else value
    row.metrics_json = json.dumps(metrics)
    row.captured_at = row.captured_at or now
    session.add(row)
    return row


def capture_baseline(
    store: Store,
    profile: str,
    model_name: str,
    model_version: str,
    since_unix: float,
    until_unix: float | None = None,
    source: str = "canary",
) -> Baseline:
    """Store a baseline from the telemetry of (profile, model version) between two times, e.g. at the end
    of a canary wave. Replaces an existing row's figures; returns the row."""
    until = until_unix if until_unix is not None else time.time()
    with store.session() as s:
        query = (
            select(TelemetryWindowRow)
            .where(TelemetryWindowRow.profile == profile)
            .where(TelemetryWindowRow.model_name == model_name)
            .where(TelemetryWindowRow.model_version == model_version)
            .where(TelemetryWindowRow.end_unix >= since_unix)
            .where(TelemetryWindowRow.end_unix <= until)
            .order_by(TelemetryWindowRow.end_unix)
        )
        metrics, hist = baseline_from_windows(s.exec(query).all())
        row = load_baseline(s, profile, model_name, model_version) or Baseline(
            profile=profile, model_name=model_name, model_version=model_version
        )
        row.metrics_json = json.dumps(metrics)
        row.prompt_len_hist_json = json.dumps(hist)
        row.captured_at = until
        row.source = source
        s.add(row)
    return row


def reference_baseline(reference: Any) -> dict[str, Any]:
    """The baseline figures of a version's :class:`~shared.signals.DriftReference`: ``signal:<name>`` entries
    (counts, edges, mean, std, n) and ``reference_accuracy`` / ``reference_n``."""
    out: dict[str, Any] = {f"signal:{name}": summary.to_dict() for name, summary in reference.signals.items()}
    if reference.accuracy is not None:
        out["reference_accuracy"] = reference.accuracy
        out["reference_n"] = reference.n_validation
    return out


def store_references(store: Store, model_name: str, model_version: str, folders: dict[str, Any]) -> list[str]:
    """Copy each variant's ``drift_reference.json`` (profile -> variant folder, or the reference already read)
    into its baseline row: the signals' reference distributions under ``signal:<name>`` and the validation
    accuracy under ``reference_accuracy`` / ``reference_n`` (what the teacher audit compares with). Returns the
    profiles done."""
    from pathlib import Path

    from shared.signals import DriftReference

    done = []
    with store.session() as s:
        for profile, folder in folders.items():
            # a folder, or the reference itself (publish read it from the blob store) or None
            reference = (
                folder if folder is None or isinstance(folder, DriftReference) else DriftReference.load(Path(folder))
            )
            if reference is None:
                continue
            learned = reference_baseline(reference)
            merge_learned(s, profile, model_name, model_version, learned, time.time(), "evaluation", mark_learned=False)
            done.append(profile)
    return done
