from __future__ import annotations

import json
import math

import numpy as np
import pytest

from controller.drift.distribution import (
    bin_centers,
    ks_2samp,
    ks_binned,
    ks_pvalue,
    psi,
    wasserstein_binned,
    wasserstein_samples,
)
from controller.drift.registry import create_detector, detector_from_state

EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512]


def hist(rng: np.random.Generator, median: float, n: int = 100) -> list[int]:
    lengths = rng.lognormal(np.log(median), 0.4, n).clip(0, 511)
    return np.histogram(lengths, bins=EDGES)[0].tolist()


def test_psi_known_value_and_symmetry_of_zero() -> None:
    expected = 0.25 * math.log(2) + 0.25 * math.log(0.75 / 0.5)
    assert psi([25, 75], [50, 50]) == pytest.approx(expected)
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([10, 0], [5, 5]) > 1.0  # an empty reference bin is floored, not a division by zero


def test_ks_known_values() -> None:
    assert ks_binned([1, 1, 0, 0], [0, 0, 1, 1])[0] == pytest.approx(1.0)
    assert ks_binned([2, 1, 1], [1, 1, 2])[0] == pytest.approx(0.25)
    d, p = ks_2samp([1, 2, 3, 4], [3, 4, 5, 6])
    assert d == pytest.approx(0.5) and 0 < p <= 1
    # Kolmogorov distribution: Q(1.0) = 0.2700, Q(1.36) = 0.0494 (large samples, lambda = sqrt(n/2) * d)
    assert ks_pvalue(1.0 / 100, 20000, 20000) == pytest.approx(0.2700, abs=0.003)
    assert ks_pvalue(1.36 / 100, 20000, 20000) == pytest.approx(0.0494, abs=0.002)
    assert ks_pvalue(0.001, 10, 10) == 1.0


def test_wasserstein_known_values() -> None:
    assert wasserstein_samples([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert wasserstein_samples([0, 1], [0, 3]) == pytest.approx(1.0)
    assert wasserstein_binned([1, 0, 0], [0, 0, 1], [5, 15, 25]) == pytest.approx(20.0)


def test_binned_tests_equal_the_sample_tests_on_expanded_samples() -> None:
    rng = np.random.default_rng(4)
    a, b = hist(rng, 20, 300), hist(rng, 26, 200)
    centers = bin_centers(EDGES, len(a))
    xa, xb = np.repeat(centers, a), np.repeat(centers, b)
    assert wasserstein_binned(a, b, centers) == pytest.approx(wasserstein_samples(xa, xb))
    assert ks_binned(a, b)[0] == pytest.approx(ks_2samp(xa, xb)[0])


def test_bin_centers_for_each_edge_convention() -> None:
    assert bin_centers([0, 10, 20], 2).tolist() == [5, 15]  # n + 1 edges
    assert bin_centers([0, 10, 20], 3).tolist() == [5, 15, 25]  # lower bounds, last bin open
    assert bin_centers([10, 20], 3).tolist() == [5, 15, 25]  # boundaries, both ends open
    assert bin_centers([], 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="do not fit"):
        bin_centers([1, 2, 3, 4, 5, 6], 2)


@pytest.mark.parametrize("name", ["psi", "ks", "wasserstein"])
def test_histogram_tests_detect_a_shift_fast_and_stay_quiet_when_stationary(name: str) -> None:
    rng = np.random.default_rng(8)
    det = create_detector(name, edges=EDGES)
    det.set_reference([sum(c) for c in zip(*(hist(rng, 20) for _ in range(20)), strict=True)])
    assert sum(det.update(hist(rng, 20)) is not None for _ in range(2000)) == 0
    found = [det.update(hist(rng, 28)) for _ in range(5)]
    assert any(found)
    found = next(f for f in found if f)
    assert found.statistic > found.threshold and found.details["recent_counts"]


def test_histogram_test_learns_its_reference_and_relearns_after_reset() -> None:
    rng = np.random.default_rng(2)
    det = create_detector("psi", reference_windows=3, windows=2, min_count=100)
    for _ in range(3):
        assert det.update(hist(rng, 20)) is None
    assert det.reference is not None  # type: ignore[attr-defined]
    assert any(det.update(hist(rng, 40)) for _ in range(3))
    det.reset()
    assert det.reference is None  # type: ignore[attr-defined]
    # the new regime becomes the reference: no repeated alarm
    assert not any(det.update(hist(rng, 40)) for _ in range(50))


@pytest.mark.parametrize("name", ["psi", "ks"])
def test_quiet_devices_are_tested_on_enough_prompts(name: str) -> None:
    rng = np.random.default_rng(9)
    det = create_detector(name, windows=5, min_count=200, reference_windows=20)
    quiet = [hist(rng, 20, n=8) for _ in range(30)]  # 8 prompts per window
    assert not any(det.update(h) for h in quiet[:20]) and det.reference is None  # type: ignore[attr-defined]
    assert not any(det.update(h) for h in quiet[20:]) and det.reference is not None  # type: ignore[attr-defined]
    assert sum(det.update(hist(rng, 20, n=8)) is not None for _ in range(1000)) == 0
    assert 200 <= sum(map(sum, det.buffer)) < 216 and len(det.buffer) >= 25  # type: ignore[attr-defined]
    shifted = [det.update(hist(rng, 32, n=8)) for _ in range(40)]
    assert any(shifted)


def test_histogram_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    stream = [hist(rng, 20) for _ in range(30)] + [hist(rng, 30) for _ in range(10)]
    straight = create_detector("ks", reference_windows=10)
    expected = [bool(straight.update(h)) for h in stream]
    first = create_detector("ks", reference_windows=10)
    got = [bool(first.update(h)) for h in stream[:25]]
    again = detector_from_state(json.loads(json.dumps(first.to_state())))
    got += [bool(again.update(h)) for h in stream[25:]]
    assert got == expected and any(expected)


def test_mismatched_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="different numbers of bins"):
        psi([1, 2, 3], [1, 2])
