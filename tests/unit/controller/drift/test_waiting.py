"""A retrain that waits for the prompts sampled after its drift (``retrain_min_samples``), then starts once."""

from __future__ import annotations

import json

from controller.drift.config import DriftConfig
from controller.drift.policy import decide
from controller.drift.waiting import WAITING, dispatch_waiting, hold
from controller.store.db import Store
from controller.store.tables import DriftEventRow, SampledPrompt
from tests.unit.controller.drift.streams import RecordingActions

T0 = 1_800_000_000.0


def _event(store: Store, config: DriftConfig) -> str:
    with store.session() as s:
        decision = decide(s, "auto", config, "cpu-int4", "m", "input", T0)
        row = DriftEventRow(event_id="ev1", profile="cpu-int4", model_name="m", model_version="1", kind="input",
                            detected_at=T0, action=decision.action, evidence_json="{}")  # fmt: skip
        assert hold(row, decision, config, since=T0 - 5)
        s.add(row)
    return row.event_id


def _sample(store: Store, n: int, ts: float) -> None:
    with store.session() as s:
        for i in range(n):
            s.add(SampledPrompt(profile="cpu-int4", model_name="m", model_version="1", prompt=f"p{i}", ts=ts))


def test_the_retrain_starts_when_enough_new_prompts_are_sampled(sqlite_store: Store) -> None:
    store, actions = sqlite_store, RecordingActions()
    config = DriftConfig.from_dict({"retrain_min_samples": 30})
    _event(store, config)
    _sample(store, 50, ts=T0 - 60)  # before the drift: they do not count
    _sample(store, 20, ts=T0 + 10)
    assert dispatch_waiting(store, actions, lambda _p: config, T0 + 20) == [] and actions.calls == []
    _sample(store, 10, ts=T0 + 30)
    started = dispatch_waiting(store, actions, lambda _p: config, T0 + 40)
    assert [(e.event_id, e.action, e.job_id) for e in started] == [("ev1", "retrain", "job-1")]
    assert dispatch_waiting(store, actions, lambda _p: config, T0 + 50) == []  # started once
    with store.session() as s:
        row = s.get(DriftEventRow, "ev1")
        assert row is not None and row.action == "retrain" and row.job_id == "job-1"
        assert json.loads(row.evidence_json)["waiting"]["sampled"] == 30


def test_after_the_longest_wait_it_retrains_with_what_there_is_and_a_failure_gives_the_booking_back(
    sqlite_store: Store,
) -> None:
    store = sqlite_store
    config = DriftConfig.from_dict({"retrain_min_samples": 500, "retrain_max_wait_s": 120})
    _event(store, config)
    with store.session() as s:
        assert s.get(DriftEventRow, "ev1").action == WAITING  # type: ignore[union-attr]
        assert decide(s, "auto", config, "cpu-int4", "m", "input", T0 + 1).action == "cooldown"  # booked at once
    assert dispatch_waiting(store, RecordingActions(), lambda _p: config, T0 + 60) == []
    failed = dispatch_waiting(store, RecordingActions(fail=True), lambda _p: config, T0 + 121)
    assert [e.action for e in failed] == ["failed"]
    with store.session() as s:
        assert decide(s, "auto", config, "cpu-int4", "m", "input", T0 + 122).action == "retrain"  # given back


def test_without_the_setting_nothing_waits() -> None:
    config = DriftConfig.from_dict({})
    row = DriftEventRow(event_id="e", action="retrain")
    from controller.drift.policy import Decision

    assert not hold(row, Decision("retrain", "auto"), config, since=0.0) and row.action == "retrain"
