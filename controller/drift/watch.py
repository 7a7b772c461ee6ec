"""All the detectors watching one (profile, model version): standardizes each window's figures with the
baseline, learns missing baseline figures from the first windows, feeds the detectors, and turns alarms
into :class:`Finding` objects (one per kind per window), resetting that kind's detectors afterwards.

Dispatch is by the detector interface only (``controller/drift/base.py``), never by name: each of
:data:`TARGETS` yields its input (a standardized float for a scalar metric, bin counts for the prompt-length
histogram, the window's sums of a drift signal) once its baseline is known, and that input goes to every
registered detector that the profile enables and whose ``input_type`` is the target's. A detector is built
with ``params_for`` from its validated settings, handed the baseline when it declares ``needs_reference``, and
rebuilt with its running state kept when the profile's settings change.

Drift signals (``shared/signals.py``: output confidence, input novelty) come with the window as
:class:`~shared.signals.SignalSummary` objects; their reference is the version's, measured by the factory on
its validation split (``signal:<name>`` in the baseline), so they are tested from the first window. Without
one, the detector learns it from the first windows. The prompt NLL is no longer watched: students learn
answer tokens only, so it sits near ln(vocabulary) and carries no information.

Pure computation on :class:`TelemetryWindowRow` objects, no database: the monitor persists ``to_state()``
and the bench drives the very same code on synthetic windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from controller.drift.base import Detection, Detector, DetectorParams, InputType, Target
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
from controller.drift.registry import detector_classes, detector_from_state
from controller.store.tables import TelemetryWindowRow
from shared.errors import SlmopsError
from shared.signals import SIGNAL_BAD_DIRECTION, SIGNAL_NAMES, SignalSummary

log = logging.getLogger(__name__)

RECENT_KEPT = 20

# What is watched. Each target goes to every enabled detector whose input_type is the target's.
SIGNAL_PREFIX = "signal:"
SIGNAL_TARGETS = tuple(
    Target(
        f"{SIGNAL_PREFIX}{name}",
        "input" if name == "input_novelty" else "quality",
        SIGNAL_BAD_DIRECTION[name],  # type: ignore[arg-type]
        InputType.SUMMARY,
    )
    for name in SIGNAL_NAMES
)
TARGETS = (
    Target("latency_p95_ms", "latency", "up", InputType.SCALAR),
    Target("format_validity", "quality", "down", InputType.SCALAR),
    Target(HIST_KEY, "input", "both", InputType.DISTRIBUTION),
    *SIGNAL_TARGETS,
)
Signals = dict[str, SignalSummary]


@dataclass
class Finding:
    """A detected drift of one kind in one window, with the evidence the event stores."""

    kind: str
    metric: str
    detection: Detection
    window_end: float
    evidence: dict[str, Any] = field(default_factory=dict)


Observed = tuple[Any, Target]  # the input for the detectors, and the target it came from (with its bin edges)


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
        self.signal_recent: dict[str, list[dict[str, Any]]] = {}  # recent windows' sums per signal (evidence)
        self._signals: Signals = {}
        self._params: dict[tuple[type[Detector], Target], DetectorParams] = {}

    # --- baseline ------------------------------------------------------------------------------------
    def _scale(self, target: Target, entry: dict[str, Any]) -> float:
        if target.kind == "latency":
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

    # --- inputs: what each input type feeds, or None while its baseline is being learned --------------
    def _scalar_input(self, target: Target, window: TelemetryWindowRow) -> Observed | None:
        value = scalar_value(window, target.metric)
        if value is None:
            return None
        self._remember(target.metric, value)
        entry = self.baseline.get(target.metric)
        if not usable_scalar(entry):
            self._learn_scalar(target.metric, value)
            return None
        z = (value - float(entry["mean"])) / self._scale(target, entry)
        return max(-self.config.z_clip, min(self.config.z_clip, z)), target

    def _distribution_input(self, target: Target, window: TelemetryWindowRow) -> Observed | None:
        hist = histogram_value(window)
        if hist is None:
            return None
        counts, edges = hist
        if target.metric not in self.baseline:
            self._learn_hist(counts, edges)
            return None
        if edges != list(self.baseline.get(EDGES_KEY, edges)) or len(counts) != len(self.baseline[target.metric]):
            log.debug("window %s: histogram bins differ from the baseline's; skipped", window.id)
            return None
        return counts, replace(target, edges=tuple(edges))

    def _summary_input(self, target: Target, window: TelemetryWindowRow) -> Observed | None:
        summary = self._signals.get(target.metric.removeprefix(SIGNAL_PREFIX))
        if summary is None or summary.n <= 0:
            return None
        value = {"n": summary.n, **{k: v for k, v in summary.to_wire().items() if k != "counts"}}
        recent = self.signal_recent.setdefault(target.metric, [])
        recent.append(summary.to_wire())
        del recent[:-RECENT_KEPT]
        return value, target

    def signal_evidence(self) -> dict[str, Any]:
        """Per signal: the reference and the current distribution (counts, mean, std, n): the most recent
        windows holding the requests a signal test needs (``signal_min_count``)."""
        wanted = int(getattr(self.config.settings_for("mean_shift"), "signal_min_count", 100))
        out: dict[str, Any] = {}
        for metric, wires in self.signal_recent.items():
            name = metric.removeprefix(SIGNAL_PREFIX)
            merged = SignalSummary(name)
            for wire in reversed(wires):
                merged = merged.merge(SignalSummary.from_dict(name, wire))
                if merged.n >= wanted:
                    break
            ref = self.baseline.get(metric)
            out[name] = {"reference": ref, "current": merged.to_dict(), "direction_bad": SIGNAL_BAD_DIRECTION[name]}
        return out

    def _reference(self, target: Target) -> Any:
        """The baseline handed to a detector that declares ``needs_reference`` (see InputType); None when
        there is none yet (a summary detector then learns it)."""
        if target.input_type is InputType.SUMMARY:
            return self.baseline.get(target.metric)
        if target.input_type is InputType.DISTRIBUTION:
            return self.baseline[target.metric]
        return {"mean": 0.0, "std": 1.0, "n": self.baseline[target.metric].get("n")}

    _INPUTS: dict[InputType, Callable[[Watch, Target, TelemetryWindowRow], Observed | None]] = {
        InputType.SCALAR: _scalar_input,
        InputType.DISTRIBUTION: _distribution_input,
        InputType.SUMMARY: _summary_input,
    }

    # --- detectors -----------------------------------------------------------------------------------
    def _wanted(self, cls: type[Detector], target: Target) -> DetectorParams:
        key = (cls, target)
        if key not in self._params:
            self._params[key] = cls.params_for(self.config.settings_for(cls.name), self.config, target)
        return self._params[key]

    def _detector(self, cls: type[Detector], target: Target) -> Detector:
        det_id = f"{target.metric}:{cls.name}"
        wanted = self._wanted(cls, target)
        det = self.detectors.get(det_id)
        if det is None:
            det = cls(wanted)
            reference = self._reference(target) if cls.needs_reference else None
            if reference is not None:
                det.set_reference(reference)
        elif det.p != wanted:  # the profile's settings changed: keep the running state
            det = det.reconfigured(wanted)
        self.detectors[det_id] = det
        return det

    def _remember(self, metric: str, value: float) -> None:
        values = self.recent.setdefault(metric, [])
        values.append(round(value, 6))
        del values[:-RECENT_KEPT]

    def _update(self, target: Target, value: Any) -> list[Detection]:
        """Feed one input to every enabled detector that watches its input type."""
        found = []
        for cls in detector_classes():
            if cls.input_type is target.input_type and self.config.enabled(cls.name):
                detection = self._detector(cls, target).update(value)
                if detection is not None:
                    found.append(detection)
        return found

    def feed(self, window: TelemetryWindowRow, signals: Signals | None = None) -> list[Finding]:
        """Feed one window (with its drift signals, when it has any); returns at most one finding per kind."""
        self.windows_fed += 1
        self._signals = signals or {}
        hits: dict[str, list[tuple[Target, Detection]]] = {}
        for target in TARGETS:
            observed = self._INPUTS[target.input_type](self, target, window)
            if observed is not None:
                value, fed = observed
                for detection in self._update(fed, value):
                    hits.setdefault(target.kind, []).append((target, detection))
        return [self._finding(kind, found, window) for kind, found in hits.items()]

    def _finding(self, kind: str, hits: list[tuple[Target, Detection]], window: TelemetryWindowRow) -> Finding:
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
        if self.signal_recent:
            evidence["signals"] = self.signal_evidence()
            evidence["moved"] = [
                s.metric.removeprefix(SIGNAL_PREFIX) for s, _ in hits if s.input_type is InputType.SUMMARY
            ]
        if spec.input_type is InputType.DISTRIBUTION:
            evidence["baseline"] = {"counts": self.baseline.get(spec.metric), "edges": self.baseline.get(EDGES_KEY)}
        elif spec.input_type is InputType.SUMMARY:
            evidence["units"] = "standard errors of the recent mean (Welch z)"
            evidence["baseline"] = self.baseline.get(spec.metric) or det.details.get("reference")
        else:
            evidence["units"] = "baseline standard deviations"
            evidence["baseline"] = self.baseline.get(spec.metric)
            evidence["recent_values"] = list(self.recent.get(spec.metric, []))
        self.reset_kind(kind)
        return Finding(kind, spec.metric, det, window.end_unix, evidence)

    def reset_kind(self, kind: str) -> None:
        metrics = {t.metric for t in TARGETS if t.kind == kind}
        for det_id, det in self.detectors.items():
            if det_id.rsplit(":", 1)[0] in metrics:  # "<metric>:<detector>"; signal metrics hold a colon too
                det.reset()

    # --- state ---------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "detectors": {k: d.to_state() for k, d in self.detectors.items()},
            "learning": self.learning,
            "hist_learning": self.hist_learning,
            "recent": self.recent,
            "windows_fed": self.windows_fed,
            **({"signal_recent": self.signal_recent} if self.signal_recent else {}),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: DriftConfig, baseline: dict[str, Any]) -> Watch:
        watch = cls(config, baseline)
        for det_id, det_state in state.get("detectors", {}).items():
            try:
                watch.detectors[det_id] = detector_from_state(det_state)
            except (SlmopsError, ValueError, TypeError) as exc:  # e.g. a detector no longer registered
                log.warning("drift detector %s not restored, it starts afresh: %s", det_id, exc)
        watch.learning = {k: list(v) for k, v in state.get("learning", {}).items()}
        watch.hist_learning = dict(state.get("hist_learning", {}))
        watch.recent = {k: list(v) for k, v in state.get("recent", {}).items()}
        watch.windows_fed = int(state.get("windows_fed", 0))
        watch.signal_recent = {k: list(v) for k, v in state.get("signal_recent", {}).items()}
        return watch
