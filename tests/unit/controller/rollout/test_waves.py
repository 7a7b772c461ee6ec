"""Rollouts end to end at the domain level: waves, gates, failure threshold, approval, timeouts, restart."""

from __future__ import annotations

import pytest

from controller.rollout import RolloutSpec, create_rollout, desired_for, get_rollout, resume, tick
from controller.store.db import Store

from .fleet import Fleet, desired_ref

T0 = 1_000_000.0
GATE = "ttft_p95_ms<=200,tokens_per_s>=20,error_rate<=1%"


def _states(store: Store, rid: str) -> dict[str, str]:
    return {t.agent_id: t.state for t in get_rollout(store, rid).targets}


def _wave_members(store: Store, rid: str, wave: int) -> list[str]:
    return [t.agent_id for t in get_rollout(store, rid).targets if t.wave == wave and t.state != "skipped"]


@pytest.fixture
def fleet(store: Store) -> Fleet:
    f = Fleet(store)
    f.model("m", "1", ["cpu-int4", "cpu-fp32"])
    f.model("m", "2", ["cpu-int4", "cpu-fp32"])
    for i in range(6):
        f.device(f"a{i}", "cpu-int4" if i < 4 else "cpu-fp32", installed="m:1")
    f.device("g0", "cuda-fp16", installed="m:1")  # no variant for this profile
    return f


def test_waves_advance_as_devices_install_and_gates_hold(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(
        store, RolloutSpec("m", "2", waves=[20, 50, 100], gate=GATE, soak_s=60, max_failure="10%"), now=T0
    )
    info = get_rollout(store, rid)
    assert info.state == "ACTIVE" and info.current_wave == 0
    wave0, wave1 = _wave_members(store, rid, 0), _wave_members(store, rid, 1)
    assert len(wave0) == 2 and len(wave1) == 1 and len(_wave_members(store, rid, 2)) == 3  # ceil 1.2, 3, 6
    # wave 0 covers both profiles; later waves get nothing yet (None: keep what is installed)
    assert {desired_ref(desired_for(store, a, now=T0)) for a in wave0} == {"m:2@cpu-int4", "m:2@cpu-fp32"}
    assert desired_for(store, wave1[0], now=T0) is None

    assert tick(store, now=T0 + 1) == []  # nobody reported yet
    assert "0 healthy, 0 failed, 2 installing" in get_rollout(store, rid).message
    for agent in wave0:
        fleet.converge(agent, now=T0 + 5)
    assert all(_states(store, rid)[a] == "healthy" for a in wave0)
    tick(store, now=T0 + 10)  # wave installed: the soak starts
    assert "soaking for 60 s" in get_rollout(store, rid).message
    tick(store, now=T0 + 80)  # soak over, no telemetry yet: keep waiting
    info = get_rollout(store, rid)
    assert info.current_wave == 0 and "waiting for telemetry" in info.message
    fleet.telemetry(wave0, "m", "2", end_unix=T0 + 85)
    fleet.telemetry(wave0, "m", "1", end_unix=T0 + 85, ttft_p95_ms=900)  # another version: not counted
    assert tick(store, now=T0 + 90) == [rid]
    info = get_rollout(store, rid)
    assert info.current_wave == 1 and info.state == "ACTIVE" and "wave 2 of 3 started" in info.message
    assert desired_ref(desired_for(store, wave1[0], now=T0 + 91)).startswith("m:2@")

    fleet.converge(wave1[0], now=T0 + 95)
    tick(store, now=T0 + 100)
    fleet.telemetry(wave1, "m", "2", end_unix=T0 + 120)
    tick(store, now=T0 + 170)
    assert get_rollout(store, rid).current_wave == 2
    for agent in _wave_members(store, rid, 2):
        fleet.converge(agent, now=T0 + 175)
    tick(store, now=T0 + 180)
    fleet.telemetry(_wave_members(store, rid, 2), "m", "2", end_unix=T0 + 200)
    tick(store, now=T0 + 250)
    info = get_rollout(store, rid)
    assert info.state == "SUCCEEDED", info.message
    assert "6 healthy, 0 failed, 1 skipped" in info.message
    assert all(fleet.installed(f"a{i}") == "m:2" for i in range(6))
    assert fleet.installed("g0") == "m:1"


def test_skipped_devices_are_listed_with_reason(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2"), now=T0)
    skipped = [t for t in get_rollout(store, rid).targets if t.state == "skipped"]
    assert [t.agent_id for t in skipped] == ["g0"]
    assert "no variant of m:2 for profile 'cuda-fp16'" in skipped[0].message
    assert skipped[0].hostname == "host-g0"
    assert desired_for(store, "g0", now=T0) is None


def test_failure_threshold_pauses_and_rolls_back_the_wave(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", waves=[50, 100], max_failure="10%", soak_s=0), now=T0)
    wave0 = _wave_members(store, rid, 0)
    fleet.converge(wave0[0], now=T0 + 1, fail=True)  # its health check fails: the agent rolls back
    for agent in wave0[1:]:
        fleet.converge(agent, now=T0 + 1)
    assert _states(store, rid)[wave0[0]] == "failed"
    assert "ROLLBACK: health check failed" in next(
        t.message for t in get_rollout(store, rid).targets if t.agent_id == wave0[0]
    )
    assert tick(store, now=T0 + 2) == [rid]
    info = get_rollout(store, rid)
    assert info.state == "PAUSED" and info.current_wave == 0
    assert "1 of 3 device(s) failed (33% > max 10%)" in info.message
    states = _states(store, rid)
    assert all(states[a] == "rolled_back" for a in wave0)
    assert all(states[a] == "pending" for a in _wave_members(store, rid, 1))
    # the wave's devices go back to what they ran before, the healthy ones too
    for agent in wave0:
        assert desired_ref(desired_for(store, agent, now=T0 + 3)).startswith("m:1@")
        fleet.converge(agent, now=T0 + 3)
        assert fleet.installed(agent) == "m:1"
    assert tick(store, now=T0 + 4) == []  # a paused rollout does not move

    # resume retries the wave; this time everyone installs and the rollout finishes
    info = resume(store, rid, now=T0 + 10)
    assert info.state == "ACTIVE" and "retrying wave 1 of 2" in info.message
    assert all(_states(store, rid)[a] == "assigned" for a in wave0)
    for agent in wave0:
        fleet.converge(agent, now=T0 + 11)
    tick(store, now=T0 + 12)
    for agent in _wave_members(store, rid, 1):
        fleet.converge(agent, now=T0 + 13)
    tick(store, now=T0 + 14)
    assert get_rollout(store, rid).state == "SUCCEEDED"
    target = next(t for t in get_rollout(store, rid).targets if t.agent_id == wave0[0])
    assert (target.prev_name, target.prev_version) == ("m", "1")  # the retry kept the real previous version


def test_gate_violated_after_soak_rolls_the_wave_back(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", waves=[50, 100], gate=GATE, soak_s=30), now=T0)
    wave0 = _wave_members(store, rid, 0)
    for agent in wave0:
        fleet.converge(agent, now=T0 + 1)
    tick(store, now=T0 + 2)
    fleet.telemetry(wave0, "m", "2", end_unix=T0 + 10, ttft_p95_ms=450)
    tick(store, now=T0 + 12)  # still soaking: a violation so far only shows in the message
    info = get_rollout(store, rid)
    assert info.state == "ACTIVE" and "ttft_p95_ms<=200 measured 450" in info.message
    tick(store, now=T0 + 40)
    info = get_rollout(store, rid)
    assert info.state == "PAUSED"
    assert "gate failed after soak: ttft_p95_ms<=200 measured 450" in info.message
    assert all(_states(store, rid)[a] == "rolled_back" for a in wave0)


def test_manual_approval_waits_between_waves(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", waves=[50, 100], approve="manual", soak_s=0), now=T0)
    for agent in _wave_members(store, rid, 0):
        fleet.converge(agent, now=T0 + 1)
    tick(store, now=T0 + 2)
    info = get_rollout(store, rid)
    assert info.state == "WAITING_APPROVAL" and f"slmops rollout resume {rid}" in info.message
    tick(store, now=T0 + 100)
    assert get_rollout(store, rid).state == "WAITING_APPROVAL"
    assert all(desired_for(store, a, now=T0 + 100) is None for a in _wave_members(store, rid, 1))
    info = resume(store, rid, now=T0 + 101)
    assert info.state == "ACTIVE" and info.current_wave == 1
    assert all(desired_for(store, a, now=T0 + 102) is not None for a in _wave_members(store, rid, 1))


def test_device_timeout_marks_failed(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(
        store, RolloutSpec("m", "2", waves=[100], device_timeout_s=300, max_failure=0.5, soak_s=0), now=T0
    )
    members = _wave_members(store, rid, 0)
    for agent in members[1:]:
        fleet.converge(agent, now=T0 + 10)
    tick(store, now=T0 + 299)
    assert _states(store, rid)[members[0]] == "assigned"
    tick(store, now=T0 + 301)
    target = next(t for t in get_rollout(store, rid).targets if t.agent_id == members[0])
    assert target.state == "failed" and "timed out: not healthy within 300 s (last state: assigned)" in target.message
    # 1 of 6 failed <= 50%: the rollout still succeeds; the failed device is told to keep its old version
    assert get_rollout(store, rid).state == "SUCCEEDED"
    assert desired_ref(desired_for(store, members[0], now=T0 + 302)).startswith("m:1@")


def test_controller_restart_mid_rollout_continues(db_url: str) -> None:
    first = Store(db_url)
    fleet = Fleet(first)
    fleet.model("m", "1", ["cpu-int4"])
    fleet.model("m", "2", ["cpu-int4"])
    for i in range(4):
        fleet.device(f"a{i}", "cpu-int4", installed="m:1")
    rid = create_rollout(first, RolloutSpec("m", "2", waves=[50, 100], soak_s=20), now=T0)
    wave0 = _wave_members(first, rid, 0)
    for agent in wave0:
        fleet.converge(agent, now=T0 + 1)
    tick(first, now=T0 + 2)  # soak starts
    first.close()

    second = Store(db_url)  # a new controller process: nothing kept in memory
    try:
        fleet = Fleet(second)
        tick(second, now=T0 + 10)
        assert get_rollout(second, rid).current_wave == 0  # the soak started before the restart still counts
        tick(second, now=T0 + 23)
        assert get_rollout(second, rid).current_wave == 1
        for agent in _wave_members(second, rid, 1):
            fleet.converge(agent, now=T0 + 24)
        tick(second, now=T0 + 25)
        tick(second, now=T0 + 46)
        assert get_rollout(second, rid).state == "SUCCEEDED"
    finally:
        second.close()
