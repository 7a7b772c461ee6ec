"""Two-sample Kolmogorov-Smirnov test on the prompt-length histogram: alarm when the binned KS statistic
exceeds ``threshold`` and its p-value is below ``alpha``."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from controller.drift.base import DetectorSettings, SharedSettings, Target
from controller.drift.detectors.histogram import HistogramParams, HistogramTest, histogram_params
from controller.drift.distribution import ks_binned
from controller.drift.registry import register_detector


class KsParams(HistogramParams):
    threshold: float = Field(0.15, gt=0)
    alpha: float = Field(0.001, gt=0, lt=1)


class KsSettings(DetectorSettings):
    ks_threshold: float = Field(0.15, gt=0, description="KS statistic above this (and p < ks_alpha) is an input drift")
    ks_alpha: float = Field(0.001, gt=0, lt=1, description="KS p-value below which the KS statistic counts")


@register_detector("ks")
class KsTest(HistogramTest):
    Params = KsParams
    Settings = KsSettings
    p: KsParams

    @classmethod
    def params_for(cls, settings: KsSettings, shared: SharedSettings, target: Target) -> KsParams:
        return histogram_params(KsParams, settings.ks_threshold, shared, target, alpha=settings.ks_alpha)

    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        d, p = ks_binned(reference, recent)
        return d, d > self.p.threshold and p < self.p.alpha, {"p_value": p, "alpha": self.p.alpha}
