"""Wasserstein-1 (earth mover's) distance on the prompt-length histogram: alarm when W1(reference, recent),
in units of the reference's standard deviation, exceeds ``threshold``. Bin centers come from the edges."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from controller.drift.base import DetectorSettings, SharedSettings, Target
from controller.drift.detectors.histogram import HistogramParams, HistogramTest, histogram_params
from controller.drift.distribution import bin_centers, proportions, wasserstein_binned
from controller.drift.registry import register_detector


class WassersteinParams(HistogramParams):
    threshold: float = Field(0.5, gt=0)


class WassersteinSettings(DetectorSettings):
    wasserstein_threshold: float = Field(
        0.5, gt=0, description="W1 distance above this, in reference standard deviations, is an input drift"
    )


@register_detector("wasserstein")
class WassersteinTest(HistogramTest):
    Params = WassersteinParams
    Settings = WassersteinSettings

    @classmethod
    def params_for(cls, settings: WassersteinSettings, shared: SharedSettings, target: Target) -> WassersteinParams:
        return histogram_params(WassersteinParams, settings.wasserstein_threshold, shared, target)

    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        centers = bin_centers(self.p.edges, len(reference))
        w = wasserstein_binned(reference, recent, centers)
        p = proportions(reference)
        mean = float(np.sum(p * centers))
        scale = math.sqrt(float(np.sum(p * (centers - mean) ** 2)))
        if scale <= 0:
            scale = float(np.mean(np.diff(centers))) if len(centers) > 1 else 1.0
        value = w / scale
        return value, value > self.p.threshold, {"wasserstein": w, "reference_std": scale}
