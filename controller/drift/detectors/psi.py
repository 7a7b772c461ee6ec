"""Population stability index on the prompt-length histogram: alarm when PSI(reference, recent) > threshold
(0.1 is a small shift and 0.25 a large one by the usual rule)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from controller.drift.base import DetectorSettings, SharedSettings, Target
from controller.drift.detectors.histogram import HistogramParams, HistogramTest, histogram_params
from controller.drift.distribution import psi
from controller.drift.registry import register_detector


class PsiParams(HistogramParams):
    threshold: float = Field(0.25, gt=0)


class PsiSettings(DetectorSettings):
    psi_threshold: float = Field(0.25, gt=0, description="PSI above this is an input drift")


@register_detector("psi")
class PsiTest(HistogramTest):
    Params = PsiParams
    Settings = PsiSettings
    enabled_by_default = True

    @classmethod
    def params_for(cls, settings: PsiSettings, shared: SharedSettings, target: Target) -> PsiParams:
        return histogram_params(PsiParams, settings.psi_threshold, shared, target)

    def compare(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        value = psi(reference, recent)
        return value, value > self.p.threshold, {}
