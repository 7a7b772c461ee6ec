"""The detector seam: every registered detector builds from validated config, keeps its state, and is fed by
the watch through its interface alone (a detector registered here is used without any change elsewhere)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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
from controller.drift.config import DriftConfig
from controller.drift.registry import (
    create_detector,
    detector_class,
    detector_from_state,
    detector_names,
    register_detector,
    unregister_detector,
)
from controller.drift.watch import TARGETS, Watch
from shared.errors import ConfigError
from shared.signals import SIGNAL_NAMES, SignalSummary, summarize
from tests.unit.controller.drift.streams import EDGES, series

T0 = 1_800_000_000.0
ALL_OFF = {name: 0 for name in detector_names()}


# --- detectors defined here, registered by fixtures -------------------------------------------------------
class ProbeParams(DetectorParams):
    direction: Direction = "both"


class Probe(Detector):
    """Records every input and reference it gets; never alarms."""

    Params = ProbeParams
    enabled_by_default = True

    def __init__(self, params: DetectorParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.seen: list[Any] = []
        self.references: list[Any] = []

    @classmethod
    def params_for(cls, settings: DetectorSettings, shared: SharedSettings, target: Target) -> ProbeParams:
        return ProbeParams(direction=target.direction)

    def update(self, value: Any) -> Detection | None:
        self.seen.append(value)
        return None

    def reset(self) -> None:
        self.seen = []

    def set_reference(self, reference: Any) -> None:
        if not self.needs_reference:
            super().set_reference(reference)
        self.references.append(reference)

    def variables(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def restore(self, variables: dict[str, Any]) -> None:
        self.seen = list(variables.get("seen", []))


class ScalarProbe(Probe):
    input_type = InputType.SCALAR


class DistributionProbe(Probe):
    input_type = InputType.DISTRIBUTION
    needs_reference = True


class SpikeParams(DetectorParams):
    limit: float = Field(3.0, gt=0)
    direction: Direction = "both"


class SpikeSettings(DetectorSettings):
    spike_limit: float = Field(2.5, gt=0, description="a standardized value this far out is a drift")


class Spike(Detector):
    """A new detector as a contributor would write it: alarms on one standardized value beyond a limit."""

    input_type = InputType.SCALAR
    Params = SpikeParams
    Settings = SpikeSettings
    p: SpikeParams

    def __init__(self, params: DetectorParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.n = 0

    @classmethod
    def params_for(cls, settings: SpikeSettings, shared: SharedSettings, target: Target) -> SpikeParams:
        return SpikeParams(limit=settings.spike_limit, direction=target.direction)

    def update(self, value: float) -> Detection | None:
        self.n += 1
        up = value >= self.p.limit and self.p.direction in ("up", "both")
        down = value <= -self.p.limit and self.p.direction in ("down", "both")
        if up or down:
            return Detection(self.name, abs(value), self.p.limit, "up" if up else "down", {"n": self.n})
        return None

    def reset(self) -> None:
        self.n = 0

    def variables(self) -> dict[str, Any]:
        return {"n": self.n}

    def restore(self, variables: dict[str, Any]) -> None:
        self.n = int(variables.get("n", 0))


@pytest.fixture
def probes() -> Iterator[tuple[type[Probe], type[Probe]]]:
    scalar = register_detector("probe_scalar")(ScalarProbe)
    dist = register_detector("probe_distribution")(DistributionProbe)
    yield scalar, dist
    unregister_detector("probe_scalar")
    unregister_detector("probe_distribution")


@pytest.fixture
def spike() -> Iterator[type[Spike]]:
    yield register_detector("spike")(Spike)
    unregister_detector("spike")


# --- inputs per input type, so a new detector is covered without touching these tests ----------------------
def hist(rng: np.random.Generator, median: float) -> list[int]:
    lengths = rng.lognormal(np.log(median), 0.4, 100).clip(0, EDGES[-1] - 1)
    return np.histogram(lengths, bins=EDGES)[0].tolist()


def scalar_inputs(rng: np.random.Generator) -> list[Any]:
    return [float(x) for x in np.r_[rng.normal(0, 1, 60), rng.normal(3, 1, 40)]]


def distribution_inputs(rng: np.random.Generator) -> list[Any]:
    return [hist(rng, 20) for _ in range(40)] + [hist(rng, 32) for _ in range(20)]


def summary_inputs(rng: np.random.Generator) -> list[Any]:
    out = []
    for mean in [0.0] * 30 + [1.0] * 20:
        xs = rng.normal(mean, 1.0, 25)
        out.append({"n": 25, "sum": float(xs.sum()), "sum_sq": float((xs**2).sum())})
    return out


def window_signals(rng: np.random.Generator) -> dict[str, SignalSummary]:
    """Every drift signal of a window of 50 requests."""
    return summarize({name: rng.uniform(-0.5, 0.5, 50).tolist() for name in SIGNAL_NAMES})


INPUTS = {
    InputType.SCALAR: scalar_inputs,
    InputType.DISTRIBUTION: distribution_inputs,
    InputType.SUMMARY: summary_inputs,
}
REFERENCES = {
    InputType.SCALAR: {"mean": 0.0, "std": 1.0, "n": 20},
    InputType.DISTRIBUTION: [100] * (len(EDGES) - 1),
    InputType.SUMMARY: {"mean": 0.0, "std": 1.0, "n": 200},
}


def targets_for(cls: type[Detector]) -> list[Target]:
    return [t for t in TARGETS if t.input_type is cls.input_type]


# --- every registered detector ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", detector_names())
def test_each_registered_detector_builds_from_validated_config(name: str) -> None:
    cls = detector_class(name)
    config = DriftConfig.from_dict({**ALL_OFF, name: 1, "min_instances": 7})
    assert config.enabled(name) and not any(config.enabled(n) for n in detector_names() if n != name)
    assert isinstance(config.settings_for(name), cls.Settings)
    assert targets_for(cls), f"no watched target has {name}'s input type {cls.input_type}"
    for target in targets_for(cls):
        det = cls.build(config.settings_for(name), config, target)
        assert type(det) is cls and isinstance(det.p, cls.Params)
        assert det.to_state()["params"] == cls.Params.model_validate(det.params()).model_dump(mode="json")
    for key, spec in cls.Settings.model_fields.items():  # every key the profile may give is optional and documented
        assert not spec.is_required() and spec.description, f"{name}: setting {key}"
        assert key in DriftConfig.setting_names()


@pytest.mark.parametrize("name", detector_names())
def test_each_registered_detector_is_used_by_the_watch_on_its_input(name: str) -> None:
    cls = detector_class(name)
    watch = Watch(DriftConfig.from_dict({**ALL_OFF, name: 1, "baseline_windows": 3, "input_min_count": 100}))
    rng = np.random.default_rng(0)
    for w in series(rng, 8, T0):
        watch.feed(w, window_signals(rng))
    assert set(watch.detectors) == {f"{t.metric}:{name}" for t in targets_for(cls)}


@pytest.mark.parametrize("name", detector_names())
def test_state_round_trip_mid_stream_gives_identical_results(name: str) -> None:
    cls = detector_class(name)
    inputs = INPUTS[cls.input_type](np.random.default_rng(5))

    def fresh() -> Detector:
        det = create_detector(name)
        if cls.needs_reference:
            det.set_reference(REFERENCES[cls.input_type])
        return det

    def outcome(found: Detection | None) -> Any:
        return None if found is None else (found.detector, found.statistic, found.direction)

    straight = fresh()
    expected = [outcome(straight.update(x)) for x in inputs]
    first = fresh()
    half = len(inputs) // 2
    got = [outcome(first.update(x)) for x in inputs[:half]]
    again = detector_from_state(json.loads(json.dumps(first.to_state())))
    assert type(again) is cls and again.to_state() == first.to_state()
    got += [outcome(again.update(x)) for x in inputs[half:]]
    assert got == expected
    assert again.to_state() == straight.to_state()
    moved = again.reconfigured(again.p)  # new parameters, same running state
    assert moved.to_state() == again.to_state()


@pytest.mark.parametrize("name", detector_names())
def test_reference_is_declared_by_a_capability(name: str) -> None:
    det = create_detector(name)
    if not type(det).needs_reference:
        with pytest.raises(TypeError, match=f"'{name}' takes no reference"):
            det.set_reference(REFERENCES[type(det).input_type])


# --- bad parameters name the field ------------------------------------------------------------------------
@pytest.mark.parametrize("name", detector_names())
def test_an_unknown_parameter_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_detector(name, lambda_=3)
    assert (info.value.source, info.value.field) == (f"detector '{name}'", "lambda_")
    assert "unknown parameter" in info.value.reason


@pytest.mark.parametrize(
    ("name", "params", "field", "reason"),
    [
        ("page_hinkley", {"threshold": "high"}, "threshold", "expected a number, got 'high'"),
        ("page_hinkley", {"threshold": -1}, "threshold", "must be positive, got -1"),
        ("page_hinkley", {"direction": "sideways"}, "direction", "'up', 'down' or 'both'"),
        ("adwin", {"delta": 1.5}, "delta", "must be below 1, got 1.5"),
        ("adwin", {"clock": 0.5}, "clock", "expected a whole number"),
        ("psi", {"threshold": -0.1}, "threshold", "must be positive, got -0.1"),
        ("ks", {"alpha": 0}, "alpha", "must be positive, got 0"),
        ("wasserstein", {"edges": "0,8,16"}, "edges", "valid list"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it(name: str, params: dict, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_detector(name, **params)
    assert info.value.field == field and reason in info.value.reason, info.value


@pytest.mark.parametrize(
    ("drift", "field", "reason"),
    [
        ({"psi_threshold": "high"}, "drift.psi_threshold", "expected a number, got 'high'"),
        ({"ks_threshold": -0.1}, "drift.ks_threshold", "must be positive, got -0.1"),
        ({"latency_adwin_delta": 2}, "drift.latency_adwin_delta", "must be below 1, got 2"),
        ({"latency_ph_threshold": 1}, "drift.latency_ph_threshold", "1.0 is too low"),
        ({"psi": 2}, "drift.psi", "expected 1 (on) or 0 (off), got 2.0"),
        ({"adwin": "yes"}, "drift.adwin", "expected a number, got 'yes'"),
        ({"input_windows": 2.5}, "drift.input_windows", "expected a whole number, got 2.5"),
        ({"cooldown_s": -5}, "drift.cooldown_s", "must be at least 0, got -5"),
        ({"psi_treshold": 0.2}, "drift.psi_treshold", "unknown drift setting; known: "),
    ],
)
def test_bad_profile_settings_name_the_key(drift: dict, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        DriftConfig.from_dict(drift, "profile 'edge'")
    assert (info.value.source, info.value.field) == ("profile 'edge'", field)
    assert reason in info.value.reason, info.value


def test_every_key_has_one_owner() -> None:
    owners = DriftConfig.setting_owners()
    assert {k for k, v in owners.items() if v == "switch"} == set(detector_names())
    assert owners["psi_threshold"] == "psi" and owners["latency_ph_threshold"] == "page_hinkley"
    assert owners["baseline_windows"] == owners["cooldown_s"] == ""
    assert DriftConfig().get("ks_alpha") == 0.001 and DriftConfig().get("page_hinkley") == 1


# --- the watch routes by input type and uses what is registered ----------------------------------------------
def test_watch_routes_scalars_and_histograms_by_input_type(probes: tuple[type[Probe], type[Probe]]) -> None:
    windows = series(np.random.default_rng(1), 6, T0)
    config = DriftConfig.from_dict({"page_hinkley": 0, "psi": 0, "baseline_windows": 3, "input_min_count": 100})
    watch = Watch(config)
    for w in windows:
        assert watch.feed(w) == []
    scalar_ids = {f"{t.metric}:probe_scalar" for t in TARGETS if t.input_type is InputType.SCALAR}
    assert set(watch.detectors) == scalar_ids | {"prompt_len_hist:probe_distribution"}
    for det_id in scalar_ids:
        det = watch.detectors[det_id]
        assert isinstance(det, ScalarProbe) and len(det.seen) == 3 and det.references == []
        assert all(isinstance(x, float) and abs(x) <= config.z_clip for x in det.seen)
    latency = watch.detectors["latency_p95_ms:probe_scalar"]
    assert latency.p == ProbeParams(direction="up") and watch.detectors["format_validity:probe_scalar"].params() == {
        "direction": "down"
    }
    dist = watch.detectors["prompt_len_hist:probe_distribution"]
    assert isinstance(dist, DistributionProbe)
    assert dist.seen == [json.loads(w.prompt_len_hist_json) for w in windows[3:]]  # bin counts, after the baseline
    assert dist.references == [watch.baseline["prompt_len_hist"]]


def test_a_detector_registered_elsewhere_is_configured_and_used_by_the_watch(spike: type[Spike]) -> None:
    with pytest.raises(ConfigError, match="spike_limit"):
        DriftConfig.from_dict({"spike_limit": -1})
    config = DriftConfig.from_dict({**ALL_OFF, "spike": 1, "spike_limit": 2.0, "baseline_windows": 10})
    assert config.get("spike_limit") == 2.0 and config.enabled("spike")
    rng = np.random.default_rng(2)
    watch = Watch(config)
    findings = [f for w in series(rng, 15, T0) + series(rng, 3, T0 + 900, latency=90.0) for f in watch.feed(w)]
    assert [(f.kind, f.metric, f.detection.detector, f.detection.direction) for f in findings][:1] == [
        ("latency", "latency_p95_ms", "spike", "up")
    ]
    assert findings[0].evidence["params"] == {"limit": 2.0, "direction": "up"}
    # its state is persisted and restored like any other's
    again = Watch.from_state(json.loads(json.dumps(watch.to_state())), config, watch.baseline)
    assert again.to_state() == watch.to_state()


def test_spike_keys_are_unknown_once_it_is_unregistered() -> None:
    with pytest.raises(ConfigError, match=r"drift\.spike_limit.*unknown drift setting"):
        DriftConfig.from_dict({"spike_limit": 2.0})


def test_state_of_a_detector_no_longer_registered_is_dropped(spike: type[Spike]) -> None:
    config = DriftConfig.from_dict({"spike": 1, "baseline_windows": 3})
    watch = Watch(config)
    for w in series(np.random.default_rng(3), 5, T0):
        watch.feed(w)
    state = json.loads(json.dumps(watch.to_state()))
    assert "latency_p95_ms:spike" in state["detectors"]
    unregister_detector("spike")
    restored = Watch.from_state(state, DriftConfig(), watch.baseline)
    assert "latency_p95_ms:spike" not in restored.detectors and "latency_p95_ms:page_hinkley" in restored.detectors


# --- no import cycle: the registry and the interface know no detector ----------------------------------------
@pytest.mark.parametrize("module", ["base", "registry"])
def test_registry_and_interface_import_no_detector(module: str) -> None:
    import controller.drift

    tree = ast.parse((Path(controller.drift.__file__).parent / f"{module}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    drift = {m for m in imported if m and m.startswith("controller.drift")}
    assert drift <= {"controller.drift.base"}, drift
