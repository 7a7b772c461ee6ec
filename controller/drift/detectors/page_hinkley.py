"""Page-Hinkley: a cumulative-sum test for a change in the mean of a scalar series.

For an increase it keeps ``m_T = sum(x_t - mean_t - delta)`` and its running minimum ``M_T``, and raises an
alarm when ``m_T - M_T > threshold``; a decrease mirrors it. ``mean_t`` is the running mean of the series
since the last reset, so the detector reacts to changes, not to an offset from a reference. ``delta`` is
the change magnitude tolerated and ``threshold`` (lambda) the evidence needed, both in the units of the
values fed (the monitor feeds baseline-standardized values, so both are in baseline standard deviations).

``prior_mean``/``prior_weight`` start the running mean at a reference level (the baseline) worth
``prior_weight`` observations, so a series that is off the baseline from its first value is still caught.
The prior holds until the first reset: after a drift event the new level is learned as the normal one.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

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

MIN_THRESHOLD = 2.0  # in baseline standard deviations: lower alarms on noise


class PageHinkleyParams(DetectorParams):
    delta: float = Field(0.5, ge=0)
    threshold: float = Field(12.0, gt=0)
    direction: Direction = "up"
    min_instances: int = Field(5, ge=0)
    alpha: float = Field(1.0, gt=0, le=1)  # forgetting factor
    prior_mean: float = 0.0
    prior_weight: int = Field(0, ge=0)


class PageHinkleySettings(DetectorSettings):
    latency_ph_delta: float = Field(0.5, gt=0, description="tolerated change on latency (baseline std units)")
    latency_ph_threshold: float = Field(10.0, gt=0, description="alarm threshold lambda on latency (std units)")
    quality_ph_delta: float = Field(0.5, gt=0, description="same, quality series (format validity, prompt NLL)")
    quality_ph_threshold: float = Field(10.0, gt=0, description="same, quality series")

    @field_validator("latency_ph_threshold", "quality_ph_threshold")
    @classmethod
    def _not_noise(cls, value: float) -> float:
        if value < MIN_THRESHOLD:
            raise ValueError(
                f"{value!r} is too low: Page-Hinkley thresholds are in baseline standard deviations and "
                f"below {MIN_THRESHOLD:g} they alarm on noise (default 10)"
            )
        return value


@register_detector("page_hinkley")
class PageHinkley(Detector):
    input_type = InputType.SCALAR
    Params = PageHinkleyParams
    Settings = PageHinkleySettings
    enabled_by_default = True
    p: PageHinkleyParams

    def __init__(self, params: PageHinkleyParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._clear(self.p.prior_weight)

    @classmethod
    def params_for(cls, settings: PageHinkleySettings, shared: SharedSettings, target: Target) -> PageHinkleyParams:
        latency = target.kind == "latency"
        return PageHinkleyParams(
            delta=settings.latency_ph_delta if latency else settings.quality_ph_delta,
            threshold=settings.latency_ph_threshold if latency else settings.quality_ph_threshold,
            direction=target.direction,
            min_instances=shared.min_instances,
            prior_weight=shared.baseline_windows,
        )

    def reset(self) -> None:
        self._clear(0)

    def _clear(self, prior_weight: int) -> None:
        self.n = 0
        self.n_prior = prior_weight
        self.mean = self.p.prior_mean if prior_weight else 0.0
        self.sum_up = 0.0
        self.min_up = 0.0
        self.sum_down = 0.0
        self.max_down = 0.0

    @property
    def statistic_up(self) -> float:
        return self.sum_up - self.min_up

    @property
    def statistic_down(self) -> float:
        return self.max_down - self.sum_down

    def update(self, value: float) -> Detection | None:
        p = self.p
        x = float(value)
        self.n += 1
        self.mean += (x - self.mean) / (self.n + self.n_prior)
        dev = x - self.mean
        self.sum_up = p.alpha * self.sum_up + dev - p.delta
        self.min_up = min(self.min_up, self.sum_up)
        self.sum_down = p.alpha * self.sum_down + dev + p.delta
        self.max_down = max(self.max_down, self.sum_down)
        if self.n < p.min_instances:
            return None
        candidates = []
        if p.direction in ("up", "both"):
            candidates.append(("up", self.statistic_up))
        if p.direction in ("down", "both"):
            candidates.append(("down", self.statistic_down))
        direction, stat = max(candidates, key=lambda c: c[1])
        if stat > p.threshold:
            details = {"windows_since_reset": self.n, "running_mean": self.mean}
            return Detection(self.name, stat, p.threshold, direction, details)
        return None

    def variables(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_prior": self.n_prior,
            "mean": self.mean,
            "sum_up": self.sum_up,
            "min_up": self.min_up,
            "sum_down": self.sum_down,
            "max_down": self.max_down,
        }

    def restore(self, variables: dict[str, Any]) -> None:
        self.n = int(variables.get("n", 0))
        self.n_prior = int(variables.get("n_prior", 0))
        for key in ("mean", "sum_up", "min_up", "sum_down", "max_down"):
            setattr(self, key, float(variables.get(key, 0.0)))
