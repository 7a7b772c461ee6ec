"""The report's plain-text summary (fixed-width tables; printable as is or through rich)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from controller.reports.data import ReportData
from controller.reports.evidence import evidence_lines, parse_evidence

NO_TELEMETRY = "no telemetry yet"


def when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:.0f}s"


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> list[str]:
    numeric = numeric or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return ["  " + line(headers).rstrip(), *("  " + line(r).rstrip() for r in rows)]


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_text(data: ReportData) -> str:
    out = [f"slmops report: last {duration(data.now - data.since)} (since {when(data.since)})", ""]
    online = sum(d.online for d in data.devices)
    out.append(f"Fleet: {len(data.devices)} devices, {online} online, {len(data.devices) - online} offline")
    per_profile: dict[str, Counter[str]] = {}
    for d in data.devices:
        per_profile.setdefault(d.profile or "(none)", Counter())[d.installed] += 1
    if per_profile:
        out.append("Versions per profile (installed):")
        for profile, versions in sorted(per_profile.items()):
            listing = ", ".join(f"{v} x{n}" for v, n in sorted(versions.items()))
            out.append(f"  {profile}: {listing}")
    out.append("")
    if not data.has_telemetry:
        out.append(f"Telemetry: {NO_TELEMETRY}")
    else:
        out.append("Latency and errors per profile and version (request-weighted means of window percentiles):")
        rows = [
            [
                v.profile,
                f"{v.model}:{v.version}",
                str(v.devices),
                str(v.requests),
                f"{v.latency_p50_ms:.1f}",
                f"{v.latency_p95_ms:.1f}",
                f"{v.latency_p99_ms:.1f}",
                f"{v.tokens_per_s:.1f}",
                f"{100 * v.error_rate:.2f}%",
                _opt(v.format_validity, ".3f"),
            ]
            for v in data.versions
        ]
        headers = [
            "profile",
            "model",
            "devices",
            "requests",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "tok/s",
            "errors",
            "format ok",
        ]
        out += table(headers, rows, numeric=set(range(2, 10)))
    out.append("")
    out.append(f"Drift events: {len(data.events)}")
    if data.events:
        rows = [
            [
                when(e.detected_at),
                e.profile,
                f"{e.model_name}:{e.model_version}",
                e.kind,
                e.detector,
                e.metric,
                f"{e.statistic:.3g} > {e.threshold:.3g}",
                e.action,
                e.job_id or "-",
                e.event_id,
            ]
            for e in data.events
        ]
        out += table(
            ["time", "profile", "model", "kind", "detector", "metric", "statistic", "action", "job", "id"], rows
        )
        for e in data.events:
            out.append(f"Evidence of {e.event_id} ({e.kind} drift, {e.detector} on {e.metric}):")
            out += [f"  {line}" for line in evidence_lines(parse_evidence(e.evidence_json))]
    out.append("")
    out.append(f"Retrain / re-optimize jobs: {len(data.jobs)} (all jobs in the period: {data.build_jobs})")
    if data.jobs:
        rows = [
            [
                when(j.created_at),
                j.job_id,
                j.kind,
                j.state,
                f"{j.result_name}:{j.result_version}" if j.result_name else "-",
                j.drift_event_id or "-",
            ]
            for j in data.jobs
        ]
        out += table(["created", "job", "kind", "state", "result", "drift event"], rows)
    out.append("")
    out.append(f"Rollouts: {len(data.rollouts)}")
    if data.rollouts:
        rows = [
            [
                when(r.created_at),
                r.rollout_id,
                f"{r.model_name}:{r.model_version}",
                r.state,
                str(r.current_wave),
                r.drift_event_id or "-",
            ]
            for r in data.rollouts
        ]
        out += table(["created", "rollout", "model", "state", "wave", "drift event"], rows)
    return "\n".join(out).rstrip() + "\n"
