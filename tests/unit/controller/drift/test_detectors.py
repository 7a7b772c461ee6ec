from __future__ import annotations

import json

import numpy as np
import pytest

from controller.drift.registry import UnknownDetector, create_detector, detector_from_state, detector_names
from shared.errors import ConfigError

SHIFT = 200


def step_stream(seed: int, shift: float, n_after: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, SHIFT), rng.normal(shift, 1, n_after)]


def first_alarm(det, xs) -> int | None:  # type: ignore[no-untyped-def]
    for i, x in enumerate(xs):
        if det.update(x) is not None:
            return i
    return None


def test_registry_lists_builtin_detectors_and_refuses_unknown_names() -> None:
    assert detector_names() == ["adwin", "ks", "mean_shift", "page_hinkley", "psi", "wasserstein"]
    with pytest.raises(UnknownDetector, match="known: adwin, ks"):
        create_detector("cusum")
    with pytest.raises(ConfigError, match="page_hinkley"):
        create_detector("page_hinkley", lambda_=3)


@pytest.mark.parametrize(("name", "max_delay"), [("page_hinkley", 8), ("adwin", 10)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scalar_detectors_find_a_3_sigma_step_up_within_the_stated_delay(name: str, max_delay: int, seed: int) -> None:
    det = create_detector(name, direction="up")
    alarm = first_alarm(det, step_stream(seed, 3.0))
    assert alarm is not None and SHIFT <= alarm < SHIFT + max_delay


@pytest.mark.parametrize("name", ["page_hinkley", "adwin"])
def test_direction_is_respected(name: str) -> None:
    drop = step_stream(3, -3.0)
    assert first_alarm(create_detector(name, direction="up"), drop) is None
    down = create_detector(name, direction="down")
    alarm = first_alarm(down, drop)
    assert alarm is not None and alarm >= SHIFT
    both = create_detector(name, direction="both")
    found = None
    for x in drop:
        found = both.update(x) or found
        if found:
            break
    assert found is not None and found.direction == "down"


@pytest.mark.parametrize("name", ["page_hinkley", "adwin"])
def test_no_alarm_on_a_long_stationary_stream_at_default_settings(name: str) -> None:
    det = create_detector(name)
    xs = np.random.default_rng(11).normal(0, 1, 5000)
    assert sum(det.update(x) is not None for x in xs) == 0


@pytest.mark.parametrize("name", ["page_hinkley", "adwin"])
def test_state_round_trip_mid_stream_gives_identical_results(name: str) -> None:
    xs = step_stream(5, 2.0, n_after=200)
    straight = create_detector(name, direction="both")
    expected = [straight.update(x) for x in xs]
    first = create_detector(name, direction="both")
    got = [first.update(x) for x in xs[:150]]
    restored = detector_from_state(json.loads(json.dumps(first.to_state())))
    got += [restored.update(x) for x in xs[150:]]
    assert [(d.statistic, d.direction) if d else None for d in got] == [
        (d.statistic, d.direction) if d else None for d in expected
    ]
    assert any(expected)
    assert restored.to_state() == straight.to_state()


def test_page_hinkley_statistic_is_the_cumulative_excess() -> None:
    ph = create_detector("page_hinkley", delta=0.0, threshold=100.0, min_instances=1)
    for x in (0.0, 0.0, 3.0):
        ph.update(x)
    # running means 0, 0, 1 -> deviations 0, 0, 2: m = 2, min 0
    assert ph.statistic_up == pytest.approx(2.0)  # type: ignore[attr-defined]


def test_reset_forgets_the_data_but_keeps_parameters() -> None:
    det = create_detector("adwin", delta=0.01)
    for x in range(50):
        det.update(float(x % 3))
    det.reset()
    state = det.to_state()
    assert state["vars"]["width"] == 0 and state["params"]["delta"] == 0.01


def test_adwin_window_shrinks_after_a_change() -> None:
    det = create_detector("adwin")
    for x in step_stream(2, 4.0, n_after=100):
        det.update(x)
    assert det.width < 150  # type: ignore[attr-defined]
    assert det.mean == pytest.approx(4.0, abs=0.5)  # type: ignore[attr-defined]
