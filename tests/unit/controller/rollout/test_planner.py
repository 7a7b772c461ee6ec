from __future__ import annotations

import pytest

from controller.rollout.planner import next_wave_with_targets, order_devices, plan_targets, select_devices, wave_bounds
from controller.store.tables import Device
from shared.errors import NotFound


def _devices(spec: dict[str, str]) -> list[Device]:
    return [Device(agent_id=a, profile=p) for a, p in spec.items()]


def test_wave_bounds_are_cumulative_ceilings() -> None:
    assert wave_bounds(10, [10, 50, 100]) == [1, 5, 10]
    assert wave_bounds(3, [10, 50, 100]) == [1, 2, 3]
    assert wave_bounds(1, [10, 50, 100]) == [1, 1, 1]
    assert wave_bounds(7, [33, 100]) == [3, 7]


def test_order_is_deterministic_and_interleaves_profiles() -> None:
    devices = _devices({f"a{i}": ("cpu-int4" if i < 6 else "cpu-fp32") for i in range(9)})
    ordered = [d.agent_id for d in order_devices(devices)]
    assert ordered == [d.agent_id for d in order_devices(list(reversed(devices)))]
    profiles = [next(d.profile for d in devices if d.agent_id == a) for a in ordered]
    assert profiles[:6] == ["cpu-fp32", "cpu-int4"] * 3  # round-robin while both have devices
    assert sorted(ordered) == sorted(d.agent_id for d in devices)


def test_plan_skips_profiles_without_variant_and_assigns_waves() -> None:
    devices = _devices({"a1": "cpu-int4", "a2": "cpu-int4", "a3": "cpu-fp32", "a4": "cuda-fp16", "a5": ""})
    planned = plan_targets(devices, {"cpu-int4", "cpu-fp32"}, [10, 50, 100], "m:1")
    by_id = {p.agent_id: p for p in planned}
    assert by_id["a4"].state == "skipped" and "cuda-fp16" in by_id["a4"].message
    assert "built for: cpu-fp32, cpu-int4" in by_id["a4"].message
    assert by_id["a5"].state == "skipped" and "no profile" in by_id["a5"].message
    waves = sorted(p.wave for p in planned if p.state == "pending")
    assert waves == [0, 1, 2]  # 3 eligible devices: ceil(0.3)=1, ceil(1.5)=2, 3


def test_select_devices_filters_and_rejects_unknown_ids() -> None:
    devices = _devices({"a1": "cpu-int4", "a2": "cpu-fp32"})
    assert [d.agent_id for d in select_devices(devices, ["cpu-fp32"], [])] == ["a2"]
    assert [d.agent_id for d in select_devices(devices, [], ["a1"])] == ["a1"]
    assert select_devices(devices, ["cpu-int4"], ["a2"]) == []
    with pytest.raises(NotFound, match="zz"):
        select_devices(devices, [], ["a1", "zz"])


def test_next_wave_skips_empty_waves() -> None:
    assert next_wave_with_targets(0, {0, 2}, 3) == 2
    assert next_wave_with_targets(2, {0, 2}, 3) is None
