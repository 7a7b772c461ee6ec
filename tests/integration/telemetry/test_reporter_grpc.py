"""Agent reporter -> real gRPC -> controller ingest: no loss while the controller is away, no double counting."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.reporter import TelemetryReporter, grpc_sender
from controller.store.db import Store
from controller.store.tables import TelemetryBatchRow, TelemetryWindowRow
from shared.pb import agent_pb2, agent_pb2_grpc
from tests.integration.telemetry.conftest import TelemetryServer
from tests.unit.shared.telemetry_factories import make_window

AGENT = "agent-1"
# Reconnect quickly after the server comes back (the agent's real channel may use longer backoffs).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
    ("grpc.min_reconnect_backoff_ms", 100),
]


@pytest.fixture
def channel(telemetry_server: TelemetryServer) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(telemetry_server.target, options=CHANNEL_OPTIONS)
    yield ch
    ch.close()


def _reporter(tmp_path: Path, channel: grpc.Channel, name: str = "tele.db") -> TelemetryReporter:
    buffer = TelemetryBuffer(tmp_path / name, max_batches=1000)
    send = grpc_sender(agent_pb2_grpc.AgentServiceStub(channel), [("x-slmops-agent-id", AGENT)], timeout_s=30)
    return TelemetryReporter(buffer, send, AGENT)


def _stored(store: Store) -> tuple[int, int, list[float]]:
    with store.session() as s:
        batches = s.execute(select(func.count()).select_from(TelemetryBatchRow)).scalar_one()
        ends = list(s.execute(select(TelemetryWindowRow.end_unix).order_by(TelemetryWindowRow.end_unix)).scalars())
    return int(batches), len(ends), ends


def _add(reporter: TelemetryReporter, i: int, n: int = 2) -> list[float]:
    ends = [10_000.0 + 100 * i + k for k in range(n)]
    reporter.buffer.add([make_window(start_unix=e - 60, end_unix=e) for e in ends])
    return ends


def _flush_until(reporter: TelemetryReporter, want: int, timeout_s: float = 15.0) -> int:
    sent, deadline = 0, time.monotonic() + timeout_s
    while sent < want and time.monotonic() < deadline:
        sent += reporter.flush()
        if sent < want:
            time.sleep(0.1)
    return sent


def test_buffered_while_controller_down_then_sent_once(
    tmp_path: Path,
    telemetry_server: TelemetryServer,
    channel: grpc.Channel,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = _reporter(tmp_path, channel)
    expected = _add(reporter, 0) + _add(reporter, 1)
    assert _flush_until(reporter, 2) == 2 and len(reporter.buffer) == 0

    telemetry_server.stop()  # controller goes away
    for i in range(2, 5):
        expected += _add(reporter, i)
    with caplog.at_level(logging.DEBUG, logger="agent.telemetry.reporter"):
        assert reporter.flush() == 0
        assert reporter.flush() == 0
    assert len(reporter.buffer) == 3 and reporter.failures == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "UNAVAILABLE" in warnings[0].getMessage()  # one clear line per outage
    assert reporter.backoff_s(1.0) > 1.0 * 0.5 * 2

    # The agent restarts too (new buffer object on the same file), then the controller comes back on the
    # same port with a fresh Store on the same database (a controller restart).
    reporter.buffer.close()
    reporter = _reporter(tmp_path, channel)
    restarted = Store(store.url)
    telemetry_server.start(restarted)
    try:
        assert _flush_until(reporter, 3) == 3
        assert len(reporter.buffer) == 0
        batches, windows, ends = _stored(restarted)
        assert (batches, windows) == (5, 10) and ends == sorted(expected)
    finally:
        restarted.close()


def test_lost_ack_is_resent_and_not_double_counted(tmp_path: Path, channel: grpc.Channel, store: Store) -> None:
    reporter = _reporter(tmp_path, channel)
    real_send = reporter.send
    lost = {"count": 0}

    def send_losing_first_ack(batch: agent_pb2.TelemetryBatch) -> agent_pb2.TelemetryAck:
        ack = real_send(batch)  # the controller stores it ...
        if lost["count"] == 0:
            lost["count"] += 1
            raise ConnectionError("connection reset before the ack arrived")  # ... but the agent never hears
        return ack

    reporter.send = send_losing_first_ack
    _add(reporter, 0)
    _add(reporter, 1)
    assert reporter.flush() == 0 and len(reporter.buffer) == 2
    assert _flush_until(reporter, 2) == 2 and len(reporter.buffer) == 0  # batch 1 comes back as a duplicate
    assert _stored(store)[:2] == (2, 4)


def test_background_thread_drains_buffer(tmp_path: Path, channel: grpc.Channel, store: Store) -> None:
    reporter = _reporter(tmp_path, channel)
    reporter.start(interval_s=0.05)
    try:
        for i in range(5):
            _add(reporter, i, n=1)
        deadline = time.monotonic() + 10
        while len(reporter.buffer) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reporter.stop()
    assert len(reporter.buffer) == 0
    assert _stored(store)[:2] == (5, 5)


def test_reset_agent_buffer_is_renumbered(tmp_path: Path, channel: grpc.Channel, store: Store) -> None:
    """An agent that lost its buffer file restarts at seq 1; the controller's ack makes it renumber."""
    old = _reporter(tmp_path, channel, "old.db")
    for i in range(3):
        _add(old, i, n=1)
    assert _flush_until(old, 3) == 3
    fresh = _reporter(tmp_path, channel, "new.db")
    _add(fresh, 10, n=1)
    assert fresh.flush() == 0  # seq 1 is taken: renumbered to 4
    assert [s for s, _ in fresh.buffer.pending()] == [4]
    assert _flush_until(fresh, 1) == 1
    assert _stored(store)[:2] == (4, 4)


def test_requests_to_gate_metrics_end_to_end(tmp_path: Path, channel: grpc.Channel, store: Store) -> None:
    """Serving records -> window -> buffer -> gRPC -> store -> gate metrics, prompts kept on the device."""
    from agent.telemetry.windows import WindowAggregator
    from controller.telemetry.aggregates import gate_metrics

    reporter = _reporter(tmp_path, channel)
    agg = WindowAggregator(60, "cpu-int4", "tiny", "7", start_unix=1000.0)
    for i in range(40):
        agg.record(
            {
                "queue_wait_ms": 1.0,
                "ttft_ms": 10.0 + i,
                "itl_ms": 3.0,
                "total_ms": 100.0 + i,
                "prompt_tokens": 20,
                "completion_tokens": 10,
                "error": i % 10 == 0,
                "cancelled": False,
                "prompt_nll": 2.0,
                "output_text": "{}",
                "prompt_text": "private",
                "model_id": "tiny:7",
            }
        )
    window = agg.roll(now=1060.0)
    assert window is not None
    reporter.buffer.add([window])
    assert _flush_until(reporter, 1) == 1
    m = gate_metrics(store, [AGENT], "tiny", "7", since_unix=0.0)
    assert m["request_count"] == 40 and m["error_rate"] == pytest.approx(0.1)
    assert m["latency_p95_ms"] == pytest.approx(window.latency_p95_ms)
    with store.session() as s:
        assert s.execute(select(func.count()).select_from(TelemetryWindowRow)).scalar_one() == 1
        from controller.store.tables import SampledPrompt

        assert s.execute(select(func.count()).select_from(SampledPrompt)).scalar_one() == 0
