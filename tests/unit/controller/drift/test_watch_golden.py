"""The watch against figures recorded before the detector seam was reworked (``data/watch_golden.json``): the
same windows give the same findings, evidence and persisted state, and a state saved by that older controller
restores and carries on identically.

The figures were recorded with every detector on and ``baseline_windows: 10`` on :func:`golden_stream`;
re-record them only for an intended change of behaviour (last: the prompt NLL is no longer watched, so the
window-44 prompt-NLL finding is gone; ``legacy`` keeps the state the older controller saved at window 30).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from controller.drift.config import DriftConfig
from controller.drift.watch import Finding, Watch
from controller.store.tables import TelemetryWindowRow
from tests.unit.controller.drift.streams import series

GOLDEN = json.loads((Path(__file__).parent / "data" / "watch_golden.json").read_text())


def golden_stream() -> list[TelemetryWindowRow]:
    rng = np.random.default_rng(42)
    t0 = 1_800_000_000.0
    windows = (
        series(rng, 25, t0)
        + series(rng, 15, t0 + 25 * 60, latency=80.0, validity=0.8, prompt_median=32.0)
        + series(rng, 20, t0 + 40 * 60, latency=80.0, nll=2.5)
    )
    for i, w in enumerate(windows):
        w.id = i + 1
    return windows


def recorded(findings: list[Finding]) -> list[dict[str, Any]]:
    out = [
        {
            "kind": f.kind,
            "metric": f.metric,
            "detector": f.detection.detector,
            "statistic": f.detection.statistic,
            "threshold": f.detection.threshold,
            "direction": f.detection.direction,
            "window_end": f.window_end,
            "evidence": f.evidence,
        }
        for f in findings
    ]
    return json.loads(json.dumps(out, default=float))


def test_findings_and_state_match_the_recorded_ones() -> None:
    watch = Watch(DriftConfig.from_dict(GOLDEN["settings"]))
    windows = golden_stream()
    for i, w in enumerate(windows):
        assert recorded(watch.feed(w)) == GOLDEN["findings"][i], f"window {i + 1}"
        if str(i + 1) in GOLDEN["states"]:
            assert json.loads(json.dumps(watch.to_state())) == GOLDEN["states"][str(i + 1)]
    assert sum(map(len, GOLDEN["findings"])) >= 4
    assert not any(f["metric"] == "prompt_nll" for found in GOLDEN["findings"] for f in found)


def test_a_state_saved_by_the_older_controller_carries_on() -> None:
    restart_after = 30
    config = DriftConfig.from_dict(GOLDEN["settings"])
    legacy = GOLDEN["legacy"]
    watch = Watch.from_state(legacy["state_30"], config, legacy["baseline_30"])
    assert len(watch.detectors) == 9  # its prompt-NLL detectors are restored but no longer fed
    for i, w in enumerate(golden_stream()[restart_after:], start=restart_after):
        assert recorded(watch.feed(w)) == GOLDEN["findings"][i], f"window {i + 1}"
    assert json.loads(json.dumps(watch.to_state())) == legacy["state_60"]
