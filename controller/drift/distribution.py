"""Distribution tests on windowed histograms against a reference histogram: PSI, KS and Wasserstein-1.

The functions work on bin counts (the agents report prompt-length histograms, never prompts) and, for KS
and Wasserstein, on raw samples as well. The detectors wrap them: each tests the sum of the most recent
windows that together hold at least ``min_count`` observations (and at least ``windows`` windows), so
quiet devices are tested on enough data and busy ones react within a few windows. A reference learned
from windows likewise needs ``reference_windows`` windows and ``min_count`` observations. After a reset a
detector learns a new reference, so a shift that has been reported (and acted on) does not raise the
same alarm again.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from controller.drift.base import Detection, Detector
from controller.drift.registry import register_detector

_PSI_EPS = 1e-4


def _proportions(counts: Sequence[float]) -> np.ndarray:
    arr = np.asarray(counts, dtype=float)
    total = arr.sum()
    if total <= 0:
        raise ValueError("a histogram with no observations has no distribution")
    return arr / total


def _same_length(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"histograms have different numbers of bins ({len(a)} vs {len(b)})")


def bin_centers(edges: Sequence[float], n_bins: int) -> np.ndarray:
    """Representative value of each bin. ``edges`` may have n+1 entries (closed bins), n (lower bounds,
    last bin open) or n-1 (boundaries, first and last bins open); none gives 0, 1, 2, ..."""
    e = np.asarray(edges, dtype=float)
    if len(e) == 0:
        return np.arange(n_bins, dtype=float)
    if len(e) == n_bins + 1:
        return (e[:-1] + e[1:]) / 2
    if len(e) == n_bins:
        width = e[-1] - e[-2] if n_bins > 1 else max(e[-1], 1.0)
        return np.append((e[:-1] + e[1:]) / 2, e[-1] + width / 2)
    if len(e) == n_bins - 1:
        width_lo = e[1] - e[0] if len(e) > 1 else max(e[0], 1.0)
        width_hi = e[-1] - e[-2] if len(e) > 1 else max(e[0], 1.0)
        inner = (e[:-1] + e[1:]) / 2
        return np.concatenate([[e[0] - width_lo / 2], inner, [e[-1] + width_hi / 2]])
    raise ValueError(f"{len(e)} edges do not fit a histogram of {n_bins} bins")


def psi(reference: Sequence[float], actual: Sequence[float], eps: float = _PSI_EPS) -> float:
    """Population stability index: sum((a - r) * ln(a / r)) over bins, proportions floored at ``eps``."""
    _same_length(reference, actual)
    r = np.maximum(_proportions(reference), eps)
    a = np.maximum(_proportions(actual), eps)
    return float(np.sum((a - r) * np.log(a / r)))


def ks_pvalue(d: float, n: float, m: float) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov p-value for statistic ``d`` and sample sizes n, m."""
    if n <= 0 or m <= 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return 1.0
    total = sum(2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return float(min(max(total, 0.0), 1.0))


def ks_binned(reference: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """KS statistic (largest gap between the two CDFs at the bin boundaries) and its p-value."""
    _same_length(reference, actual)
    d = float(np.max(np.abs(np.cumsum(_proportions(reference)) - np.cumsum(_proportions(actual)))))
    return d, ks_pvalue(d, float(np.sum(reference)), float(np.sum(actual)))


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value on raw samples."""
    x, y = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("KS needs two non-empty samples")
    points = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, points, side="right") / len(x)
    cdf_y = np.searchsorted(y, points, side="right") / len(y)
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    return d, ks_pvalue(d, len(x), len(y))


def wasserstein_binned(reference: Sequence[float], actual: Sequence[float], centers: Sequence[float]) -> float:
    """Wasserstein-1 (earth mover's) distance between two histograms whose mass sits at ``centers``."""
    _same_length(reference, actual)
    c = np.asarray(centers, dtype=float)
    if len(c) != len(reference):
        raise ValueError(f"{len(c)} bin centers for {len(reference)} bins")
    gap = np.abs(np.cumsum(_proportions(reference)) - np.cumsum(_proportions(actual)))[:-1]
    return float(np.sum(gap * np.diff(c)))


def wasserstein_samples(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 distance between two samples (the area between their empirical CDFs)."""
    x, y = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("Wasserstein needs two non-empty samples")
    points = np.sort(np.concatenate([x, y]))
    deltas = np.diff(points)
    cdf_x = np.searchsorted(x, points[:-1], side="right") / len(x)
    cdf_y = np.searchsorted(y, points[:-1], side="right") / len(y)
    return float(np.sum(np.abs(cdf_x - cdf_y) * deltas))


class HistogramTest(Detector):
    """Base of the distribution tests: sliding sum of recent histograms tested against a reference."""

    input_type = "histogram"

    def __init__(
        self,
        threshold: float,
        windows: int = 5,
        min_count: int = 200,
        reference_windows: int = 20,
        edges: Sequence[float] = (),
    ) -> None:
        if threshold <= 0 or windows < 1 or min_count < 1 or reference_windows < 1:
            raise ValueError(f"{self.name}: threshold > 0, windows >= 1, min_count >= 1 are required")
        self.threshold = float(threshold)
        self.windows = int(windows)
        self.min_count = int(min_count)
        self.reference_windows = int(reference_windows)
        self.edges = [float(e) for e in edges]
        self.reference: list[float] | None = None
        self.learning: list[float] = []
        self.learned = 0
        self.buffer: list[list[float]] = []

    def set_reference(self, counts: Sequence[float]) -> None:
        if float(np.sum(counts)) <= 0:
            raise ValueError("the reference histogram has no observations")
        self.reference = [float(c) for c in counts]
        self.learning, self.learned = [], 0

    def reset(self) -> None:
        self.reference = None
        self.learning, self.learned = [], 0
        self.buffer = []

    @abstractmethod
    def _test(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """(statistic, alarm, extra details)."""

    def update(self, value: Sequence[float]) -> Detection | None:
        counts = [float(c) for c in value]
        if sum(counts) <= 0:
            return None
        if self.reference is None:
            self.learning = [a + b for a, b in zip(self.learning, counts, strict=True)] if self.learning else counts
            self.learned += 1
            if self.learned >= self.reference_windows and sum(self.learning) >= self.min_count:
                self.set_reference(self.learning)
            return None
        _same_length(self.reference, counts)
        self.buffer.append(counts)
        # Drop the oldest windows while the rest still holds enough windows and observations.
        totals = [sum(h) for h in self.buffer]
        drop = 0
        while len(self.buffer) - drop > self.windows and sum(totals[drop + 1 :]) >= self.min_count:
            drop += 1
        del self.buffer[:drop]
        del self.buffer[: -max(self.windows, self.min_count)]  # a hard bound on the state
        recent = np.sum(np.asarray(self.buffer), axis=0)
        if recent.sum() < self.min_count:
            return None
        reference = np.asarray(self.reference)
        stat, alarm, extra = self._test(reference, recent)
        if not alarm:
            return None
        details = {"recent_counts": recent.tolist(), "reference_counts": list(self.reference), **extra}
        if self.edges:
            details["edges"] = self.edges
        return Detection(self.name, stat, self.threshold, "shift", details)

    def params(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "windows": self.windows,
            "min_count": self.min_count,
            "reference_windows": self.reference_windows,
            "edges": self.edges,
        }

    def _variables(self) -> dict[str, Any]:
        return {"reference": self.reference, "learning": self.learning, "learned": self.learned, "buffer": self.buffer}

    def _restore(self, variables: dict[str, Any]) -> None:
        ref = variables.get("reference")
        self.reference = [float(c) for c in ref] if ref is not None else None
        self.learning = [float(c) for c in variables.get("learning", [])]
        self.learned = int(variables.get("learned", 0))
        self.buffer = [[float(c) for c in h] for h in variables.get("buffer", [])]


@register_detector("psi")
class PsiTest(HistogramTest):
    """Alarm when PSI(reference, recent) > threshold (0.1 small, 0.25 large shift by the usual rule)."""

    def __init__(self, threshold: float = 0.25, **kwargs: Any) -> None:
        super().__init__(threshold, **kwargs)

    def _test(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        value = psi(reference, recent)
        return value, value > self.threshold, {}


@register_detector("ks")
class KsTest(HistogramTest):
    """Alarm when the binned KS statistic exceeds ``threshold`` and its p-value is below ``alpha``."""

    def __init__(self, threshold: float = 0.15, alpha: float = 0.001, **kwargs: Any) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"ks alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        super().__init__(threshold, **kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}

    def _test(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        d, p = ks_binned(reference, recent)
        return d, d > self.threshold and p < self.alpha, {"p_value": p, "alpha": self.alpha}


@register_detector("wasserstein")
class WassersteinTest(HistogramTest):
    """Alarm when W1(reference, recent), in units of the reference's standard deviation, > threshold."""

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(threshold, **kwargs)

    def _test(self, reference: np.ndarray, recent: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        centers = bin_centers(self.edges, len(reference))
        w = wasserstein_binned(reference, recent, centers)
        p = _proportions(reference)
        mean = float(np.sum(p * centers))
        scale = math.sqrt(float(np.sum(p * (centers - mean) ** 2)))
        if scale <= 0:
            scale = float(np.mean(np.diff(centers))) if len(centers) > 1 else 1.0
        value = w / scale
        return value, value > self.threshold, {"wasserstein": w, "reference_std": scale}
