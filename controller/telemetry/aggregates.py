"""Figures computed from stored telemetry windows: rollout gates, time series for reports and drift, fleet view.

Windows are combined request-weighted: a latency percentile across windows is the mean of the windows'
percentiles weighted by their completed requests (an approximation of the pooled percentile; exact pooling
would need the raw latencies, which never leave the device). Error rate is total errors over total requests.
``format_validity`` is -1 where no window measured it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.sql.elements import ColumnElement

from controller.store.db import Store
from controller.store.tables import Device, TelemetryBatchRow, TelemetryWindowRow

T = TelemetryWindowRow
_CHUNK = 500  # agent ids per IN (...) clause

# Per-window percentile fields combined by completed-request weight.
_WEIGHTED = (
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "itl_p50_ms",
    "itl_p95_ms",
    "tokens_per_s",
    "queue_wait_p95_ms",
)


def _ok() -> ColumnElement[Any]:
    return T.request_count - T.error_count - T.cancel_count  # type: ignore[return-value,operator]


def _sum_columns() -> list[Any]:
    ok = _ok()
    measured = T.format_validity >= 0  # type: ignore[operator]
    cols: list[Any] = [
        func.count().label("windows"),
        func.sum(T.request_count).label("requests"),
        func.sum(T.error_count).label("errors"),
        func.sum(T.cancel_count).label("cancels"),
        func.sum(ok).label("ok"),
        func.sum(T.prompt_nll * T.request_count).label("nll_x"),
        func.sum(case((T.prompt_nll > 0, T.request_count), else_=0)).label("nll_w"),  # type: ignore[operator]
        func.sum(case((measured, T.format_validity * ok), else_=0.0)).label("fv_x"),
        func.sum(case((measured, ok), else_=0)).label("fv_w"),
        func.sum(T.feedback_positive).label("feedback_positive"),
        func.sum(T.feedback_negative).label("feedback_negative"),
        func.sum(T.prompt_tokens).label("prompt_tokens"),
        func.sum(T.completion_tokens).label("completion_tokens"),
    ]
    cols += [func.sum(getattr(T, name) * ok).label(name) for name in _WEIGHTED]
    return cols


class _Sums:
    """Running sums of windows; turns into request-weighted metrics."""

    KEYS = (
        "windows",
        "requests",
        "errors",
        "cancels",
        "ok",
        "nll_x",
        "nll_w",
        "fv_x",
        "fv_w",
        "feedback_positive",
        "feedback_negative",
        "prompt_tokens",
        "completion_tokens",
        *_WEIGHTED,
    )

    def __init__(self) -> None:
        self.v: dict[str, float] = dict.fromkeys(self.KEYS, 0.0)

    def add_sql_row(self, row: Any) -> None:
        for key in self.KEYS:
            self.v[key] += float(getattr(row, key) or 0)

    def add_window(self, w: Any) -> None:
        ok = w.request_count - w.error_count - w.cancel_count
        v = self.v
        v["windows"] += 1
        v["requests"] += w.request_count
        v["errors"] += w.error_count
        v["cancels"] += w.cancel_count
        v["ok"] += ok
        v["nll_x"] += w.prompt_nll * w.request_count
        v["nll_w"] += w.request_count if w.prompt_nll > 0 else 0
        if w.format_validity >= 0:
            v["fv_x"] += w.format_validity * ok
            v["fv_w"] += ok
        for key in ("feedback_positive", "feedback_negative", "prompt_tokens", "completion_tokens"):
            v[key] += getattr(w, key)
        for name in _WEIGHTED:
            v[name] += getattr(w, name) * ok

    def metrics(self) -> dict[str, float]:
        v = self.v
        ok = v["ok"]
        out = {name: (v[name] / ok if ok > 0 else 0.0) for name in _WEIGHTED}
        out.update(
            request_count=v["requests"],
            window_count=v["windows"],
            error_rate=v["errors"] / v["requests"] if v["requests"] else 0.0,
            cancel_rate=v["cancels"] / v["requests"] if v["requests"] else 0.0,
            format_validity=v["fv_x"] / v["fv_w"] if v["fv_w"] > 0 else -1.0,
            prompt_nll=v["nll_x"] / v["nll_w"] if v["nll_w"] > 0 else 0.0,
            feedback_positive=v["feedback_positive"],
            feedback_negative=v["feedback_negative"],
            prompt_tokens=v["prompt_tokens"],
            completion_tokens=v["completion_tokens"],
        )
        return out


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def gate_metrics(
    store: Store, agent_ids: Sequence[str] | None, model_name: str, model_version: str, since_unix: float
) -> dict[str, float]:
    """Request-weighted figures of ``agent_ids`` (None: every agent) serving NAME:VERSION since a time.

    Keys: ttft_p95_ms, latency_p95_ms, tokens_per_s, error_rate, format_validity (-1: not measured),
    request_count, plus window_count, cancel_rate, prompt_nll and the other percentiles.
    """
    sums = _Sums()
    base = (
        select(*_sum_columns())
        .where(T.model_name == model_name)
        .where(T.model_version == model_version)
        .where(T.end_unix >= since_unix)  # type: ignore[operator]
    )
    with store.session() as s:
        if agent_ids is None:
            sums.add_sql_row(s.execute(base).one())
        else:
            for chunk in _chunks(list(dict.fromkeys(agent_ids))):
                sums.add_sql_row(s.execute(base.where(T.agent_id.in_(chunk))).one())  # type: ignore[attr-defined]
    return sums.metrics()


def _merge_hist(target: dict[str, Any], edges_json: str, hist_json: str) -> None:
    """Add a window's histogram to ``target`` when its edges match (the first window's edges win)."""
    try:
        edges, hist = json.loads(edges_json), json.loads(hist_json)
    except ValueError:
        return
    if not hist:
        return
    if target["prompt_len_edges"] is None:
        target["prompt_len_edges"], target["prompt_len_hist"] = list(edges), [0] * len(hist)
    if edges == target["prompt_len_edges"] and len(hist) == len(target["prompt_len_hist"]):
        target["prompt_len_hist"] = [a + b for a, b in zip(target["prompt_len_hist"], hist, strict=True)]
    else:
        target["hist_mismatch"] += 1


def series(
    store: Store, since_unix: float, profile: str | None = None, bucket_s: float = 60.0, until_unix: float | None = None
) -> list[dict[str, Any]]:
    """One point per (profile, model name, model version, window end bucket), oldest first.

    Windows of all agents whose ``end_unix`` falls in the same ``bucket_s`` bucket are combined; each point
    has ``end_unix`` (bucket end), agent and window counts, the request-weighted metrics of
    :func:`gate_metrics`, ``health_ok_share``, and the summed prompt-length histogram with its edges.
    """
    stmt = select(T).where(T.end_unix >= since_unix)  # type: ignore[operator]
    if until_unix is not None:
        stmt = stmt.where(T.end_unix < until_unix)  # type: ignore[operator]
    if profile is not None:
        stmt = stmt.where(T.profile == profile)
    groups: dict[tuple[str, str, str, float], dict[str, Any]] = {}
    with store.session() as s:
        for w in s.execute(stmt.execution_options(yield_per=2000)).scalars():
            end = (math.floor(w.end_unix / bucket_s) + 1) * bucket_s
            key = (w.profile, w.model_name, w.model_version, end)
            g = groups.get(key)
            if g is None:
                g = groups[key] = {
                    "sums": _Sums(),
                    "agents": set(),
                    "healthy": 0,
                    "prompt_len_edges": None,
                    "prompt_len_hist": [],
                    "hist_mismatch": 0,
                }
            g["sums"].add_window(w)
            g["agents"].add(w.agent_id)
            g["healthy"] += int(w.health_ok)
            _merge_hist(g, w.prompt_len_edges_json, w.prompt_len_hist_json)
    out = []
    for (prof, name, version, end), g in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])
    ):
        m = g["sums"].metrics()
        out.append(
            {
                "profile": prof,
                "model_name": name,
                "model_version": version,
                "end_unix": end,
                "agent_count": len(g["agents"]),
                **m,
                "health_ok_share": g["healthy"] / m["window_count"] if m["window_count"] else 1.0,
                "prompt_len_edges": g["prompt_len_edges"] or [],
                "prompt_len_hist": g["prompt_len_hist"],
            }
        )
    return out


def fleet_summary(
    store: Store, since_unix: float, now: float | None = None, offline_after_s: float = 120.0
) -> dict[str, Any]:
    """The fleet at a glance: devices, versions per profile, traffic and figures per device and overall."""
    import time

    now = time.time() if now is None else now
    total = _Sums()
    per_device: dict[str, dict[str, float]] = {}
    with store.session() as s:
        devices = list(s.execute(select(Device)).scalars())
        stmt = select(T.agent_id, *_sum_columns()).where(T.end_unix >= since_unix).group_by(T.agent_id)  # type: ignore[operator]
        for row in s.execute(stmt):
            sums = _Sums()
            sums.add_sql_row(row)
            total.add_sql_row(row)
            per_device[row.agent_id] = sums.metrics()
        batch_row = s.execute(
            select(func.count(), func.coalesce(func.sum(TelemetryBatchRow.dropped_windows), 0)).where(
                TelemetryBatchRow.received_at >= since_unix  # type: ignore[operator]
            )
        ).one()
    profiles: dict[str, dict[str, Any]] = {}
    rows = []
    known = set()
    for d in sorted(devices, key=lambda d: d.agent_id):
        known.add(d.agent_id)
        online = now - d.last_seen <= offline_after_s
        p = profiles.setdefault(d.profile, {"devices": 0, "online": 0, "versions": Counter()})
        p["devices"] += 1
        p["online"] += int(online)
        if d.installed_name:
            p["versions"][f"{d.installed_name}:{d.installed_version}"] += 1
        rows.append(_device_row(d.agent_id, d.profile, d, online, per_device.get(d.agent_id)))
    for agent_id in sorted(set(per_device) - known):  # telemetry from agents no longer enrolled
        rows.append(_device_row(agent_id, "", None, False, per_device[agent_id]))
    for p in profiles.values():
        p["versions"] = dict(p["versions"])
    return {
        "since_unix": since_unix,
        "device_count": len(devices),
        "online_count": sum(p["online"] for p in profiles.values()),
        "profiles": profiles,
        "totals": total.metrics(),
        "batches": int(batch_row[0]),
        "dropped_windows": int(batch_row[1]),
        "devices": rows,
    }


def _device_row(
    agent_id: str, profile: str, d: Device | None, online: bool, m: dict[str, float] | None
) -> dict[str, Any]:
    m = m or _Sums().metrics()
    return {
        "agent_id": agent_id,
        "hostname": d.hostname if d else "",
        "profile": profile,
        "installed": f"{d.installed_name}:{d.installed_version}" if d and d.installed_name else "",
        "healthy": bool(d.healthy) if d else False,
        "online": online,
        "last_seen": d.last_seen if d else 0.0,
        "request_count": m["request_count"],
        "error_rate": m["error_rate"],
        "ttft_p95_ms": m["ttft_p95_ms"],
        "latency_p95_ms": m["latency_p95_ms"],
        "tokens_per_s": m["tokens_per_s"],
        "format_validity": m["format_validity"],
    }
