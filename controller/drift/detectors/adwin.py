"""ADWIN (adaptive windowing, Bifet & Gavalda 2007): keeps a window of recent values compressed into an
exponential histogram of buckets, and drops its oldest part whenever two sub-windows have means that differ
by more than a bound derived from the confidence ``delta``. A cut is a detected change.

The bound uses the window's observed variance (Bernstein form), so it works on any scale; the monitor feeds
baseline-standardized values. On long stationary windows the bound becomes tight enough to flag
differences too small to matter, so a cut is reported only when the means differ by ``min_change`` or more
(the old part is dropped either way). Memory grows with the log of the window length.
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


class AdwinParams(DetectorParams):
    delta: float = Field(0.002, gt=0, lt=1)  # confidence
    direction: Direction = "both"
    clock: int = Field(1, ge=1)  # check for a cut every this many values
    max_buckets: int = Field(5, ge=2)  # buckets per level of the exponential histogram
    min_window_length: int = Field(5, ge=1)
    grace_period: int = Field(10, ge=0)
    min_change: float = Field(0.0, ge=0)


class AdwinSettings(DetectorSettings):
    latency_adwin_delta: float = Field(
        0.002, gt=0, lt=1, description="ADWIN confidence on latency (smaller: fewer alarms, later)"
    )
    quality_adwin_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence on quality")
    adwin_min_change: float = Field(
        0.5, gt=0, description="ADWIN reports a cut only when the means differ by this (baseline std units)"
    )


@register_detector("adwin")
class Adwin(Detector):
    input_type = InputType.SCALAR
    Params = AdwinParams
    Settings = AdwinSettings
    p: AdwinParams

    def __init__(self, params: AdwinParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.reset()

    @classmethod
    def params_for(cls, settings: AdwinSettings, shared: SharedSettings, target: Target) -> AdwinParams:
        latency = target.kind == "latency"
        return AdwinParams(
            delta=settings.latency_adwin_delta if latency else settings.quality_adwin_delta,
            direction=target.direction,
            min_window_length=shared.min_instances,
            min_change=settings.adwin_min_change,
        )

    def reset(self) -> None:
        # levels[i]: buckets of 2**i values, oldest first, each [sum, sum of squared deviations].
        self.levels: list[list[list[float]]] = [[]]
        self.width = 0
        self.total = 0.0
        self.m2 = 0.0
        self.tick = 0

    @property
    def mean(self) -> float:
        return self.total / self.width if self.width else 0.0

    def update(self, value: float) -> Detection | None:
        self._insert(float(value))
        self.tick += 1
        if self.tick % self.p.clock or self.width <= self.p.grace_period:
            return None
        return self._detect()

    # --- the exponential histogram ------------------------------------------------------------------
    def _insert(self, x: float) -> None:
        if self.width:
            self.m2 += self.width * (x - self.total / self.width) ** 2 / (self.width + 1)
        self.width += 1
        self.total += x
        self.levels[0].append([x, 0.0])
        level = 0
        while level < len(self.levels):
            buckets = self.levels[level]
            if len(buckets) <= self.p.max_buckets:
                break
            (t1, v1), (t2, v2) = buckets[0], buckets[1]
            n = 2**level
            merged = [t1 + t2, v1 + v2 + n * n * (t1 / n - t2 / n) ** 2 / (2 * n)]
            del buckets[:2]
            if level + 1 == len(self.levels):
                self.levels.append([])
            self.levels[level + 1].append(merged)
            level += 1

    def _drop_oldest(self) -> None:
        while len(self.levels) > 1 and not self.levels[-1]:
            self.levels.pop()
        level = len(self.levels) - 1
        t, v = self.levels[level].pop(0)
        n = 2**level
        self.width -= n
        self.total -= t
        if self.width > 0:
            self.m2 -= v + n * self.width * (t / n - self.total / self.width) ** 2 / (n + self.width)
            self.m2 = max(self.m2, 0.0)
        else:
            self.m2 = 0.0
        while len(self.levels) > 1 and not self.levels[-1]:
            self.levels.pop()

    def _epsilon(self, n0: int, n1: int) -> float:
        m_recip = 1.0 / n0 + 1.0 / n1
        dd = math.log(2.0 * math.log(self.width) / self.p.delta)
        variance = self.m2 / self.width
        return math.sqrt(2.0 * m_recip * variance * dd) + 2.0 / 3.0 * dd * m_recip

    def _find_cut(self) -> tuple[int, int, float, float] | None:
        n0, s0 = 0, 0.0
        seen = 0
        count = sum(len(b) for b in self.levels)
        for level in range(len(self.levels) - 1, -1, -1):
            size = 2**level
            for total, _v in self.levels[level]:
                seen += 1
                if seen == count:  # the newest bucket: nothing left on the recent side
                    return None
                n0 += size
                s0 += total
                n1 = self.width - n0
                if n0 < self.p.min_window_length or n1 < self.p.min_window_length:
                    continue
                diff = (self.total - s0) / n1 - s0 / n0
                eps = self._epsilon(n0, n1)
                if abs(diff) > eps:
                    return n0, n1, diff, eps
        return None

    def _detect(self) -> Detection | None:
        reported: Detection | None = None
        while self.width > self.p.grace_period:
            cut = self._find_cut()
            if cut is None:
                break
            n0, n1, diff, eps = cut
            direction = "up" if diff > 0 else "down"
            big_enough = abs(diff) >= self.p.min_change
            if reported is None and big_enough and self.p.direction in (direction, "both"):
                details = {"old_window": n0, "recent_window": n1, "mean_difference": diff}
                reported = Detection(self.name, abs(diff), eps, direction, details)
            self._drop_oldest()
        return reported

    # --- state ----------------------------------------------------------------------------------------
    def variables(self) -> dict[str, Any]:
        return {
            "levels": [[list(b) for b in lvl] for lvl in self.levels],
            "width": self.width,
            "total": self.total,
            "m2": self.m2,
            "tick": self.tick,
        }

    def restore(self, variables: dict[str, Any]) -> None:
        self.levels = [[[float(t), float(v)] for t, v in lvl] for lvl in variables.get("levels", [[]])] or [[]]
        self.width = int(variables.get("width", 0))
        self.total = float(variables.get("total", 0.0))
        self.m2 = float(variables.get("m2", 0.0))
        self.tick = int(variables.get("tick", 0))
