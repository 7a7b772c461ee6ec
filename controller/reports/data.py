"""What the report shows, read from the store with aggregate queries (the window table can be large).

Window percentiles cannot be merged exactly; figures over several windows are request-weighted means of
the windows' percentiles (and the largest p99 seen), which is what the report labels them as.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, or_, select
from sqlalchemy.engine import Connection

from controller.store.db import Store
from controller.store.tables import Device, DriftEventRow, Job, Rollout, TelemetryWindowRow

W = TelemetryWindowRow.__table__.c  # type: ignore[attr-defined]
TARGET_POINTS = 150


@dataclass
class VersionStats:
    profile: str
    model: str
    version: str
    devices: int
    windows: int
    requests: int
    errors: int
    cancels: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_p99_max_ms: float
    ttft_p95_ms: float
    tokens_per_s: float
    format_validity: float | None
    prompt_nll: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class SeriesPoint:
    t: float
    requests: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    tokens_per_s: float
    error_rate: float
    format_validity: float | None
    prompt_nll: float | None


@dataclass
class DeviceRow:
    agent_id: str
    hostname: str
    profile: str
    installed: str
    online: bool
    healthy: bool
    install_state: str
    last_seen: float
    requests: int = 0
    error_rate: float = 0.0
    latency_p95_ms: float = 0.0


@dataclass
class ReportData:
    now: float
    since: float
    devices: list[DeviceRow] = field(default_factory=list)
    versions: list[VersionStats] = field(default_factory=list)
    series: dict[tuple[str, str, str], list[SeriesPoint]] = field(default_factory=dict)
    events: list[DriftEventRow] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    rollouts: list[Rollout] = field(default_factory=list)
    build_jobs: int = 0
    # Seconds per plotted point; drift signals' means per point (controller/reports/evidence.py).
    bucket_s: float = 0.0
    signal_series: dict[tuple[str, str, str], list[tuple[float, dict[str, float]]]] = field(default_factory=dict)

    @property
    def has_telemetry(self) -> bool:
        return any(v.requests or v.windows for v in self.versions)


def _weighted(column: Any, weight: Any = W.request_count) -> Any:
    return func.sum(column * weight)


def _aggregates() -> list[Any]:
    valid = W.format_validity >= 0
    has_nll = W.prompt_nll > 0
    return [
        func.count().label("windows"),
        func.coalesce(func.sum(W.request_count), 0).label("requests"),
        func.coalesce(func.sum(W.error_count), 0).label("errors"),
        func.coalesce(func.sum(W.cancel_count), 0).label("cancels"),
        _weighted(W.latency_p50_ms).label("p50"),
        _weighted(W.latency_p95_ms).label("p95"),
        _weighted(W.latency_p99_ms).label("p99"),
        func.max(W.latency_p99_ms).label("p99_max"),
        _weighted(W.ttft_p95_ms).label("ttft95"),
        _weighted(W.tokens_per_s).label("tps"),
        func.sum(case((valid, W.format_validity * W.request_count), else_=None)).label("fv"),
        func.sum(case((valid, W.request_count), else_=None)).label("fv_n"),
        func.sum(case((has_nll, W.prompt_nll * W.request_count), else_=None)).label("nll"),
        func.sum(case((has_nll, W.request_count), else_=None)).label("nll_n"),
    ]


def _mean(total: Any, n: Any) -> float:
    return float(total or 0.0) / float(n) if n else 0.0


def _optional_mean(total: Any, n: Any) -> float | None:
    return float(total) / float(n) if n and total is not None else None


def _version_stats(conn: Connection, since: float) -> list[VersionStats]:
    query = (
        select(W.profile, W.model_name, W.model_version, func.count(func.distinct(W.agent_id)), *_aggregates())
        .where(W.end_unix >= since)
        .group_by(W.profile, W.model_name, W.model_version)
        .order_by(W.profile, W.model_name, W.model_version)
    )
    out = []
    for r in conn.execute(query):
        m = r._mapping
        n = m["requests"]
        out.append(
            VersionStats(
                profile=r[0],
                model=r[1],
                version=r[2],
                devices=int(r[3]),
                windows=int(m["windows"]),
                requests=int(n),
                errors=int(m["errors"]),
                cancels=int(m["cancels"]),
                latency_p50_ms=_mean(m["p50"], n),
                latency_p95_ms=_mean(m["p95"], n),
                latency_p99_ms=_mean(m["p99"], n),
                latency_p99_max_ms=float(m["p99_max"] or 0.0),
                ttft_p95_ms=_mean(m["ttft95"], n),
                tokens_per_s=_mean(m["tps"], n),
                format_validity=_optional_mean(m["fv"], m["fv_n"]),
                prompt_nll=_optional_mean(m["nll"], m["nll_n"]),
            )
        )
    return out


def _bucket(conn: Connection, since: float) -> float | None:
    """Seconds per plotted point (about TARGET_POINTS over the windows' span); None without windows."""
    span = conn.execute(select(func.min(W.end_unix), func.max(W.end_unix)).where(W.end_unix >= since)).one()
    if span[0] is None:
        return None
    return max(1.0, (float(span[1]) - float(span[0])) / TARGET_POINTS)


def _series(conn: Connection, since: float, now: float) -> dict[tuple[str, str, str], list[SeriesPoint]]:
    bucket = _bucket(conn, since)
    if bucket is None:
        return {}
    slot = cast(W.end_unix / bucket, Integer).label("slot")
    query = (
        select(W.profile, W.model_name, W.model_version, slot, *_aggregates())
        .where(W.end_unix >= since)
        .group_by(W.profile, W.model_name, W.model_version, slot)
        .order_by(W.profile, W.model_name, W.model_version, slot)
    )
    out: dict[tuple[str, str, str], list[SeriesPoint]] = {}
    for r in conn.execute(query):
        m = r._mapping
        n = m["requests"]
        out.setdefault((r[0], r[1], r[2]), []).append(
            SeriesPoint(
                t=float(r[3]) * bucket,
                requests=int(n),
                latency_p50_ms=_mean(m["p50"], n),
                latency_p95_ms=_mean(m["p95"], n),
                latency_p99_ms=_mean(m["p99"], n),
                tokens_per_s=_mean(m["tps"], n),
                error_rate=_mean(m["errors"], n),
                format_validity=_optional_mean(m["fv"], m["fv_n"]),
                prompt_nll=_optional_mean(m["nll"], m["nll_n"]),
            )
        )
    return out


def _devices(conn: Connection, since: float, now: float, offline_after_s: float) -> list[DeviceRow]:
    per_agent = {
        r[0]: r
        for r in conn.execute(
            select(
                W.agent_id,
                func.coalesce(func.sum(W.request_count), 0),
                func.coalesce(func.sum(W.error_count), 0),
                _weighted(W.latency_p95_ms),
            )
            .where(W.end_unix >= since)
            .group_by(W.agent_id)
        )
    }
    d = Device.__table__.c  # type: ignore[attr-defined]
    rows = []
    for dev in conn.execute(select(d).order_by(d.profile, d.hostname, d.agent_id)):
        stats = per_agent.get(dev.agent_id)
        requests = int(stats[1]) if stats else 0
        rows.append(
            DeviceRow(
                agent_id=dev.agent_id,
                hostname=dev.hostname,
                profile=dev.profile,
                installed=f"{dev.installed_name}:{dev.installed_version}" if dev.installed_name else "-",
                online=(now - dev.last_seen) <= offline_after_s,
                healthy=bool(dev.healthy),
                install_state=dev.install_state,
                last_seen=dev.last_seen,
                requests=requests,
                error_rate=int(stats[2]) / requests if requests else 0.0,
                latency_p95_ms=_mean(stats[3], requests) if stats else 0.0,
            )
        )
    return rows


def load_report_data(store: Store, since: float, now: float, offline_after_s: float) -> ReportData:
    data = ReportData(now=now, since=since)
    with store.engine.connect() as conn:
        data.versions = _version_stats(conn, since)
        data.series = _series(conn, since, now)
        data.devices = _devices(conn, since, now, offline_after_s)
        data.bucket_s = _bucket(conn, since) or 0.0
    if data.bucket_s:
        from controller.reports.evidence import signal_series

        data.signal_series = signal_series(store, since, data.bucket_s)
    with store.session() as s:
        data.events = list(
            s.exec(
                select(DriftEventRow).where(DriftEventRow.detected_at >= since).order_by(DriftEventRow.detected_at)
            ).scalars()
        )
        drift_job = or_(Job.drift_event_id != "", Job.kind.in_(["retrain", "reoptimize"]))  # type: ignore[attr-defined]
        data.jobs = list(
            s.exec(select(Job).where(and_(Job.created_at >= since, drift_job)).order_by(Job.created_at)).scalars()
        )
        data.build_jobs = int(
            s.exec(select(func.count()).select_from(Job).where(Job.created_at >= since)).scalar() or 0
        )
        data.rollouts = list(
            s.exec(
                select(Rollout)
                .where(or_(Rollout.created_at >= since, Rollout.updated_at >= since))
                .order_by(Rollout.created_at)
            ).scalars()
        )
    return data


def rollout_profiles(rollout: Rollout) -> list[str]:
    try:
        return [str(p) for p in json.loads(rollout.profiles_json or "[]")]
    except ValueError:
        return []
