"""Builders for telemetry test data (shared by the unit and integration telemetry tests)."""

from __future__ import annotations

from typing import Any

from shared.telemetry import TelemetryWindowData

EDGES = [8, 16, 32, 64]


def make_window(**overrides: Any) -> TelemetryWindowData:
    """A valid window: 10 requests, 1 error, ordered percentiles, a 5-bucket histogram."""
    values: dict[str, Any] = {
        "start_unix": 1000.0,
        "end_unix": 1060.0,
        "model_name": "tiny",
        "model_version": "1",
        "profile": "cpu-int4",
        "request_count": 10,
        "error_count": 1,
        "cancel_count": 0,
        "ttft_p50_ms": 10.0,
        "ttft_p95_ms": 20.0,
        "ttft_p99_ms": 25.0,
        "latency_p50_ms": 100.0,
        "latency_p95_ms": 200.0,
        "latency_p99_ms": 250.0,
        "itl_p50_ms": 5.0,
        "itl_p95_ms": 9.0,
        "tokens_per_s": 150.0,
        "queue_wait_p95_ms": 3.0,
        "prompt_tokens": 200,
        "completion_tokens": 300,
        "prompt_len_hist": [1, 2, 3, 4, 0],
        "prompt_len_edges": list(EDGES),
        "prompt_nll": 2.5,
        "format_validity": 0.9,
        "feedback_positive": 2,
        "feedback_negative": 1,
        "sampled_prompts": [],
        "health_ok": True,
    }
    values.update(overrides)
    return TelemetryWindowData(**values)
