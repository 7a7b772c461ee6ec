"""Mean-shift test on a per-request drift signal (output confidence, input novelty: ``shared/signals.py``).

The recent windows are summed until they hold ``min_count`` requests (older windows drop out while the rest still
hold enough), and their mean is compared with the reference's (the version's validation split, measured by the
factory) by Welch's z: ``z = (mean_recent - mean_ref) / sqrt(s_ref^2 / n_ref + s_recent^2 / n_recent)``. It
alarms when z passes ``threshold`` in the signal's bad direction and the shift is at least ``min_effect``
reference standard deviations (a shift too small to matter is not a drift, however sure). z is in standard
errors, so the threshold means the same whatever the window size: 5 keeps false alarms below one in a million
tests while a shift of half a standard deviation is found within 100 requests. After an event (``reset``) it
learns a new reference from the next ``learn_count`` requests, so a reported shift does not alarm again.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from controller.drift.base import (
    Detection,
    Detector,
    DetectorParams,
    DetectorSettings,
    Direction,
    InputType,
    SharedSettings,
    Target,
)
from controller.drift.registry import register_detector
from shared.signals import mean_std


class MeanShiftParams(DetectorParams):
    threshold: float = Field(5.0, gt=0)
    min_count: int = Field(100, ge=2)
    min_effect: float = Field(0.2, ge=0)
    direction: Direction = "both"
    learn_count: int = Field(400, ge=2)


class MeanShiftSettings(DetectorSettings):
    signal_z_threshold: float = Field(5.0, ge=2, description="Welch z (standard errors) a signal's mean must pass")
    signal_min_count: int = Field(100, ge=2, description="requests the recent windows must hold to be tested")
    signal_min_effect: float = Field(0.2, ge=0, description="smallest shift that counts, in reference std units")


@register_detector("mean_shift")
class MeanShift(Detector):
    input_type = InputType.SUMMARY
    Params = MeanShiftParams
    Settings = MeanShiftSettings
    enabled_by_default = True
    needs_reference = True
    p: MeanShiftParams

    def __init__(self, params: MeanShiftParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.reference: dict[str, float] | None = None
        self.buffer: list[list[float]] = []  # [n, sum, sum_sq] per window
        self.learning = [0.0, 0.0, 0.0]

    @classmethod
    def params_for(cls, settings: MeanShiftSettings, shared: SharedSettings, target: Target) -> MeanShiftParams:
        return MeanShiftParams(
            threshold=settings.signal_z_threshold,
            min_count=settings.signal_min_count,
            min_effect=settings.signal_min_effect,
            direction=target.direction,
            learn_count=max(shared.input_min_count, 2 * settings.signal_min_count),
        )

    def set_reference(self, reference: Any) -> None:
        n = int(reference.get("n", 0))
        if n < 2:
            raise ValueError("the signal reference holds fewer than 2 requests")
        self.reference = {"mean": float(reference["mean"]), "std": float(reference["std"]), "n": n}

    def _recent(self, value: Any) -> tuple[float, float, float]:
        self.buffer.append([float(value["n"]), float(value["sum"]), float(value["sum_sq"])])
        while len(self.buffer) > 1 and sum(b[0] for b in self.buffer[1:]) >= self.p.min_count:
            self.buffer.pop(0)
        return tuple(sum(b[i] for b in self.buffer) for i in range(3))  # type: ignore[return-value]

    def update(self, value: Any) -> Detection | None:
        if float(value.get("n", 0)) <= 0:
            return None
        if self.reference is None:
            self._learn(value)
            return None
        n, total, total_sq = self._recent(value)
        if n < self.p.min_count:
            return None
        mean, std = mean_std(n, total, total_sq)
        ref = self.reference
        se = math.sqrt(ref["std"] ** 2 / ref["n"] + std**2 / n)
        diff = mean - ref["mean"]
        z = diff / se if se > 0 else (math.copysign(math.inf, diff) if diff else 0.0)
        bad = {"down": -z, "up": z, "both": abs(z)}[self.p.direction]
        if bad <= self.p.threshold or abs(diff) < self.p.min_effect * ref["std"]:
            return None
        details = {
            "z": z,
            "recent": {"mean": mean, "std": std, "n": n},
            "reference": dict(ref),
            "effect_std": diff / ref["std"] if ref["std"] > 0 else None,
        }
        return Detection(self.name, bad, self.p.threshold, "down" if diff < 0 else "up", details)

    def _learn(self, value: Any) -> None:
        for i, key in enumerate(("n", "sum", "sum_sq")):
            self.learning[i] += float(value[key])
        n, total, total_sq = self.learning
        if n >= self.p.learn_count:
            mean, std = mean_std(n, total, total_sq)
            self.reference = {"mean": mean, "std": std, "n": int(n), "learned": True}
            self.learning = [0.0, 0.0, 0.0]

    def reset(self) -> None:
        self.buffer, self.reference, self.learning = [], None, [0.0, 0.0, 0.0]

    def variables(self) -> dict[str, Any]:
        return {"reference": self.reference, "buffer": self.buffer, "learning": self.learning}

    def restore(self, variables: dict[str, Any]) -> None:
        self.reference = variables.get("reference")
        self.buffer = [list(b) for b in variables.get("buffer", [])]
        self.learning = list(variables.get("learning", [0.0, 0.0, 0.0]))
