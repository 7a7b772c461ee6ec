"""``render_report``: the fleet report as a text summary, a self-contained HTML page and PNG plots.

The HTML embeds its plots as base64 PNGs and its style inline: one file that opens offline.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from controller.reports.data import ReportData, load_report_data
from controller.reports.evidence import evidence_html, parse_evidence
from controller.reports.plots import render_plots
from controller.reports.search import caption as search_caption
from controller.reports.search import search_plots
from controller.reports.text import NO_TELEMETRY, duration, summary_text, when
from controller.store.db import Store

log = logging.getLogger(__name__)

DEFAULT_OFFLINE_AFTER_S = 30.0
CAPTIONS = {
    "latency.png": "Latency percentiles per profile and version (p95 solid, p50 dashed, p99 dotted).",
    "throughput.png": "Tokens per second and error rate per profile and version.",
    "quality.png": (
        "Quality signals: output confidence, first-token entropy, input novelty (and format validity when it is "
        "measured); gaps where a version had no traffic; drift events and rollouts marked."
    ),
}


@dataclass
class Report:
    summary_text: str
    html: bytes | None = None
    pngs: dict[str, bytes] = field(default_factory=dict)


def render_report(
    store: Store,
    since_s: float,
    html: bool,
    png: bool,
    now: float | None = None,
    offline_after_s: float = DEFAULT_OFFLINE_AFTER_S,
) -> Report:
    """Report on the last ``since_s`` seconds. ``html``/``png`` choose the extra outputs (plots are drawn
    only when one of them is asked for). ``offline_after_s``: devices silent longer count as offline."""
    now = time.time() if now is None else now
    data = load_report_data(store, now - since_s, now, offline_after_s)
    text = summary_text(data)
    plots = render_plots(data) if (html or png) else {}
    if html or png:
        plots.update(search_plots(store.url, now - since_s, now))  # hyperparameter searches in the window
    page = html_page(data, text, plots) if html else None
    return Report(summary_text=text, html=page, pngs=plots if png else {})


def _esc(value: object) -> str:
    return html.escape(str(value))


def _html_table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_esc(text)}</p>'


def _plots_html(plots: dict[str, bytes]) -> str:
    if not plots:
        return _empty(f"{NO_TELEMETRY}: nothing to plot")
    parts = []
    for name, data in plots.items():
        b64 = base64.b64encode(data).decode("ascii")
        caption = _esc(CAPTIONS.get(name) or search_caption(name) or name)
        parts.append(
            f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(name)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return "\n".join(parts)


def _devices_html(data: ReportData) -> str:
    if not data.devices:
        return _empty("no devices enrolled")
    rows = [
        [
            _esc(d.hostname or d.agent_id),
            _esc(d.agent_id),
            _esc(d.profile),
            _esc(d.installed),
            '<span class="online">online</span>' if d.online else '<span class="offline">offline</span>',
            "yes" if d.healthy else "no",
            _esc(d.install_state),
            _esc(when(d.last_seen)),
            str(d.requests),
            f"{100 * d.error_rate:.2f}%",
            f"{d.latency_p95_ms:.1f}" if d.requests else "-",
        ]
        for d in data.devices
    ]
    headers = [
        "host",
        "agent",
        "profile",
        "installed",
        "status",
        "healthy",
        "install state",
        "last seen",
        "requests",
        "errors",
        "p95 ms",
    ]
    return _html_table(headers, rows, numeric={8, 9, 10})


def _events_html(data: ReportData) -> str:
    if not data.events:
        return _empty("no drift events in this period")
    rows = [
        [
            _esc(when(e.detected_at)),
            _esc(e.event_id),
            _esc(e.profile),
            _esc(f"{e.model_name}:{e.model_version}"),
            _esc(e.kind),
            _esc(e.detector),
            _esc(e.metric),
            f"{e.statistic:.3g} / {e.threshold:.3g}",
            _esc(e.action),
            _esc(e.job_id or "-"),
        ]
        for e in data.events
    ]
    headers = ["time", "id", "profile", "model", "kind", "detector", "metric", "statistic / threshold", "action", "job"]
    details = "".join(
        f"<details><summary>evidence of {_esc(e.event_id)}: {_esc(e.kind)} drift, {_esc(e.detector)} on "
        f"{_esc(e.metric)}</summary>{evidence_html(parse_evidence(e.evidence_json))}</details>"
        for e in data.events
    )
    return _html_table(headers, rows) + details


def _jobs_html(data: ReportData) -> str:
    if not data.jobs:
        return _empty("no drift-triggered jobs in this period")
    rows = [
        [
            _esc(when(j.created_at)),
            _esc(j.job_id),
            _esc(j.kind),
            _esc(j.state),
            _esc(f"{j.result_name}:{j.result_version}" if j.result_name else "-"),
            _esc(j.drift_event_id or "-"),
        ]
        for j in data.jobs
    ]
    return _html_table(["created", "job", "kind", "state", "result", "drift event"], rows)


def _rollouts_html(data: ReportData) -> str:
    if not data.rollouts:
        return _empty("no rollouts in this period")
    rows = [
        [
            _esc(when(r.created_at)),
            _esc(r.rollout_id),
            _esc(f"{r.model_name}:{r.model_version}"),
            _esc(r.state),
            str(r.current_wave),
            _esc(r.drift_event_id or "-"),
            _esc(r.message),
        ]
        for r in data.rollouts
    ]
    return _html_table(["created", "rollout", "model", "state", "wave", "drift event", "message"], rows)


def html_page(data: ReportData, text: str, plots: dict[str, bytes]) -> bytes:
    template = Template(resources.files("controller.reports").joinpath("templates/report.html").read_text("utf-8"))
    page = template.substitute(
        title="slmops fleet report",
        meta=_esc(f"generated {when(data.now)}; period: last {duration(data.now - data.since)}"),
        summary=_esc(text),
        plots=_plots_html(plots),
        devices=_devices_html(data),
        events=_events_html(data),
        jobs=_jobs_html(data),
        rollouts=_rollouts_html(data),
    )
    return page.encode("utf-8")
