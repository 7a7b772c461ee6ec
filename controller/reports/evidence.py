"""A drift event's evidence for the operator (``slmops drift show`` and the HTML report): the signals that
moved, each signal's reference distribution (the factory's, on the version's validation split) against the
current one (the recent windows'), and the version's teacher-audited accuracy; plus the drift signals' series
over time for the report's plots (``controller/telemetry/extras.py`` keeps them per window).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from controller.store.db import Store
from controller.store.tables import TelemetryWindowRow
from controller.telemetry.extras import load_signals
from shared.signals import SignalSummary

BARS = " ▁▂▃▄▅▆▇█"
SeriesKey = tuple[str, str, str]


@dataclass
class SignalRow:
    name: str
    moved: bool
    ref_mean: float | None
    ref_std: float | None
    ref_n: int
    cur_mean: float | None
    cur_std: float | None
    cur_n: int
    shift_std: float | None  # (current - reference) in reference standard deviations
    ref_counts: list[float]
    cur_counts: list[float]


def spark(counts: list[float]) -> str:
    """A histogram as one line of block characters (each bar: that bucket's share of the largest)."""
    top = max(counts, default=0)
    if top <= 0:
        return ""
    return "".join(BARS[min(len(BARS) - 1, math.ceil(c / top * (len(BARS) - 1)))] for c in counts)


def signal_rows(evidence: dict[str, Any]) -> list[SignalRow]:
    moved = set(evidence.get("moved", []))
    if str(evidence.get("metric", "")).startswith("signal:"):
        moved.add(str(evidence["metric"]).removeprefix("signal:"))
    rows = []
    for name, sig in sorted((evidence.get("signals") or {}).items()):
        ref, cur = sig.get("reference") or {}, sig.get("current") or {}
        shift = None
        if ref.get("std") and cur.get("mean") is not None and ref.get("mean") is not None:
            shift = (cur["mean"] - ref["mean"]) / ref["std"]
        rows.append(
            SignalRow(
                name,
                name in moved,
                ref.get("mean"),
                ref.get("std"),
                int(ref.get("n") or 0),
                cur.get("mean") if cur.get("n") else None,
                cur.get("std") if cur.get("n") else None,
                int(cur.get("n") or 0),
                shift,
                list(ref.get("counts") or []),
                list(cur.get("counts") or []),
            )
        )
    return sorted(rows, key=lambda r: (not r.moved, r.name))


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def audit_line(evidence: dict[str, Any]) -> str:
    audit = evidence.get("audit") or evidence.get("audited_accuracy")
    if not audit:
        return "audited accuracy: not audited (opt in with the profile's audit: settings)"
    recent = audit.get("recent") or {}
    low, high = recent.get("ci95", [0, 1])
    ref = evidence.get("reference_accuracy")
    text = (
        f"audited accuracy: {_fmt(recent.get('accuracy'), '.0%')} of the last {recent.get('n', 0)} audits "
        f"(95% CI {low:.0%}-{high:.0%}); {audit.get('correct', 0)}/{audit.get('n', 0)} over the version"
    )
    return text + (f"; reference {ref:.0%}" if ref is not None else "")


def evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """Plain-text lines: the signals (moved first) with reference vs current, then the audited accuracy."""
    rows = signal_rows(evidence)
    out = []
    if rows:
        moved = [r.name for r in rows if r.moved]
        out.append(f"signals that moved: {', '.join(moved) if moved else 'none (see the detector and metric)'}")
        out.append(f"  {'signal':<22}{'reference mean±std (n)':>26}{'current mean±std (n)':>26}{'shift':>8}")
        for r in rows:
            mark = "*" if r.moved else " "
            ref = f"{_fmt(r.ref_mean)}±{_fmt(r.ref_std)} ({r.ref_n})"
            cur = f"{_fmt(r.cur_mean)}±{_fmt(r.cur_std)} ({r.cur_n})"
            shift = "-" if r.shift_std is None else f"{r.shift_std:+.1f} sd"
            out.append(f"{mark} {r.name:<22}{ref:>26}{cur:>26}{shift:>8}")
            out.append(f"    reference |{spark(r.ref_counts)}|  current |{spark(r.cur_counts)}|")
    out.append(audit_line(evidence))
    return out


def evidence_html(evidence: dict[str, Any]) -> str:
    rows = signal_rows(evidence)
    parts = []
    if rows:
        body = "".join(
            "<tr>"
            f"<td>{'<b>' if r.moved else ''}{html.escape(r.name)}{' (moved)</b>' if r.moved else ''}</td>"
            f"<td class=num>{_fmt(r.ref_mean)} ± {_fmt(r.ref_std)} (n={r.ref_n})</td>"
            f"<td class=num>{_fmt(r.cur_mean)} ± {_fmt(r.cur_std)} (n={r.cur_n})</td>"
            f"<td class=num>{'-' if r.shift_std is None else f'{r.shift_std:+.1f} sd'}</td>"
            f"<td><code>{html.escape(spark(r.ref_counts))}</code></td>"
            f"<td><code>{html.escape(spark(r.cur_counts))}</code></td>"
            "</tr>"
            for r in rows
        )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("signal", "reference", "current", "shift", "reference histogram", "current histogram")
        )
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    parts.append(f"<p>{html.escape(audit_line(evidence))}</p>")
    return "".join(parts)


def parse_evidence(evidence_json: str) -> dict[str, Any]:
    try:
        value = json.loads(evidence_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def signal_series(store: Store, since: float, bucket: float) -> dict[SeriesKey, list[tuple[float, dict[str, float]]]]:
    """Per (profile, model, version): (time, {signal: mean}) per time bucket of ``bucket`` seconds."""
    W = TelemetryWindowRow
    with store.session() as s:
        query = select(W.id, W.profile, W.model_name, W.model_version, W.end_unix).where(W.end_unix >= since)
        windows = list(s.execute(query).all())
        signals = load_signals(s, [int(w[0]) for w in windows])
    merged: dict[tuple[SeriesKey, int], dict[str, SignalSummary]] = {}
    for wid, profile, model, version, end in windows:
        for name, summary in signals.get(int(wid), {}).items():
            slot = merged.setdefault(((profile, model, version), int(end // bucket)), {})
            slot[name] = slot[name].merge(summary) if name in slot else summary
    out: dict[SeriesKey, list[tuple[float, dict[str, float]]]] = {}
    for (key, slot), sums in sorted(merged.items()):
        out.setdefault(key, []).append((slot * bucket, {name: s.mean for name, s in sums.items()}))
    return out
