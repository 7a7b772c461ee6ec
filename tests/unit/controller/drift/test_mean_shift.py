"""The mean-shift test on drift signals: alarms in the bad direction only, waits for enough requests, ignores
shifts too small to matter, and learns a new reference after a reset."""

from __future__ import annotations

import numpy as np

from controller.drift.detectors.mean_shift import MeanShift


def window(rng: np.random.Generator, mean: float, n: int = 25, sd: float = 1.0) -> dict[str, float]:
    xs = rng.normal(mean, sd, n)
    return {"n": n, "sum": float(xs.sum()), "sum_sq": float((xs**2).sum())}


def detector(direction: str = "down", **kw: float) -> MeanShift:
    det = MeanShift(direction=direction, **kw)  # type: ignore[arg-type]
    det.set_reference({"mean": 0.0, "std": 1.0, "n": 300})
    return det


def first_alarm(det: MeanShift, windows: list[dict[str, float]]) -> int | None:
    for i, w in enumerate(windows):
        if det.update(w) is not None:
            return i
    return None


def test_a_drop_of_one_std_alarms_within_a_few_windows_and_never_on_stationary_data() -> None:
    rng = np.random.default_rng(0)
    det = detector()
    assert first_alarm(det, [window(rng, 0.0) for _ in range(2000)]) is None  # 50k requests, no alarm
    found = first_alarm(det, [window(rng, -1.0) for _ in range(20)])
    assert found is not None and found <= 5


def test_only_the_bad_direction_counts_and_tiny_shifts_are_ignored() -> None:
    rng = np.random.default_rng(1)
    assert first_alarm(detector("down"), [window(rng, +2.0) for _ in range(40)]) is None
    assert first_alarm(detector("up"), [window(rng, +2.0) for _ in range(40)]) is not None
    # a sure but tiny shift (0.1 std over 100k requests) is below min_effect 0.2
    tiny = detector("down", min_count=20_000)
    assert first_alarm(tiny, [window(rng, -0.1, n=5000) for _ in range(20)]) is None


def test_waits_for_min_count_requests_and_reports_its_evidence() -> None:
    rng = np.random.default_rng(2)
    det = detector(min_count=100)
    assert det.update(window(rng, -3.0, n=50)) is None  # 50 < 100 requests
    found = det.update(window(rng, -3.0, n=50))
    assert found is not None and found.direction == "down" and found.statistic > 5
    assert found.details["recent"]["n"] == 100 and found.details["reference"]["n"] == 300
    assert found.details["effect_std"] < -2


def test_after_a_reset_it_learns_the_new_level_and_stays_quiet() -> None:
    rng = np.random.default_rng(3)
    det = detector(learn_count=200)
    assert first_alarm(det, [window(rng, -2.0) for _ in range(10)]) is not None
    det.reset()
    assert det.reference is None
    assert first_alarm(det, [window(rng, -2.0) for _ in range(400)]) is None
    assert det.reference is not None and abs(det.reference["mean"] + 2.0) < 0.3
