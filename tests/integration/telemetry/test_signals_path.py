"""Drift signals end to end: agent windows (output confidence, input novelty) -> real gRPC -> ingest (real
database) -> the monitor tests them against the version's factory reference from the first window -> a drift
event whose evidence shows the signals that moved, rendered by ``drift show`` and the report."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.reporter import TelemetryReporter, grpc_sender
from agent.telemetry.windows import WindowAggregator
from controller.drift.baseline import baseline_metrics, load_baseline, store_references
from controller.drift.monitor import run_drift_check
from controller.reports import render_report
from controller.reports.evidence import evidence_lines, parse_evidence
from controller.store.db import Store
from controller.telemetry.extras import load_signals
from shared.pb import agent_pb2_grpc
from shared.profiles import DeviceProfile
from shared.signals import DriftReference, request_signals, summarize
from shared.sketch import sketch_from_texts
from tests.integration.telemetry.conftest import TelemetryServer
from tests.unit.controller.drift.streams import RecordingActions

AGENT, PROFILE, MODEL = "agent-1", "cpu-int4", "smart-building-demo"
BASE = ["turn off the lights in meeting room {n}", "open the blinds in the lobby", "lock the door of office {n}"]
SHIFTED = ["kindly kill the illumination in huddle space {n}", "yo, shut the atrium shades", "secure suite {n} pronto"]


def _request(rng: random.Random, shifted: bool) -> dict[str, object]:
    prompt = rng.choice(SHIFTED if shifted else BASE).format(n=rng.randint(1, 40))
    centre = -0.9 if shifted else -0.04
    lps = [min(0.0, rng.gauss(centre, 0.03)) for _ in range(12)]
    ents = [abs(rng.gauss(1.2 if shifted else 0.1, 0.05)) for _ in range(12)]
    return {"prompt_text": prompt, "token_logprobs": lps, "token_entropies": ents, "total_ms": 40.0,
            "completion_tokens": 12, "prompt_tokens": 12, "output_text": '{"intent":"x"}'}  # fmt: skip


@pytest.fixture
def reference_folder(tmp_path: Path) -> Path:
    """A variant folder whose drift_reference.json was measured on base traffic (as the factory stage does)."""
    rng = random.Random(1)
    sketch = sketch_from_texts(t.format(n=1) for t in BASE)
    values: dict[str, list[float]] = {}
    for _ in range(300):
        r = _request(rng, False)
        for k, v in request_signals(r["token_logprobs"], r["token_entropies"], str(r["prompt_text"]), sketch).items():  # type: ignore[arg-type]
            values.setdefault(k, []).append(v)
    DriftReference(summarize(values), sketch, 0.85, 300).save(tmp_path)
    return tmp_path


@pytest.fixture
def reporter(tmp_path: Path, telemetry_server: TelemetryServer) -> Iterator[TelemetryReporter]:
    channel = grpc.insecure_channel(telemetry_server.target)
    send = grpc_sender(agent_pb2_grpc.AgentServiceStub(channel), [("x-slmops-agent-id", AGENT)], timeout_s=30)
    yield TelemetryReporter(TelemetryBuffer(tmp_path / "tele.db", 1000), send, AGENT)
    channel.close()


def test_signals_travel_and_fire_a_drift_from_the_first_windows(
    store: Store, reporter: TelemetryReporter, reference_folder: Path
) -> None:
    assert store_references(store, MODEL, "1", {PROFILE: reference_folder}) == [PROFILE]
    with store.session() as s:
        baseline = baseline_metrics(load_baseline(s, PROFILE, MODEL, "1"))
    assert baseline["reference_accuracy"] == 0.85 and baseline["signal:input_novelty"]["n"] == 300

    rng, t0 = random.Random(2), time.time() - 3600
    agg = WindowAggregator(60, PROFILE, MODEL, "1", start_unix=t0)
    agg.sketch = DriftReference.load(reference_folder).sketch  # type: ignore[union-attr]
    profiles = {PROFILE: DeviceProfile(name=PROFILE, precision="int4")}
    actions = (
        RecordingActions(store) if "store" in RecordingActions.__init__.__code__.co_varnames else RecordingActions()
    )
    events = []
    for i in range(8):  # 4 base windows, then 4 shifted ones, 60 requests each
        for _ in range(60):
            agg.record(_request(rng, shifted=i >= 4))
        window = agg.roll(t0 + 60 * (i + 1))
        assert window is not None and window.signals["answer_logprob_mean"]["counts"]
        reporter.buffer.add([window])
        assert reporter.flush() == 1
        found = run_drift_check(store, profiles, actions, now=t0 + 60 * (i + 1))
        assert not found or i >= 4, f"false alarm on base window {i}: {found}"
        events += [(i, e) for e in found]
    with store.session() as s:
        stored = load_signals(s, range(1, 9))
    assert len(stored) == 8 and stored[1]["input_novelty"].n == 60
    # no learning period: the reference came with the version, so the first shifted windows are tested
    first, event = events[0]
    assert first == 4  # the first shifted window
    assert len(events) == 2  # one per kind (quality: confidence; input: novelty); reset, then quiet
    assert event.detector == "mean_shift" and event.metric.startswith("signal:")
    evidence = event.evidence
    assert {"answer_logprob_mean", "input_novelty"} <= set(evidence["signals"])
    novelty = evidence["signals"]["input_novelty"]
    assert novelty["current"]["mean"] > 0.3 > novelty["reference"]["mean"]
    lines = evidence_lines(evidence)
    assert lines[0].startswith("signals that moved:") and "not audited" in lines[-1]
    report = render_report(store, since_s=7200, html=True, png=True, now=t0 + 600)
    assert f"Evidence of {event.event_id}" in report.summary_text and "input_novelty" in report.summary_text
    assert b"(moved)</b>" in report.html and b"evidence of" in report.html  # type: ignore[operator]
    assert "quality.png" in report.pngs
    assert parse_evidence("not json") == {}
