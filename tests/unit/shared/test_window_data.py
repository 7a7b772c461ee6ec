"""Validation and protobuf conversion of telemetry windows and batches (network-facing input)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shared.errors import InvalidArgument
from shared.pb import agent_pb2
from shared.telemetry import (
    MAX_PROMPT_CHARS,
    MAX_SAMPLED_PROMPTS,
    InvalidTelemetry,
    TelemetryBatchData,
    TelemetryWindowData,
    batch_from_pb,
    window_from_pb,
)
from tests.unit.shared.telemetry_factories import make_window


def test_round_trip_keeps_every_field() -> None:
    w = make_window(sampled_prompts=["hello", "wörld"], health_ok=False)
    back = TelemetryWindowData.from_pb(w.to_pb())
    assert back == w
    batch = TelemetryBatchData(agent_id="a1", seq=7, windows=[w, make_window()], dropped_windows=3)
    assert batch_from_pb(batch.to_pb()) == batch


BAD: list[tuple[dict[str, Any], str]] = [
    ({"ttft_p50_ms": math.nan}, "ttft_p50_ms"),
    ({"tokens_per_s": math.inf}, "tokens_per_s"),
    ({"latency_p50_ms": -1.0}, "latency_p50_ms"),
    ({"queue_wait_p95_ms": -0.5}, "queue_wait_p95_ms"),
    ({"prompt_nll": math.nan}, "prompt_nll"),
    ({"latency_p95_ms": 90.0}, "latency_p95_ms"),  # below p50 = 100
    ({"ttft_p99_ms": 19.0}, "ttft_p99_ms"),  # below p95 = 20
    ({"itl_p95_ms": 4.0}, "itl_p95_ms"),
    ({"error_count": 11}, "error_count"),
    ({"cancel_count": 11}, "cancel_count"),
    ({"prompt_len_hist": [1, 2, 3, 4]}, "prompt_len_hist"),  # 4 edges need 5 buckets
    ({"prompt_len_hist": [1, 2, 3, 4, 5]}, "prompt_len_hist"),  # 15 prompts > 10 requests
    ({"prompt_len_edges": [8, 8, 32, 64]}, "prompt_len_edges"),
    ({"format_validity": 1.5}, "format_validity"),
    ({"format_validity": math.nan}, "format_validity"),
    ({"end_unix": 999.0}, "end_unix"),
    ({"start_unix": -5.0, "end_unix": 1.0}, "start_unix"),
    ({"sampled_prompts": ["p"] * (MAX_SAMPLED_PROMPTS + 1)}, "sampled_prompts"),
    ({"sampled_prompts": ["ok", "x" * (MAX_PROMPT_CHARS + 1)]}, "sampled_prompts[1]"),
    ({"profile": "p" * 300}, "profile"),
    ({"request_count": -1}, "request_count"),
    ({"prompt_tokens": 2**40}, "prompt_tokens"),  # would overflow the store's INTEGER column
]


@pytest.mark.parametrize(("overrides", "field"), BAD, ids=[f for _, f in BAD])
def test_validation_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_window(**overrides).validate()
    assert isinstance(info.value, InvalidTelemetry)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)
    with pytest.raises(InvalidTelemetry):
        make_window(**overrides).to_pb()  # nothing malformed is ever sent either


def _raw_window(**fields: Any) -> Any:
    msg = make_window().to_pb()
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(msg, key)[:]
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"latency_p99_ms": 1.0}, "latency_p99_ms"),
        ({"error_count": 50}, "error_count"),
        ({"ttft_p95_ms": math.inf}, "ttft_p95_ms"),
        ({"prompt_len_edges": list(range(1, 100))}, "prompt_len_edges"),
        ({"prompt_len_hist": [0] * 3}, "prompt_len_hist"),
        ({"sampled_prompts": ["s"] * 500}, "sampled_prompts"),
    ],
)
def test_from_pb_rejects_malformed_messages(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTelemetry) as info:
        window_from_pb(_raw_window(**fields))
    assert info.value.field == field


def test_batch_errors_name_the_window() -> None:
    msg = agent_pb2.TelemetryBatch(agent_id="a1", seq=1, windows=[make_window().to_pb(), _raw_window(error_count=99)])
    with pytest.raises(InvalidTelemetry) as info:
        batch_from_pb(msg)
    assert info.value.field == "windows[1].error_count"
    with pytest.raises(InvalidTelemetry) as info:
        batch_from_pb(agent_pb2.TelemetryBatch(agent_id="a1", seq=0))
    assert info.value.field == "seq"
    with pytest.raises(InvalidTelemetry) as info:
        batch_from_pb(agent_pb2.TelemetryBatch(agent_id="", seq=3))
    assert info.value.field == "agent_id"
    with pytest.raises(InvalidTelemetry) as info:
        batch_from_pb(agent_pb2.TelemetryBatch(agent_id="a1", seq=2**40))
    assert info.value.field == "seq"


def test_tolerances_and_normalisation() -> None:
    # Percentiles that differ only by rounding are accepted.
    make_window(latency_p50_ms=100.0, latency_p95_ms=100.0 - 1e-9, latency_p99_ms=100.0 - 1e-9).validate()
    # Any negative format validity means "not measured" and is normalised to -1.
    assert window_from_pb(_raw_window(format_validity=-0.25)).format_validity == -1.0
    # Empty histogram (no edges, no buckets) is fine.
    make_window(prompt_len_hist=[], prompt_len_edges=[]).validate()
