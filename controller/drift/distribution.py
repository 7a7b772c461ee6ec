"""Distribution tests on histograms against a reference histogram: PSI, KS and Wasserstein-1.

The functions work on bin counts (the agents report prompt-length histograms, never prompts) and, for KS
and Wasserstein, on raw samples as well. The detectors that use them live in
``controller/drift/detectors/`` (``histogram.py`` and one module per test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_PSI_EPS = 1e-4


def proportions(counts: Sequence[float]) -> np.ndarray:
    arr = np.asarray(counts, dtype=float)
    total = arr.sum()
    if total <= 0:
        raise ValueError("a histogram with no observations has no distribution")
    return arr / total


def same_length(a: Sequence[float], b: Sequence[float]) -> None:
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
    same_length(reference, actual)
    r = np.maximum(proportions(reference), eps)
    a = np.maximum(proportions(actual), eps)
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
    same_length(reference, actual)
    d = float(np.max(np.abs(np.cumsum(proportions(reference)) - np.cumsum(proportions(actual)))))
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
    same_length(reference, actual)
    c = np.asarray(centers, dtype=float)
    if len(c) != len(reference):
        raise ValueError(f"{len(c)} bin centers for {len(reference)} bins")
    gap = np.abs(np.cumsum(proportions(reference)) - np.cumsum(proportions(actual)))[:-1]
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
