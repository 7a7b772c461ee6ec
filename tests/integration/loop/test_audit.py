"""Teacher-audited accuracy on a real database with a real (tiny, local) teacher: sampled prompts arrive with
the device's answers through ingest, the audit spends at most its hourly budget of teacher calls, estimates the
accuracy per version with a Wilson interval, and a drop below the reference is one quality drift event."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlmodel import col, select

from controller.drift.audited import load_tally, wilson
from controller.drift.baseline import merge_learned
from controller.factory.tasks.datasets import Example
from controller.factory.teacher import LocalTeacher
from controller.loop.audit import run_audit, same_answer
from controller.store.db import Store
from controller.store.tables import DriftEventRow, KeyValue
from controller.telemetry.extras import ANSWER_PREFIX
from controller.telemetry.ingest import ingest_batch
from shared.profiles import AuditSettings, DeviceProfile
from shared.telemetry import TelemetryBatchData
from tests.unit.controller.drift.streams import RecordingActions
from tests.unit.shared.telemetry_factories import make_window

PROFILE, MODEL, HOUR = "cpu-int4", "tiny", 1_800_000_000.0


def _send(store: Store, seq: int, prompts: list[str], answers: list[str]) -> None:
    windows = []
    for i in range(0, len(prompts), 20):
        chunk, ans = prompts[i : i + 20], answers[i : i + 20]
        windows.append(
            make_window(
                profile=PROFILE,
                model_name=MODEL,
                model_version="1",
                request_count=max(10, len(chunk)),
                error_count=0,
                sampled_prompts=chunk,
                sampled_answers=ans,
                start_unix=HOUR + i,
                end_unix=HOUR + i + 1,
            )
        )
    ingest_batch(store, "agent-1", TelemetryBatchData(agent_id="agent-1", seq=seq, windows=windows), now=HOUR)


def test_wilson_interval_and_answer_comparison() -> None:
    low, high = wilson(45, 50)
    assert low == pytest.approx(0.786, abs=0.002) and high == pytest.approx(0.957, abs=0.002)
    assert wilson(0, 0) == (0.0, 1.0)
    assert same_answer('{"a": 1, "b": [2]}', '{"b":[2],"a":1}') and not same_answer('{"a":1}', '{"a":2}')
    assert same_answer(" lights on ", "lights on")


def test_audit_spends_its_budget_and_reports_a_drop_once(sqlite_store: Store, tiny_hf_model: Path) -> None:
    store = sqlite_store
    from controller.factory.tasks import get_task

    prompts = [r["prompt"] for r in get_task("smart-building").generate("test", 100, seed=3)]
    teacher = LocalTeacher(tiny_hf_model, batch_size=16, device="cpu")
    truths = teacher.answer([Example(messages=[{"role": "user", "content": p}]) for p in prompts], max_tokens=12)
    wrong = '{"intent":"nonsense","slots":{}}'
    # the first 50: 45 right then 5 wrong; the next 50: all wrong (the traffic shifted)
    answers = truths[:45] + [wrong] * 55
    _send(store, 1, prompts[:50], answers[:50])
    _send(store, 2, prompts[50:], answers[50:])
    with store.session() as s:
        merge_learned(s, PROFILE, MODEL, "1", {"reference_accuracy": 0.95, "reference_n": 200}, HOUR, "evaluation")
        assert len(s.exec(select(KeyValue).where(col(KeyValue.key).startswith(ANSWER_PREFIX))).all()) == 100
    audit = AuditSettings(enabled=True, calls_per_hour=50, window=60, min_audits=30)
    profiles = {PROFILE: DeviceProfile(name=PROFILE, precision="int4", sample_prompts=True, audit=audit)}
    asked: list[int] = []

    class CountingTeacher:
        def answer(self, examples, temperature=0.0, max_tokens=128):  # type: ignore[no-untyped-def]
            asked.append(len(examples))
            return teacher.answer(examples, temperature=temperature, max_tokens=max_tokens)

    actions = RecordingActions()
    rng = random.Random(0)
    first = run_audit(store, profiles, lambda *_: CountingTeacher(), actions, now=HOUR, rng=rng, max_tokens=12)
    assert first.audited == 50 and not first.events  # 45/50: CI 0.79-0.96 reaches the reference 0.95
    again = run_audit(store, profiles, lambda *_: CountingTeacher(), actions, now=HOUR + 60, rng=rng, max_tokens=12)
    assert again.audited == 0 and asked == [50]  # the hour's budget is spent
    later = run_audit(store, profiles, lambda *_: CountingTeacher(), actions, now=HOUR + 3600, rng=rng, max_tokens=12)
    assert later.audited == 50 and len(later.events) == 1
    event = later.events[0]
    assert (event.kind, event.detector, event.metric, event.action) == (
        "quality",
        "teacher_audit",
        "audited_accuracy",
        "retrain",
    )
    assert event.evidence["audit"]["recent"]["n"] == 60 and event.evidence["audit"]["recent"]["correct"] == 5
    assert event.evidence["reference_accuracy"] == 0.95 and actions.calls[0][0] == "retrain"
    with store.session() as s:
        tally = load_tally(s, PROFILE, MODEL, "1")
        assert (tally.n, tally.correct, tally.event_id) == (100, 45, event.event_id)
        assert not s.exec(select(KeyValue).where(col(KeyValue.key).startswith(ANSWER_PREFIX))).all()
        assert len(s.exec(select(DriftEventRow)).all()) == 1
    # off by default: nothing is asked
    off = {PROFILE: DeviceProfile(name=PROFILE, precision="int4", sample_prompts=True)}
    assert run_audit(store, off, lambda *_: CountingTeacher(), actions, now=HOUR + 7200).audited == 0


def test_the_teacher_is_the_profiles_choice_else_the_lineages(tiny_hf_model: Path) -> None:
    from controller.factory.teacher import EndpointTeacher, LocalTeacher
    from controller.loop.audit_step import build_teacher, teacher_spec

    chosen = DeviceProfile(name=PROFILE, precision="int4", audit=AuditSettings(teacher={"folder": str(tiny_hf_model)}))
    plain = DeviceProfile(name=PROFILE, precision="int4")
    endpoint = {"teacher": {"kind": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "big"}}
    assert teacher_spec(chosen, endpoint) == {"folder": str(tiny_hf_model)}
    assert teacher_spec(plain, endpoint) == {"base_url": "http://127.0.0.1:9/v1", "model": "big"}
    assert teacher_spec(plain, {"teacher": {"kind": "trained"}}) == {}
    assert build_teacher({}) is None
    assert isinstance(build_teacher(teacher_spec(plain, endpoint)), EndpointTeacher)
    local = build_teacher({"folder": str(tiny_hf_model)})
    assert isinstance(local, LocalTeacher) and build_teacher({"folder": str(tiny_hf_model)}) is local


def test_a_drop_within_the_teachers_own_error_is_not_called(sqlite_store: Store) -> None:
    from controller.drift.audited import Tally
    from controller.loop.audit import _drop_event

    tally = Tally()
    for i in range(60):  # 94% agreement: what an imperfect teacher gives a student that is right
        tally.add(i % 17 != 0, window=60)
    reference = {"reference_accuracy": 1.0, "reference_n": 200}
    lenient = DeviceProfile(name=PROFILE, precision="int4", audit=AuditSettings(enabled=True))
    strict = DeviceProfile(name=PROFILE, precision="int4", audit=AuditSettings(enabled=True, max_drop=0.0))
    with sqlite_store.session() as s:
        assert _drop_event(s, lenient, MODEL, "1", tally, reference, HOUR) == (None, None)
        row, _ = _drop_event(s, strict, MODEL, "1", tally, reference, HOUR)
        assert row is not None and row.detector == "teacher_audit"
        assert json.loads(row.evidence_json)["max_drop"] == 0.0
