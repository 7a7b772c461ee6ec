"""The report's plots as PNG bytes (matplotlib, Agg canvas: no display, no global pyplot state)."""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from controller.reports.data import ReportData, SeriesPoint, rollout_profiles

log = logging.getLogger(__name__)

SeriesKey = tuple[str, str, str]
DPI = 100


def _figure(rows: int, height_per_row: float = 2.6) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 0.6 + height_per_row * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    return fig, axes


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _label(key: SeriesKey) -> str:
    profile, model, version = key
    return f"{profile} {model}:{version}"


def _marks(ax: Any, data: ReportData, label: bool, profile: str | None = None) -> None:
    """Drift events (red, dashed) and rollouts (green, dotted) as vertical lines; with ``profile``, only
    that profile's events and the rollouts that targeted it (or every profile)."""
    events = [e for e in data.events if profile is None or e.profile == profile]
    rollouts = [r for r in data.rollouts if profile is None or profile in (rollout_profiles(r) or [profile])]
    for i, e in enumerate(events):
        ax.axvline(
            _dt(e.detected_at),
            color="tab:red",
            linestyle="--",
            linewidth=1.2,
            label=("drift event" if label and i == 0 else None),
        )
        if label:
            ax.annotate(
                e.kind,
                (_dt(e.detected_at), 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="tab:red",
            )
    for i, r in enumerate(rollouts):
        ax.axvline(
            _dt(r.created_at),
            color="tab:green",
            linestyle=":",
            linewidth=1.4,
            label=("rollout" if label and i == 0 else None),
        )
        if label:
            ax.annotate(
                f"{r.model_name}:{r.model_version}",
                (_dt(r.created_at), 0.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="bottom",
                ha="right",
                fontsize=7,
                color="tab:green",
            )


def _lines(
    ax: Any,
    data: ReportData,
    keys: list[SeriesKey],
    value: Callable[[SeriesPoint], float | None],
    style: str = "-",
    label_suffix: str = "",
    positive: bool = False,
) -> bool:
    drawn = False
    colors = _colors(data)
    for key in keys:
        pts = [(p.t, value(p)) for p in data.series[key]]
        pts = [(t, v) for t, v in pts if v is not None and (v > 0 or not positive)]
        if not pts:
            continue
        pts = with_gaps(pts, data.bucket_s)
        ax.plot(
            [_dt(t) for t, _ in pts],
            [v for _, v in pts],
            style,
            color=colors[key],
            linewidth=1.3,
            marker="." if len(pts) < 40 else None,
            label=_label(key) + label_suffix,
        )
        drawn = True
    return drawn


def with_gaps(pts: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    """The points with a NaN between two that are further apart than two plotted steps: matplotlib breaks the
    line there, so a series without data (a version idle during a retrain) shows a gap, not a straight line."""
    if not step or len(pts) < 2:
        return pts
    out = [pts[0]]
    for prev, cur in itertools.pairwise(pts):
        if cur[0] - prev[0] > 2.0 * step:
            out.append(((prev[0] + cur[0]) / 2, math.nan))
        out.append(cur)
    return out


def _signal_lines(ax: Any, data: ReportData, name: str) -> bool:
    """One drift signal's mean per point and version (from the windows' signal summaries), with gaps."""
    colors = _colors(data)
    drawn = False
    for key, points in sorted(data.signal_series.items()):
        pts = [(t, sig[name]) for t, sig in points if name in sig]
        if not pts:
            continue
        pts = with_gaps(pts, data.bucket_s)
        ax.plot(
            [_dt(t) for t, _ in pts],
            [v for _, v in pts],
            "-",
            color=colors.get(key, "tab:gray"),
            linewidth=1.3,
            marker="." if len(pts) < 40 else None,
            label=_label(key),
        )
        drawn = True
    return drawn


def _colors(data: ReportData) -> dict[SeriesKey, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {key: cmap(i % 10) for i, key in enumerate(sorted(data.series))}


def _by_profile(data: ReportData) -> dict[str, list[SeriesKey]]:
    out: dict[str, list[SeriesKey]] = {}
    for key in sorted(data.series):
        out.setdefault(key[0], []).append(key)
    return out


def _finish(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def latency_png(data: ReportData) -> bytes:
    groups = _by_profile(data)
    fig, axes = _figure(len(groups))
    for ax, (profile, keys) in zip(axes, groups.items(), strict=True):
        _lines(ax, data, keys, lambda p: p.latency_p95_ms, "-", " p95", positive=True)
        _lines(ax, data, keys, lambda p: p.latency_p50_ms, "--", " p50", positive=True)
        _lines(ax, data, keys, lambda p: p.latency_p99_ms, ":", " p99", positive=True)
        _marks(ax, data, label=True, profile=profile)
        _finish(ax, f"Latency percentiles, profile {profile}", "ms")
    return _png(fig)


def throughput_png(data: ReportData) -> bytes:
    keys = sorted(data.series)
    fig, (ax_tps, ax_err) = _figure(2)
    _lines(ax_tps, data, keys, lambda p: p.tokens_per_s, positive=True)
    _marks(ax_tps, data, label=True)
    _finish(ax_tps, "Tokens per second (request-weighted)", "tokens/s")
    _lines(ax_err, data, keys, lambda p: 100.0 * p.error_rate)
    _marks(ax_err, data, label=False)
    _finish(ax_err, "Error rate", "% of requests")
    return _png(fig)


QUALITY_SIGNALS = (
    ("answer_logprob_mean", "Output confidence: mean token log-probability of the answers", "nats/token"),
    ("answer_entropy_first", "Output uncertainty: entropy of the first answer tokens", "nats"),
    ("input_novelty", "Input novelty: share of prompt words unseen in training", "share of words"),
)


def quality_png(data: ReportData) -> bytes:
    """Only informative signals: format validity when measured (not under an enforced schema), and the drift
    signals (the prompt NLL is retired: it carried no information)."""
    keys = sorted(data.series)
    panels: list[tuple[str, str, str]] = []
    if any(p.format_validity is not None for k in keys for p in data.series[k]):
        panels.append(("format_validity", "Output format validity", "share valid"))
    panels += [q for q in QUALITY_SIGNALS if any(q[0] in sig for pts in data.signal_series.values() for _, sig in pts)]
    if not panels:
        panels = [("", "No quality signal measured in this period", "")]
    fig, axes = _figure(len(panels))
    for i, (ax, (name, title, unit)) in enumerate(zip(axes, panels, strict=True)):
        if name == "format_validity":
            _lines(ax, data, keys, lambda p: p.format_validity)
        elif name:
            _signal_lines(ax, data, name)
        _marks(ax, data, label=i == 0)
        _finish(ax, title + (" (drift events red, rollouts green)" if i == 0 else ""), unit)
    return _png(fig)


PLOTS: dict[str, Callable[[ReportData], bytes]] = {
    "latency.png": latency_png,
    "throughput.png": throughput_png,
    "quality.png": quality_png,
}


def render_plots(data: ReportData) -> dict[str, bytes]:
    """PNG bytes by file name; empty when there is no telemetry to plot."""
    if not data.series:
        return {}
    out = {}
    for name, plot in PLOTS.items():
        out[name] = plot(data)
        log.debug("rendered %s (%d bytes)", name, len(out[name]))
    return out
