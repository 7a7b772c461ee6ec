"""Synthetic telemetry windows for the drift tests (shaped like the agents' real windows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from controller.drift.policy import DriftActions
from controller.store.db import Store
from controller.store.tables import DriftEventRow, TelemetryWindowRow
from shared.errors import FailedPrecondition

EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512]
REQUESTS = 100


def window(
    rng: np.random.Generator,
    t: float,
    *,
    profile: str = "edge",
    model: str = "assistant",
    version: str = "1",
    agent: str = "agent-1",
    latency: float = 50.0,
    validity: float = 0.98,
    nll: float = 2.0,
    prompt_median: float = 20.0,
) -> TelemetryWindowRow:
    lengths = rng.lognormal(np.log(prompt_median), 0.4, REQUESTS).clip(0, EDGES[-1] - 1)
    counts, _ = np.histogram(lengths, bins=EDGES)
    return TelemetryWindowRow(
        agent_id=agent,
        profile=profile,
        model_name=model,
        model_version=version,
        start_unix=t - 60,
        end_unix=t,
        request_count=REQUESTS,
        latency_p50_ms=latency * 0.6,
        latency_p95_ms=float(rng.normal(latency, 5.0)),
        latency_p99_ms=latency * 1.3,
        tokens_per_s=float(rng.normal(120, 5)),
        format_validity=float(rng.binomial(REQUESTS, validity) / REQUESTS),
        prompt_nll=float(rng.normal(nll, 0.05)),
        prompt_len_hist_json=json.dumps(counts.tolist()),
        prompt_len_edges_json=json.dumps(EDGES),
    )


def series(rng: np.random.Generator, n: int, t0: float, **kwargs: object) -> list[TelemetryWindowRow]:
    return [window(rng, t0 + 60 * (i + 1), **kwargs) for i in range(n)]  # type: ignore[arg-type]


def store_windows(store: Store, windows: list[TelemetryWindowRow]) -> None:
    with store.session() as s:
        s.add_all(windows)


@dataclass
class RecordingActions(DriftActions):
    """The seam to factory/rollout, recording calls and returning job ids (or raising when told to)."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail: bool = False
    refuse: tuple[str, ...] = ()  # actions refused the way the closed loop refuses what it cannot do

    def _job(self, action: str, event: DriftEventRow) -> str:
        if self.fail:
            raise RuntimeError("factory queue is full")
        if action in self.refuse:
            raise FailedPrecondition(f"{event.profile} already runs int4: no lower precision to try")
        job_id = f"job-{len(self.calls) + 1}"
        self.calls.append((action, event.event_id, event.kind))
        return job_id

    def retrain(self, event: DriftEventRow) -> str:
        return self._job("retrain", event)

    def reoptimize(self, event: DriftEventRow) -> str:
        return self._job("reoptimize", event)
