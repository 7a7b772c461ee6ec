"""The common part of the distribution detectors (PSI, KS, Wasserstein): a sliding sum of recent histograms
tested against a reference histogram.

Each tests the sum of the most recent windows that together hold at least ``min_count`` observations (and
at least ``windows`` windows), so quiet devices are tested on enough data and busy ones react within a few
windows. A reference learned from windows likewise needs ``reference_windows`` windows and ``min_count``
observations. After a reset a detector learns a new reference, so a shift that has been reported (and
acted on) does not raise the same alarm again.

A new test is a module with a subclass that implements :meth:`HistogramTest.compare` and ``params_for``
(usually one call to :func:`histogram_params`), registered with ``@register_detector(name)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from controller.drift.base import Detection, Detector, DetectorParams, InputType, SharedSettings, Target
from controller.drift.distribution import same_length


class HistogramParams(DetectorParams):
    threshold: float = Field(gt=0)
    windows: int = Field(5, ge=1)
    min_count: int = Field(200, ge=1)
    reference_windows: int = Field(20, ge=1)
    edges: list[float] = Field(default_factory=list)  # bin edges, for the evidence (and W1's bin centers)


def histogram_params(
    params: type[HistogramParams], threshold: float, shared: SharedSettings, target: Target, **extra: Any
) -> Any:
    """The parameters every histogram test takes, from the shared settings and the watched target."""
    return params(
        threshold=threshold,
        windows=shared.input_windows,
        min_count=shared.input_min_count,
        reference_windows=shared.baseline_windows,
        edges=list(target.edges),
        **extra,
    )


class HistogramTest(Detector):
    """Base of the distribution tests; not registered itself."""

    input_type = InputType.DISTRIBUTION
    needs_reference = True
    Params = HistogramParams
    p: HistogramParams

    def __init__(self, params: HistogramParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.reference: list[float] | None = None
        self.learning: list[float] = []
        self.learned = 0
        self.buffer: list[list[float]] = []

    @property
    def threshold(self) -> float:
        return self.p.threshold

    def set_reference(self, reference: Sequence[float]) -> None:
        if float(np.sum(reference)) <= 0:
            raise ValueError("the reference histogram has no observations")
        self.reference = [float(c) for c in reference]
        self.learning, self.learned = [], 0

    def reset(self) -> None:
        self.reference = None
        self.learning, self.learned = [], 0
        self.buffer = []

    @abstractmethod
    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """(statistic, alarm, extra details) of the recent counts against the reference counts."""

    def update(self, value: Sequence[float]) -> Detection | None:
        counts = [float(c) for c in value]
        if sum(counts) <= 0:
            return None
        if self.reference is None:
            self._learn(counts)
            return None
        same_length(self.reference, counts)
        recent = self._recent(counts)
        if recent.sum() < self.p.min_count:
            return None
        stat, alarm, extra = self.compare(np.asarray(self.reference), recent)
        if not alarm:
            return None
        details = {"recent_counts": recent.tolist(), "reference_counts": list(self.reference), **extra}
        if self.p.edges:
            details["edges"] = list(self.p.edges)
        return Detection(self.name, stat, self.p.threshold, "shift", details)

    def _learn(self, counts: list[float]) -> None:
        self.learning = [a + b for a, b in zip(self.learning, counts, strict=True)] if self.learning else counts
        self.learned += 1
        if self.learned >= self.p.reference_windows and sum(self.learning) >= self.p.min_count:
            self.set_reference(self.learning)

    def _recent(self, counts: list[float]) -> np.ndarray:
        """Adds a window to the buffer and returns the tested sum of the recent ones."""
        self.buffer.append(counts)
        # Drop the oldest windows while the rest still holds enough windows and observations.
        totals = [sum(h) for h in self.buffer]
        drop = 0
        while len(self.buffer) - drop > self.p.windows and sum(totals[drop + 1 :]) >= self.p.min_count:
            drop += 1
        del self.buffer[:drop]
        del self.buffer[: -max(self.p.windows, self.p.min_count)]  # a hard bound on the state
        return np.sum(np.asarray(self.buffer), axis=0)

    def variables(self) -> dict[str, Any]:
        return {"reference": self.reference, "learning": self.learning, "learned": self.learned, "buffer": self.buffer}

    def restore(self, variables: dict[str, Any]) -> None:
        ref = variables.get("reference")
        self.reference = [float(c) for c in ref] if ref is not None else None
        self.learning = [float(c) for c in variables.get("learning", [])]
        self.learned = int(variables.get("learned", 0))
        self.buffer = [[float(c) for c in h] for h in variables.get("buffer", [])]
