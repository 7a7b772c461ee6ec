"""desired_for per state, late-enrolling devices, operator actions, conflicts and install reports."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import select

from controller.rollout import (
    RolloutSpec,
    abort,
    create_rollout,
    desired_for,
    get_rollout,
    list_rollouts,
    on_install_report,
    pause,
    resume,
    rollback,
    tick,
)
from controller.store.db import Store
from controller.store.tables import InstallEvent
from shared.errors import FailedPrecondition, InvalidArgument, NotFound

from .fleet import Fleet, desired_ref

T0 = 2_000_000.0


@pytest.fixture
def fleet(store: Store) -> Fleet:
    f = Fleet(store)
    f.model("m", "1", ["cpu-int4", "cpu-fp32"])
    f.model("m", "2", ["cpu-int4", "cpu-fp32"])
    f.model("other", "1", ["cpu-int4"])
    for i in range(4):
        f.device(f"a{i}", "cpu-int4", installed="m:1")
    return f


def _target(store: Store, rid: str, agent_id: str):  # type: ignore[no-untyped-def]
    return next(t for t in get_rollout(store, rid).targets if t.agent_id == agent_id)


def test_desired_per_target_and_rollout_state(store: Store, fleet: Fleet) -> None:
    fleet.device("fresh", "cpu-int4")  # nothing installed yet
    rid = create_rollout(store, RolloutSpec("m", "2", soak_s=0), now=T0)
    d = desired_for(store, "a0", now=T0)
    assert d is not None and (d.model_name, d.model_version, d.profile, d.rollout_id) == ("m", "2", "cpu-int4", rid)
    assert d.manifest_json == b'{"name": "m", "version": "2", "profile": "cpu-int4"}'
    assert d.signature == b"sig:m:2:cpu-int4" and d.key_id == "k1"
    assert desired_for(store, "nobody", now=T0) is None
    fleet.converge("a0", now=T0 + 1)
    fleet.converge("a1", now=T0 + 1, fail=True)
    assert desired_ref(desired_for(store, "a1", now=T0 + 2)) == "m:1@cpu-int4"  # failed: previous version
    info = abort(store, rid, now=T0 + 3)
    assert info.state == "ABORTED" and "keep what they have" in info.message and "were still installing" in info.message
    assert desired_for(store, "a0", now=T0 + 4) is None  # aborted: keep what it has (m:2)
    assert desired_for(store, "a2", now=T0 + 4) is None  # aborted mid-install: keep what it has
    assert _target(store, rid, "a2").message == "rollout aborted while assigned: keeps what it has"
    assert desired_ref(desired_for(store, "a1", now=T0 + 4)) == "m:1@cpu-int4"  # failed stays on m:1
    info = rollback(store, rid, now=T0 + 5)
    assert info.state == "ROLLED_BACK"
    assert desired_ref(desired_for(store, "a0", now=T0 + 6)) == "m:1@cpu-int4"
    fresh = _target(store, rid, "fresh")
    assert fresh.state == "rolled_back" and "no previous version" in fresh.message
    assert desired_for(store, "fresh", now=T0 + 6) is None


def test_late_enrolling_device_joins_the_current_wave(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", soak_s=0), now=T0)
    fleet.device("late", "cpu-fp32", installed="m:1")
    fleet.device("odd", "cuda-fp16")
    d = desired_for(store, "late", now=T0 + 5)
    assert desired_ref(d) == "m:2@cpu-fp32"
    late = _target(store, rid, "late")
    assert late.state == "assigned" and late.wave == 0 and "joined wave 1 late" in late.message
    assert (late.prev_name, late.prev_version) == ("m", "1")
    assert desired_for(store, "odd", now=T0 + 5) is None
    odd = _target(store, rid, "odd")
    assert odd.state == "skipped" and "no variant of m:2 for profile 'cuda-fp16'" in odd.message
    assert desired_ref(desired_for(store, "late", now=T0 + 6)) == "m:2@cpu-fp32"  # joins once
    assert sum(1 for t in get_rollout(store, rid).targets if t.agent_id == "late") == 1
    # the rollout waits for the late device too
    for agent in ("a0", "a1", "a2", "a3"):
        fleet.converge(agent, now=T0 + 7)
    tick(store, now=T0 + 8)
    assert get_rollout(store, rid).state == "ACTIVE"
    fleet.converge("late", now=T0 + 9)
    tick(store, now=T0 + 10)
    assert get_rollout(store, rid).state == "SUCCEEDED"


def test_profile_change_switches_variant(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", soak_s=0), now=T0)
    fleet.converge("a0", now=T0 + 1)
    fleet.set_profile("a0", "cpu-fp32")
    assert desired_ref(desired_for(store, "a0", now=T0 + 2)) == "m:2@cpu-fp32"
    target = _target(store, rid, "a0")
    assert target.state == "assigned" and "profile changed from cpu-int4 to cpu-fp32" in target.message
    fleet.set_profile("a1", "cuda-fp16")
    assert desired_for(store, "a1", now=T0 + 3) is None
    assert _target(store, rid, "a1").state == "skipped"


def test_operator_transitions_and_their_errors(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", waves=[50, 100], soak_s=0), now=T0)
    with pytest.raises(FailedPrecondition, match="already active"):
        resume(store, rid)
    assert pause(store, rid, now=T0 + 1).state == "PAUSED"
    with pytest.raises(FailedPrecondition, match="already paused"):
        pause(store, rid)
    for t in get_rollout(store, rid).targets:
        if t.wave == 0:
            fleet.converge(t.agent_id, now=T0 + 2)
    tick(store, now=T0 + 3)
    assert get_rollout(store, rid).current_wave == 0  # paused: no new wave
    assert resume(store, rid, now=T0 + 4).state == "ACTIVE"
    tick(store, now=T0 + 5)
    assert get_rollout(store, rid).current_wave == 1
    assert abort(store, rid, now=T0 + 6).state == "ABORTED"
    for action in (pause, resume, abort):
        with pytest.raises(FailedPrecondition, match="ABORTED"):
            action(store, rid)
    rollback(store, rid, now=T0 + 7)
    with pytest.raises(FailedPrecondition, match="already rolled back"):
        rollback(store, rid)
    with pytest.raises(NotFound, match="no rollout 'ro-nope'"):
        pause(store, "ro-nope")


def test_rollback_of_a_superseded_rollout_is_refused(store: Store, fleet: Fleet) -> None:
    first = create_rollout(store, RolloutSpec("m", "1", soak_s=0), now=T0)
    tick(store, now=T0 + 1)  # everyone already runs m:1: healthy at once
    assert get_rollout(store, first).state == "SUCCEEDED"
    second = create_rollout(store, RolloutSpec("m", "2", soak_s=0), now=T0 + 2)
    with pytest.raises(FailedPrecondition, match=f"roll back {second} instead"):
        rollback(store, first)


def test_create_errors(store: Store, fleet: Fleet) -> None:
    with pytest.raises(NotFound, match=r"m:9 not found .*known versions: 1, 2"):
        create_rollout(store, RolloutSpec("m", "9"))
    with pytest.raises(NotFound, match="nobody"):
        create_rollout(store, RolloutSpec("m", "2", device_ids=["nobody"]))
    with pytest.raises(FailedPrecondition, match="no enrolled device matches"):
        create_rollout(store, RolloutSpec("m", "2", profiles=["cuda-fp16"]))
    with pytest.raises(InvalidArgument, match="unknown gate metric 'p99'"):
        create_rollout(store, RolloutSpec("m", "2", gate="p99<=3"))
    rid = create_rollout(store, RolloutSpec("m", "2", device_ids=["a0", "a1"]), now=T0)
    with pytest.raises(FailedPrecondition, match=f"rollout {rid} of m:2 is still ACTIVE; abort it first"):
        create_rollout(store, RolloutSpec("m", "1", device_ids=["a2"]))
    with pytest.raises(FailedPrecondition, match=f"device\\(s\\) a1 are in rollout {rid}"):
        create_rollout(store, RolloutSpec("other", "1", device_ids=["a1", "a2"]))
    other = create_rollout(store, RolloutSpec("other", "1", device_ids=["a2"]), now=T0 + 1)
    assert [r.rollout_id for r in list_rollouts(store, 10)] == [other, rid]


def test_install_reports_are_stored_and_mapped(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2"), now=T0)
    steps = [
        ("IDLE", "DOWNLOAD", "installing"),
        ("INSTALL_STATE_DOWNLOAD", "INSTALL_STATE_VERIFY", "installing"),
        (3, 6, "installed"),  # enum numbers: VERIFY -> HEALTH_CHECK
        ("HEALTH_CHECK", "COMMIT", "healthy"),
        ("COMMIT", "DOWNLOAD", "healthy"),  # a stray report does not undo healthy
        ("IDLE", "ROLLBACK", "failed"),  # a later failed health check does
        ("FAILED", "DOWNLOAD", "failed"),  # failed is final for this rollout
    ]
    for src, dst, expected in steps:
        assert on_install_report(store, "a0", rid, "m", "2", src, dst, "ev", "msg", ts=T0) == expected
    # the agent going back to m:1 only updates the message
    assert on_install_report(store, "a0", rid, "m", "1", "ROLLBACK", "DONE", ts=T0) == "failed"
    assert _target(store, rid, "a0").message == "back on m:1"
    assert on_install_report(store, "a0", "", "m", "2", "IDLE", "DOWNLOAD", ts=T0) is None
    with store.session() as s:
        events = s.exec(select(InstallEvent).where(InstallEvent.agent_id == "a0")).all()
    assert len(events) == len(steps) + 2
    assert (events[2].from_state, events[2].to_state) == ("VERIFY", "HEALTH_CHECK")


def test_concurrent_ticks_apply_each_transition_once(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", waves=[25, 50, 75, 100], soak_s=0), now=T0)
    changes: list[str] = []
    errors: list[BaseException] = []
    for wave in range(4):
        for t in get_rollout(store, rid).targets:
            if t.wave == wave:
                fleet.converge(t.agent_id, now=T0 + wave)
        barrier = threading.Barrier(4)

        def run(now: float, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                changes.extend(tick(store, now=now))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(T0 + wave + 0.5,)) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert len(changes) == wave + 1, f"wave {wave}: {changes}"
        info = get_rollout(store, rid)
        assert info.current_wave == min(wave + 1, 3)
    assert get_rollout(store, rid).state == "SUCCEEDED"


def test_desired_for_is_a_few_queries(store: Store, fleet: Fleet) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    create_rollout(store, RolloutSpec("m", "2", device_ids=["a0"]), now=T0)
    fleet.device("idle", "cpu-int4", installed="m:1")
    desired_for(store, "a0", now=T0)  # warm-up (the first call may join/compile)
    desired_for(store, "idle", now=T0)
    event.listen(store.engine, "before_cursor_execute", count)
    try:
        for agent in ("a0", "idle", "a1"):
            statements.clear()
            desired_for(store, agent, now=T0 + 1)
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            assert len(selects) <= 4 and len(selects) == len(statements), (agent, statements)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
