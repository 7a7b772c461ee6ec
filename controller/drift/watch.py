"""All the detectors watching one (profile, model version): standardizes each window's figures with the
baseline, learns missing baseline figures from the first windows, feeds the detectors, and turns alarms
into :class:`Finding` objects (one per kind per window), resetting that kind's detectors afterwards.

Pure computation on :class:`TelemetryWindowRow` objects, no database: the monitor persists ``to_state()``
and the bench drives the very same code on synthetic windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from controller.drift.base import Detection, Detector
from controller.drift.baseline import (
    EDGES_KEY,
    HIST_KEY,
    histogram_value,
    scalar_summary,
    scalar_value,
    std_upper_bound,
    usable_scalar,
)
from controller.drift.config import DriftConfig
from controller.drift.registry import create_detector, detector_from_state
from controller.store.tables import TelemetryWindowRow

log = logging.getLogger(__name__)

RECENT_KEPT = 20
SCALAR_DETECTORS = ("page_hinkley", "adwin")
HIST_DETECTORS = ("psi", "ks", "wasserstein")


@dataclass(frozen=True)
class MetricSpec:
    metric: str
    kind: str  # latency | quality | input
    direction: str  # the bad direction: up | down | both


SCALAR_SPECS = (
    MetricSpec("latency_p95_ms", "latency", "up"),
    MetricSpec("format_validity", "quality", "down"),
    MetricSpec("prompt_nll", "quality", "up"),
)
HIST_SPEC = MetricSpec(HIST_KEY, "input", "both")


@dataclass
class Finding:
    """A detected drift of one kind in one window, with the evidence the event stores."""

    kind: str
    metric: str
    detection: Detection
    window_end: float
    evidence: dict[str, Any] = field(default_factory=dict)


def scalar_params(config: DriftConfig, spec: MetricSpec, detector: str) -> dict[str, Any]:
    prefix = "latency" if spec.kind == "latency" else "quality"
    if detector == "page_hinkley":
        return {
            "delta": getattr(config, f"{prefix}_ph_delta"),
            "threshold": getattr(config, f"{prefix}_ph_threshold"),
            "direction": spec.direction,
            "min_instances": config.min_instances,
            "prior_weight": config.baseline_windows,
        }
    return {
        "delta": getattr(config, f"{prefix}_adwin_delta"),
        "direction": spec.direction,
        "min_window_length": config.min_instances,
        "min_change": config.adwin_min_change,
    }


def hist_params(config: DriftConfig, detector: str, edges: list[float]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "threshold": getattr(config, f"{detector}_threshold"),
        "windows": config.input_windows,
        "min_count": config.input_min_count,
        "reference_windows": config.baseline_windows,
        "edges": edges,
    }
    if detector == "ks":
        params["alpha"] = config.ks_alpha
    return params


class Watch:
    def __init__(self, config: DriftConfig, baseline: dict[str, Any] | None = None) -> None:
        self.config = config
        self.baseline: dict[str, Any] = dict(baseline or {})
        self.learned: dict[str, Any] = {}  # baseline figures learned here and not yet saved
        self.learning: dict[str, list[float]] = {}
        self.hist_learning: dict[str, Any] = {}
        self.detectors: dict[str, Detector] = {}
        self.recent: dict[str, list[float]] = {}
        self.windows_fed = 0

    # --- baseline ------------------------------------------------------------------------------------
    def _scale(self, spec: MetricSpec, entry: dict[str, Any]) -> float:
        if spec.kind == "latency":
            floor = self.config.latency_min_rel_std * abs(float(entry["mean"]))
        else:
            floor = self.config.quality_min_std
        std = float(entry["std"])
        if entry.get("n"):
            std = std_upper_bound(std, int(entry["n"]))
        return max(std, floor, 1e-12)

    def _learn_scalar(self, metric: str, value: float) -> None:
        values = self.learning.setdefault(metric, [])
        values.append(value)
        if len(values) >= self.config.baseline_windows:
            self.baseline[metric] = self.learned[metric] = scalar_summary(values)
            del self.learning[metric]
            log.info("learned %s baseline %s", metric, self.baseline[metric])

    def _learn_hist(self, counts: list[float], edges: list[float]) -> None:
        acc = self.hist_learning
        if acc and (acc["edges"] != edges or len(acc["counts"]) != len(counts)):
            acc.clear()  # the agent changed its bins: start over
        if not acc:
            acc.update(counts=[0.0] * len(counts), edges=edges, n=0)
        acc["counts"] = [a + b for a, b in zip(acc["counts"], counts, strict=True)]
        acc["n"] += 1
        if acc["n"] >= self.config.baseline_windows and sum(acc["counts"]) >= self.config.input_min_count:
            self.baseline[HIST_KEY] = self.learned[HIST_KEY] = acc["counts"]
            self.baseline[EDGES_KEY] = self.learned[EDGES_KEY] = acc["edges"]
            self.hist_learning = {}

    # --- detectors -----------------------------------------------------------------------------------
    def _detector(self, det_id: str, name: str, params: dict[str, Any]) -> Detector:
        det = self.detectors.get(det_id)
        if det is None:
            det = create_detector(name, **params)
            if name in HIST_DETECTORS:
                det.set_reference(self.baseline[HIST_KEY])  # type: ignore[attr-defined]
            self.detectors[det_id] = det
        elif det.params() != params:  # the profile's settings changed: keep the running state
            state = det.to_state()
            det = create_detector(name, **params)
            det._restore(state["vars"])
            self.detectors[det_id] = det
        return det

    def _remember(self, metric: str, value: float) -> None:
        values = self.recent.setdefault(metric, [])
        values.append(round(value, 6))
        del values[:-RECENT_KEPT]

    def feed(self, window: TelemetryWindowRow) -> list[Finding]:
        """Feed one window; returns at most one finding per kind."""
        self.windows_fed += 1
        hits: dict[str, list[tuple[MetricSpec, Detection]]] = {}
        for spec in SCALAR_SPECS:
            value = scalar_value(window, spec.metric)
            if value is None:
                continue
            self._remember(spec.metric, value)
            entry = self.baseline.get(spec.metric)
            if not usable_scalar(entry):
                self._learn_scalar(spec.metric, value)
                continue
            z = (value - float(entry["mean"])) / self._scale(spec, entry)
            z = max(-self.config.z_clip, min(self.config.z_clip, z))
            for name in SCALAR_DETECTORS:
                if self.config.enabled(name):
                    det = self._detector(f"{spec.metric}:{name}", name, scalar_params(self.config, spec, name))
                    found = det.update(z)
                    if found is not None:
                        hits.setdefault(spec.kind, []).append((spec, found))
        hist = histogram_value(window)
        if hist is not None:
            counts, edges = hist
            if HIST_KEY not in self.baseline:
                self._learn_hist(counts, edges)
            elif edges != list(self.baseline.get(EDGES_KEY, edges)) or len(counts) != len(self.baseline[HIST_KEY]):
                log.debug("window %s: histogram bins differ from the baseline's; skipped", window.id)
            else:
                for name in HIST_DETECTORS:
                    if self.config.enabled(name):
                        det = self._detector(f"{HIST_KEY}:{name}", name, hist_params(self.config, name, edges))
                        found = det.update(counts)
                        if found is not None:
                            hits.setdefault("input", []).append((HIST_SPEC, found))
        return [self._finding(kind, found, window) for kind, found in hits.items()]

    def _finding(self, kind: str, hits: list[tuple[MetricSpec, Detection]], window: TelemetryWindowRow) -> Finding:
        spec, det = hits[0]
        evidence: dict[str, Any] = {
            "detector": det.detector,
            "metric": spec.metric,
            "direction": det.direction,
            "statistic": det.statistic,
            "threshold": det.threshold,
            "details": det.details,
            "params": self.detectors[f"{spec.metric}:{det.detector}"].params(),
            "window": {"id": window.id, "agent_id": window.agent_id, "end_unix": window.end_unix},
            "windows_fed": self.windows_fed,
            "also": [
                {"detector": d.detector, "metric": s.metric, "statistic": d.statistic, "threshold": d.threshold}
                for s, d in hits[1:]
            ],
        }
        if spec.metric == HIST_KEY:
            evidence["baseline"] = {"counts": self.baseline.get(HIST_KEY), "edges": self.baseline.get(EDGES_KEY)}
        else:
            evidence["units"] = "baseline standard deviations"
            evidence["baseline"] = self.baseline.get(spec.metric)
            evidence["recent_values"] = list(self.recent.get(spec.metric, []))
        self.reset_kind(kind)
        return Finding(kind, spec.metric, det, window.end_unix, evidence)

    def reset_kind(self, kind: str) -> None:
        metrics = {s.metric for s in (*SCALAR_SPECS, HIST_SPEC) if s.kind == kind}
        for det_id, det in self.detectors.items():
            if det_id.split(":", 1)[0] in metrics:
                det.reset()

    # --- state ---------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "detectors": {k: d.to_state() for k, d in self.detectors.items()},
            "learning": self.learning,
            "hist_learning": self.hist_learning,
            "recent": self.recent,
            "windows_fed": self.windows_fed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: DriftConfig, baseline: dict[str, Any]) -> Watch:
        watch = cls(config, baseline)
        watch.detectors = {k: detector_from_state(v) for k, v in state.get("detectors", {}).items()}
        watch.learning = {k: list(v) for k, v in state.get("learning", {}).items()}
        watch.hist_learning = dict(state.get("hist_learning", {}))
        watch.recent = {k: list(v) for k, v in state.get("recent", {}).items()}
        watch.windows_fed = int(state.get("windows_fed", 0))
        return watch
