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

from controller.drift.base import Detection, Detector, check_direction
from controller.drift.registry import register_detector


@register_detector("page_hinkley")
class PageHinkley(Detector):
    input_type = "scalar"

    def __init__(
        self,
        delta: float = 0.5,
        threshold: float = 12.0,
        direction: str = "up",
        min_instances: int = 5,
        alpha: float = 1.0,
        prior_mean: float = 0.0,
        prior_weight: int = 0,
    ) -> None:
        if threshold <= 0 or delta < 0:
            raise ValueError(f"page_hinkley needs threshold > 0 and delta >= 0 (got {threshold}, {delta})")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"page_hinkley alpha (forgetting factor) must be in (0, 1], got {alpha}")
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.direction = check_direction(direction)
        self.min_instances = int(min_instances)
        self.alpha = float(alpha)
        self.prior_mean = float(prior_mean)
        self.prior_weight = int(prior_weight)
        self._clear(self.prior_weight)

    def reset(self) -> None:
        self._clear(0)

    def _clear(self, prior_weight: int) -> None:
        self.n = 0
        self.n_prior = prior_weight
        self.mean = self.prior_mean if prior_weight else 0.0
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
        x = float(value)
        self.n += 1
        self.mean += (x - self.mean) / (self.n + self.n_prior)
        dev = x - self.mean
        self.sum_up = self.alpha * self.sum_up + dev - self.delta
        self.min_up = min(self.min_up, self.sum_up)
        self.sum_down = self.alpha * self.sum_down + dev + self.delta
        self.max_down = max(self.max_down, self.sum_down)
        if self.n < self.min_instances:
            return None
        candidates = []
        if self.direction in ("up", "both"):
            candidates.append(("up", self.statistic_up))
        if self.direction in ("down", "both"):
            candidates.append(("down", self.statistic_down))
        direction, stat = max(candidates, key=lambda c: c[1])
        if stat > self.threshold:
            details = {"windows_since_reset": self.n, "running_mean": self.mean}
            return Detection(self.name, stat, self.threshold, direction, details)
        return None

    def params(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "threshold": self.threshold,
            "direction": self.direction,
            "min_instances": self.min_instances,
            "alpha": self.alpha,
            "prior_mean": self.prior_mean,
            "prior_weight": self.prior_weight,
        }

    def _variables(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_prior": self.n_prior,
            "mean": self.mean,
            "sum_up": self.sum_up,
            "min_up": self.min_up,
            "sum_down": self.sum_down,
            "max_down": self.max_down,
        }

    def _restore(self, variables: dict[str, Any]) -> None:
        self.n = int(variables.get("n", 0))
        self.n_prior = int(variables.get("n_prior", 0))
        for key in ("mean", "sum_up", "min_up", "sum_down", "max_down"):
            setattr(self, key, float(variables.get(key, 0.0)))
