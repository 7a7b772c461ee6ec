"""The monitor against real stores (SQLite file and PostgreSQL): events, policy, restarts, two rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlmodel import select

from controller.drift import approve_event, capture_baseline, get_event, list_events, run_drift_check
from controller.drift.baseline import baseline_metrics
from controller.drift.config import config_for
from controller.drift.events import DriftEventNotFound
from controller.drift.monitor import state_key
from controller.drift.policy import cooldown_key
from controller.drift.watch import Watch
from controller.store.db import Store
from controller.store.tables import Baseline, DetectorState, DriftEventRow, KeyValue, TelemetryWindowRow
from shared.errors import FailedPrecondition
from shared.profiles import DeviceProfile
from tests.unit.controller.drift.streams import EDGES, RecordingActions, series, store_windows

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def profiles(policy: str = "auto", **drift: float) -> dict[str, DeviceProfile]:
    return {"edge": DeviceProfile(name="edge", precision="int4", drift=drift, drift_policy=policy)}  # type: ignore[arg-type]


def shifted_run(store: Store, rng: np.random.Generator, t0: float, version: str = "1", **shift: float) -> float:
    """30 normal windows then 15 shifted ones; returns the last window's time."""
    normal = series(rng, 30, t0, version=version)
    changed = series(rng, 15, t0 + 30 * 60, version=version, **shift)  # type: ignore[arg-type]
    store_windows(store, normal + changed)
    return t0 + 45 * 60


def test_quality_drift_is_stored_with_evidence_and_retrains(store: Store) -> None:
    rng = np.random.default_rng(1)
    actions = RecordingActions()
    end = shifted_run(store, rng, T0, validity=0.80)
    events = run_drift_check(store, profiles(), actions, now=end)
    assert [(e.kind, e.detector, e.metric, e.action) for e in events] == [
        ("quality", "page_hinkley", "format_validity", "retrain")
    ]
    event = get_event(store, events[0].event_id)
    assert event.job_id == "job-1" and actions.calls == [("retrain", event.event_id, "quality")]
    ev = event.evidence
    assert ev["statistic"] > ev["threshold"] == 10.0 and ev["direction"] == "down"
    assert ev["baseline"]["mean"] == pytest.approx(0.98, abs=0.01) and len(ev["recent_values"]) == 20
    assert min(ev["recent_values"]) < 0.9 and ev["window"]["end_unix"] > T0 + 30 * 60
    assert ev["policy"]["mode"] == "auto"
    with store.session() as s:
        baseline = s.get(Baseline, ("edge", "assistant", "1"))
        state = s.get(DetectorState, state_key("edge", "assistant", "1"))
    assert baseline is not None and baseline.source == "canary"
    learned = baseline_metrics(baseline)
    assert {"latency_p95_ms", "format_validity", "prompt_len_hist"} <= set(learned)
    assert "prompt_nll" not in learned  # retired: it carries no information
    assert learned["prompt_len_edges"] == EDGES
    assert state is not None and state.last_window_end == end
    # a second check with no new windows does nothing
    assert run_drift_check(store, profiles(), actions, now=end + 30) == []


@pytest.mark.parametrize(
    ("shift", "kind", "detector", "action"),
    [
        ({"latency": 80.0}, "latency", "page_hinkley", "reoptimize"),
        ({"prompt_median": 32.0}, "input", "psi", "retrain"),
    ],
)
def test_latency_drift_reoptimizes_and_input_drift_retrains(
    sqlite_store: Store, shift: dict, kind: str, detector: str, action: str
) -> None:
    actions = RecordingActions()
    end = shifted_run(sqlite_store, np.random.default_rng(2), T0, **shift)
    events = run_drift_check(sqlite_store, profiles(), actions, now=end)
    assert [(e.kind, e.detector, e.action) for e in events] == [(kind, detector, action)]
    assert actions.calls[0][0] == action


@pytest.mark.parametrize(("policy", "action"), [("off", "none"), ("approve", "pending_approval")])
def test_policy_modes_off_and_approve_call_nothing(store: Store, policy: str, action: str) -> None:
    actions = RecordingActions()
    end = shifted_run(store, np.random.default_rng(3), T0, validity=0.7)
    events = run_drift_check(store, profiles(policy), actions, now=end)
    assert [e.action for e in events] == [action] and actions.calls == []
    if policy == "approve":
        approved = approve_event(store, events[0].event_id, actions, now=end + 60)
        assert approved.action == "retrain" and approved.job_id == "job-1"
        assert get_event(store, approved.event_id).action == "retrain"
        with pytest.raises(FailedPrecondition, match="not waiting for approval"):
            approve_event(store, approved.event_id, actions)


def test_cooldown_and_daily_retrain_cap(store: Store) -> None:
    rng = np.random.default_rng(4)
    actions = RecordingActions()
    prof = profiles(cooldown_s=600, max_retrains_per_day=2)

    def round_(version: str, t0: float, now: float) -> str:
        shifted_run(store, rng, t0, version=version, validity=0.75)
        (event,) = run_drift_check(store, prof, actions, now=now)
        assert event.model_version == version
        return f"{event.action}: {event.evidence['policy']['reason']}"

    assert round_("1", T0, T0 + 3000).startswith("retrain")
    assert round_("2", T0 + 3000, T0 + 3100).startswith("cooldown: last drift action")  # within 600 s
    assert round_("3", T0 + 6000, T0 + 6000).startswith("retrain")
    assert round_("4", T0 + 9000, T0 + 9000).startswith("cooldown: 2 drift retrains already today")
    assert round_("5", T0 + 86400, T0 + 86400).startswith("retrain")  # a new UTC day
    assert [c[0] for c in actions.calls] == ["retrain"] * 3


def test_an_action_that_did_not_start_holds_off_no_later_drift(store: Store) -> None:
    """A failed action gives its cooldown and its daily retrain back: in the demo under CPU load, a latency drift
    on an int4 profile (no lower precision to reoptimize to) used to block the quality drift that followed."""
    rng = np.random.default_rng(10)
    prof = profiles(cooldown_s=600, max_retrains_per_day=2)
    refusing = RecordingActions(refuse=("reoptimize",))
    end = shifted_run(store, rng, T0, latency=80.0)
    (latency,) = run_drift_check(store, prof, refusing, now=end)
    assert (latency.kind, latency.action) == ("latency", "failed")
    assert "FailedPrecondition" in latency.evidence["action_error"] and refusing.calls == []
    # a minute later, well within the cooldown, the same model's quality drifts: it is retrained
    store_windows(store, series(rng, 15, end, latency=80.0, validity=0.75))
    events = run_drift_check(store, prof, refusing, now=end + 60)
    assert ("quality", "retrain") in [(e.kind, e.action) for e in events]
    assert [c[0] for c in refusing.calls] == ["retrain"]
    # a retrain that fails (the queue is full) does not count towards the day's two retrains either
    shifted_run(store, rng, end + 700, version="2", validity=0.75)
    (failed,) = run_drift_check(store, prof, RecordingActions(fail=True), now=end + 3400)
    assert failed.action == "failed"
    shifted_run(store, rng, end + 3400, version="3", validity=0.75)
    (again,) = run_drift_check(store, prof, refusing, now=end + 6100)
    assert again.action == "retrain", again.evidence["policy"]["reason"]


def test_quality_and_latency_drift_in_one_check_retrain_first(sqlite_store: Store) -> None:
    actions = RecordingActions()
    end = shifted_run(sqlite_store, np.random.default_rng(12), T0, latency=80.0, validity=0.75)
    events = run_drift_check(sqlite_store, profiles(cooldown_s=600), actions, now=end)
    assert [(e.kind, e.action) for e in events] == [("quality", "retrain"), ("latency", "cooldown")]
    assert [c[0] for c in actions.calls] == ["retrain"]


def test_an_approved_action_that_fails_leaves_the_earlier_cooldown_in_place(store: Store) -> None:
    rng = np.random.default_rng(11)
    prof = profiles("approve", cooldown_s=600)
    end = shifted_run(store, rng, T0, validity=0.75)
    (first,) = run_drift_check(store, prof, RecordingActions(), now=end)
    assert approve_event(store, first.event_id, RecordingActions(), now=end + 10).action == "retrain"
    shifted_run(store, rng, end, version="2", validity=0.75)
    (second,) = run_drift_check(store, prof, RecordingActions(), now=end + 2700)
    assert approve_event(store, second.event_id, RecordingActions(fail=True), now=end + 2710).action == "failed"
    with store.session() as s:  # the cooldown still dates from the approval that started a job
        assert s.get(KeyValue, cooldown_key("edge", "assistant")).value == repr(end + 10)  # type: ignore[union-attr]


def test_two_rounds_detection_works_again_after_the_new_version_rolls_out(store: Store) -> None:
    rng = np.random.default_rng(5)
    actions = RecordingActions()
    prof = profiles(cooldown_s=600)
    end = shifted_run(store, rng, T0, version="1", validity=0.8)
    first = run_drift_check(store, prof, actions, now=end)
    assert [(e.model_version, e.action) for e in first] == [("1", "retrain")]
    # Canary: devices still on version 1 keep serving shifted traffic, others run version 2 (good again).
    t = end
    store_windows(store, series(rng, 30, t, version="1", validity=0.8, agent="old"))
    store_windows(store, series(rng, 30, t, version="2", agent="new"))
    assert run_drift_check(store, prof, actions, now=t + 1800) == []
    # Round two: the traffic shifts again; version 2 has its own detectors and baseline.
    store_windows(store, series(rng, 15, t + 1800, version="2", agent="new", validity=0.75))
    second = run_drift_check(store, prof, actions, now=t + 2700)
    assert [(e.model_version, e.kind, e.action) for e in second] == [("2", "quality", "retrain")]
    assert len(actions.calls) == 2 and len(list_events(store, "edge")) == 2


def test_restart_keeps_detector_state(db_url: str) -> None:
    rng = np.random.default_rng(6)
    windows = series(rng, 30, T0) + series(rng, 15, T0 + 1800, validity=0.8)
    # Where a monitor that never stops detects it:
    watch = Watch(config_for(profiles()["edge"]))
    expected = next(w.end_unix for w in windows if watch.feed(w.model_copy()))
    cut = next(i for i, w in enumerate(windows) if w.end_unix == expected) - 1  # restart just before it
    first = Store(db_url)
    store_windows(first, [w.model_copy() for w in windows[:cut]])
    assert run_drift_check(first, profiles(), RecordingActions(), now=windows[cut - 1].end_unix) == []
    first.close()
    second = Store(db_url)  # a new controller process
    store_windows(second, [w.model_copy() for w in windows[cut:]])
    events = run_drift_check(second, profiles(), RecordingActions(), now=windows[-1].end_unix)
    assert len(events) == 1 and events[0].evidence["window"]["end_unix"] == expected
    second.close()


def test_existing_baseline_is_used_without_warm_up_and_late_windows_are_fed(store: Store) -> None:
    with store.session() as s:
        s.add(
            Baseline(
                profile="edge",
                model_name="assistant",
                model_version="1",
                metrics_json=json.dumps({"latency_p95_ms": {"mean": 50.0, "std": 5.0, "n": 500}}),
                source="evaluation",
            )
        )
    rng = np.random.default_rng(7)
    store_windows(store, series(rng, 12, T0, latency=70.0))
    (event,) = run_drift_check(store, profiles(), RecordingActions(), now=T0 + 800)
    assert event.kind == "latency" and event.evidence["baseline"]["n"] == 500
    # an agent that was offline reports old windows later: they are fed (by row id, not by time)
    store_windows(store, series(rng, 3, T0 - 3600, agent="late"))
    run_drift_check(store, profiles(), RecordingActions(), now=T0 + 900)
    with store.session() as s:
        state = json.loads(s.get(DetectorState, state_key("edge", "assistant", "1")).state_json)  # type: ignore[union-attr]
        source = s.get(Baseline, ("edge", "assistant", "1")).source  # type: ignore[union-attr]
    assert state["watch"]["windows_fed"] == 15 and source == "evaluation"


def test_unknown_profiles_are_skipped_and_failed_actions_are_recorded(store: Store) -> None:
    rng = np.random.default_rng(8)
    store_windows(store, series(rng, 40, T0, profile="gone", latency=90.0))
    end = shifted_run(store, rng, T0, validity=0.7)
    events = run_drift_check(store, profiles(), RecordingActions(fail=True), now=end)
    assert [e.profile for e in events] == ["edge"] and events[0].action == "failed"
    assert "factory queue is full" in get_event(store, events[0].event_id).evidence["action_error"]
    with store.session() as s:
        assert s.exec(select(DriftEventRow).where(DriftEventRow.profile == "gone")).first() is None
        assert s.get(DetectorState, state_key("gone", "assistant", "1")) is None
        assert len(s.exec(select(TelemetryWindowRow)).all()) == 85


def test_event_helpers(store: Store) -> None:
    with pytest.raises(DriftEventNotFound, match=r"no drift event 'nope'.*slmops drift list"):
        get_event(store, "nope")
    with store.session() as s:
        for i, profile in enumerate(["a", "b", "a"]):
            s.add(DriftEventRow(event_id=f"e{i}", profile=profile, kind="quality", detected_at=T0 + i))
    assert [e.event_id for e in list_events(store)] == ["e2", "e1", "e0"]
    assert [e.event_id for e in list_events(store, profile="a", limit=1)] == ["e2"]


def test_capture_baseline_from_canary_windows_is_used_by_the_monitor(store: Store) -> None:
    rng = np.random.default_rng(9)
    store_windows(store, series(rng, 25, T0, latency=200.0))
    row = capture_baseline(store, "edge", "assistant", "1", since_unix=T0, until_unix=T0 + 25 * 60)
    figures = baseline_metrics(row)
    assert row.source == "canary" and figures["latency_p95_ms"]["mean"] == pytest.approx(200.0, abs=3.0)
    assert figures["latency_p95_ms"]["std"] == pytest.approx(5.0, abs=2.0) and sum(figures["prompt_len_hist"]) == 2500
    run_drift_check(store, profiles(), RecordingActions(), now=T0 + 1500)
    with store.session() as s:
        stored = baseline_metrics(s.get(Baseline, ("edge", "assistant", "1")))
    assert "learned" not in stored["latency_p95_ms"]  # nothing had to be learned
    store_windows(store, series(rng, 10, T0 + 1500, latency=240.0))
    (event,) = run_drift_check(store, profiles(), RecordingActions(), now=T0 + 2100)
    assert event.kind == "latency" and event.action == "reoptimize"
