"""Gate metrics, series and fleet summary computed from stored windows (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from controller.store.db import Store
from controller.store.tables import Device
from controller.telemetry.aggregates import fleet_summary, gate_metrics, series
from controller.telemetry.ingest import ingest_batch
from shared.telemetry import TelemetryBatchData
from tests.unit.shared.telemetry_factories import make_window


def _put(store: Store, agent_id: str, seq: int, *windows: object) -> None:
    ingest_batch(store, agent_id, TelemetryBatchData(agent_id=agent_id, seq=seq, windows=list(windows)), now=2000.0)


def _w(end: float, requests: int, errors: int, ttft95: float, lat95: float, tps: float, fv: float, **kw: object):
    return make_window(
        start_unix=end - 60,
        end_unix=end,
        request_count=requests,
        error_count=errors,
        cancel_count=0,
        ttft_p50_ms=ttft95 / 2,
        ttft_p95_ms=ttft95,
        ttft_p99_ms=ttft95,
        latency_p50_ms=lat95 / 2,
        latency_p95_ms=lat95,
        latency_p99_ms=lat95,
        tokens_per_s=tps,
        format_validity=fv,
        prompt_len_hist=[requests, 0, 0, 0, 0],
        **kw,
    )


@pytest.fixture
def filled(store: Store) -> Store:
    # a1: 100 requests (0 errors); a2: 300 requests (60 errors) -> completed 100 vs 240.
    _put(store, "a1", 1, _w(1060, 100, 0, 10.0, 100.0, 200.0, 1.0))
    _put(store, "a2", 1, _w(1070, 300, 60, 44.0, 300.0, 100.0, 0.5))
    # Not counted by the gate: other version, other agent, too old.
    _put(store, "a1", 2, _w(1120, 1000, 0, 999.0, 999.0, 1.0, 0.0, model_version="2"))
    _put(store, "a3", 1, _w(1060, 1000, 0, 999.0, 999.0, 1.0, 0.0))
    _put(store, "a2", 2, _w(500, 1000, 0, 999.0, 999.0, 1.0, 0.0))
    with store.session() as s:
        s.add(Device(agent_id="a1", profile="cpu-int4", installed_name="tiny", installed_version="1", last_seen=1990.0))
        s.add(Device(agent_id="a2", profile="cpu-int4", installed_name="tiny", installed_version="1", last_seen=10.0))
    return store


def test_gate_metrics_are_request_weighted(filled: Store) -> None:
    m = gate_metrics(filled, ["a1", "a2"], "tiny", "1", since_unix=1000.0)
    assert m["request_count"] == 400
    assert m["error_rate"] == pytest.approx(60 / 400)
    # weights are completed requests: 100 and 240
    assert m["ttft_p95_ms"] == pytest.approx((10 * 100 + 44 * 240) / 340)
    assert m["latency_p95_ms"] == pytest.approx((100 * 100 + 300 * 240) / 340)
    assert m["tokens_per_s"] == pytest.approx((200 * 100 + 100 * 240) / 340)
    assert m["format_validity"] == pytest.approx((1.0 * 100 + 0.5 * 240) / 340)
    assert m["window_count"] == 2
    none = gate_metrics(filled, ["nobody"], "tiny", "1", since_unix=0.0)
    assert none["request_count"] == 0 and none["format_validity"] == -1.0 and none["ttft_p95_ms"] == 0.0
    everyone = gate_metrics(filled, None, "tiny", "1", since_unix=1000.0)
    assert everyone["request_count"] == 1400


def test_series_groups_by_version_and_bucket(filled: Store) -> None:
    points = series(filled, since_unix=1000.0, profile="cpu-int4", bucket_s=60.0)
    keys = [(p["model_version"], p["end_unix"], p["agent_count"], p["request_count"]) for p in points]
    # windows ending at 1060 and 1070 fall in the bucket [1020, 1080), labelled by its end
    assert keys == [("1", 1080.0, 3, 1400), ("2", 1140.0, 1, 1000)]
    first = points[0]
    assert first["prompt_len_edges"] == [8, 16, 32, 64]
    assert first["prompt_len_hist"] == [1400, 0, 0, 0, 0]
    assert first["error_rate"] == pytest.approx(60 / 1400)
    assert series(filled, since_unix=1000.0, profile="other") == []


def test_fleet_summary(filled: Store) -> None:
    summary = fleet_summary(filled, since_unix=1000.0, now=2000.0, offline_after_s=120.0)
    assert summary["device_count"] == 2 and summary["online_count"] == 1
    assert summary["profiles"]["cpu-int4"]["versions"] == {"tiny:1": 2}
    assert summary["totals"]["request_count"] == 2400
    rows = {r["agent_id"]: r for r in summary["devices"]}
    assert set(rows) == {"a1", "a2", "a3"}
    assert rows["a1"]["request_count"] == 1100 and rows["a1"]["online"] is True
    assert rows["a3"]["profile"] == "" and rows["a3"]["request_count"] == 1000
    assert summary["batches"] == 5
