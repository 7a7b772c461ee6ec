"""Teacher-audited accuracy: the strongest drift signal, opt-in per profile (``audit:`` in its YAML).

Agents of a profile that samples prompts (``sample_prompts: true``) send each sampled prompt with the answer
they served (``controller/telemetry/extras.py``). Each run of :func:`run_audit` takes, per profile with
``audit.enabled``, up to the hour's remaining budget (``audit.calls_per_hour`` teacher calls) of those pairs
(a share ``audit.share`` of them), asks the teacher (a local folder or an OpenAI-compatible endpoint, as the
factory does: ``controller/factory/teacher.py``) and counts the device's answer as right when it equals the
teacher's (parsed JSON compared as values). Per (profile, model, version) it keeps the totals and the last
``audit.window`` outcomes, and estimates the accuracy with a 95% Wilson interval.

When the interval of the recent audits (at least ``audit.min_audits``) lies wholly below the version's
reference accuracy (measured by the factory on its validation split, ``reference_accuracy`` in its baseline)
minus ``audit.max_drop`` (room for the teacher's own mistakes),
that is a quality drift: a drift event (detector ``teacher_audit``, metric ``audited_accuracy``) with the
audited figures as evidence, decided and acted on by the same policy as the other detectors. One event per
version: the version is then being replaced, or the operator has been told.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlmodel import Session, col, select

from controller.drift.audited import Tally, load_tally, same_answer, tally_key
from controller.drift.baseline import baseline_metrics, load_baseline
from controller.drift.config import config_for
from controller.drift.events import DriftEvent
from controller.drift.policy import Booking, DriftActions, decide, dispatch
from controller.store.db import Store
from controller.store.kv import get_value, put_value
from controller.store.tables import DriftEventRow, SampledPrompt
from controller.telemetry.extras import forget_answers, load_answers
from shared.profiles import DeviceProfile

log = logging.getLogger(__name__)

CALLS_PREFIX = "audit.calls/"
CURSOR_PREFIX = "audit.cursor/"


class Teacher(Protocol):
    def answer(self, examples: Any, temperature: float = 0.0, max_tokens: int = 128) -> list[str]: ...


TeacherFor = Callable[[DeviceProfile, str, str], Teacher | None]  # (profile, model name, version) -> teacher


@dataclass
class AuditRun:
    audited: int = 0
    skipped: int = 0
    events: list[DriftEvent] = field(default_factory=list)


def run_audit(
    store: Store,
    profiles: dict[str, DeviceProfile],
    teacher_for: TeacherFor,
    actions: DriftActions | None = None,
    now: float | None = None,
    rng: random.Random | None = None,
    max_tokens: int = 128,
) -> AuditRun:
    """Audit what the budgets allow, for every profile that opts in; returns what it did."""
    now = time.time() if now is None else now
    rng = rng or random.Random()
    run = AuditRun()
    for profile in profiles.values():
        if profile.audit.enabled:
            _audit_profile(store, profile, teacher_for, actions, now, rng, run, max_tokens)
    return run


def _pending(store: Store, profile: DeviceProfile, budget: int) -> list[tuple[SampledPrompt, str]]:
    """Sampled prompts of the profile with an answer, after the cursor, at most ``budget`` answered ones."""
    with store.session() as s:
        cursor = int(get_value(s, CURSOR_PREFIX + profile.name, "0"))
        rows = list(
            s.exec(
                select(SampledPrompt)
                .where(SampledPrompt.profile == profile.name)
                .where(col(SampledPrompt.id) > cursor)
                .order_by(col(SampledPrompt.id))
                .limit(budget * 4 + 50)
            ).all()
        )
        answers = load_answers(s, [r.id or 0 for r in rows])
    return [(r, answers[r.id or 0]) for r in rows if (r.id or 0) in answers][:budget]


def _audit_profile(
    store: Store,
    profile: DeviceProfile,
    teacher_for: TeacherFor,
    actions: DriftActions | None,
    now: float,
    rng: random.Random,
    run: AuditRun,
    max_tokens: int,
) -> None:
    settings = profile.audit
    calls_key = f"{CALLS_PREFIX}{profile.name}/{int(now // 3600)}"
    with store.session() as s:
        budget = settings.calls_per_hour - int(get_value(s, calls_key, "0"))
    if budget <= 0:
        return
    pending = _pending(store, profile, budget)
    if not pending:
        return
    chosen = [(row, ans) for row, ans in pending if rng.random() < settings.share]
    run.skipped += len(pending) - len(chosen)
    groups: dict[tuple[str, str], list[tuple[SampledPrompt, str]]] = {}
    for row, ans in chosen:
        groups.setdefault((row.model_name, row.model_version), []).append((row, ans))
    calls = 0
    for (model_name, version), items in groups.items():
        teacher = teacher_for(profile, model_name, version)
        if teacher is None:
            log.warning("audit of %s %s:%s skipped: no teacher to ask", profile.name, model_name, version)
            continue
        from controller.factory.tasks.datasets import Example

        examples = [Example(messages=[{"role": "user", "content": row.prompt}]) for row, _ in items]
        truths = teacher.answer(examples, temperature=0.0, max_tokens=max_tokens)
        calls += len(items)
        outcomes = [same_answer(ans, truth) for (_, ans), truth in zip(items, truths, strict=True)]
        event = _record(store, profile, model_name, version, outcomes, actions, now)
        run.audited += len(items)
        if event is not None:
            run.events.append(event)
    with store.session() as s:
        put_value(s, calls_key, str(int(get_value(s, calls_key, "0")) + calls))
        put_value(s, CURSOR_PREFIX + profile.name, str(max(r.id or 0 for r, _ in pending)))
        forget_answers(s, [r.id or 0 for r, _ in pending])


def _record(
    store: Store,
    profile: DeviceProfile,
    model_name: str,
    version: str,
    outcomes: list[bool],
    actions: DriftActions | None,
    now: float,
) -> DriftEvent | None:
    settings = profile.audit
    with store.session() as s:
        tally = load_tally(s, profile.name, model_name, version)
        for ok in outcomes:
            tally.add(ok, settings.window)
        tally.updated = now
        reference = baseline_metrics(load_baseline(s, profile.name, model_name, version))
        row, booking = _drop_event(s, profile, model_name, version, tally, reference, now)
        put_value(s, tally_key(profile.name, model_name, version), json.dumps(asdict(tally)))
    if row is None:
        return None
    if actions is not None:
        row = dispatch(store, actions, row, booking)
    return DriftEvent.from_row(row)


def _drop_event(
    session: Session,
    profile: DeviceProfile,
    model_name: str,
    version: str,
    tally: Tally,
    reference: dict[str, Any],
    now: float,
) -> tuple[DriftEventRow | None, Booking | None]:
    """A quality drift event when the recent audits' interval lies below the reference accuracy."""
    ref = reference.get("reference_accuracy", reference.get("accuracy"))
    if tally.event_id or ref is None or len(tally.recent) < profile.audit.min_audits:
        return None, None
    summary = tally.summary()
    low, high = summary["recent"]["ci95"]
    if high >= float(ref) - profile.audit.max_drop:
        return None, None
    config = config_for(profile)
    decision = decide(session, profile.drift_policy, config, profile.name, model_name, "quality", now)
    evidence = {
        "detector": "teacher_audit",
        "metric": "audited_accuracy",
        "direction": "down",
        "audit": summary,
        "reference_accuracy": float(ref),
        "reference_n": reference.get("reference_n"),
        "max_drop": profile.audit.max_drop,
        "units": "share of answers equal to the teacher's (95% Wilson interval)",
        "policy": {"mode": profile.drift_policy, "action": decision.action, "reason": decision.reason},
    }
    row = DriftEventRow(
        event_id=uuid.uuid4().hex[:12],
        profile=profile.name,
        model_name=model_name,
        model_version=version,
        kind="quality",
        detector="teacher_audit",
        metric="audited_accuracy",
        statistic=sum(tally.recent) / len(tally.recent),
        threshold=float(ref),
        detected_at=now,
        action=decision.action,
        evidence_json=json.dumps(evidence, default=float),
    )
    session.add(row)
    tally.event_id = row.event_id
    log.warning(
        "quality drift on %s %s:%s: audited accuracy %.2f (95%% CI %.2f-%.2f, n=%d) below the reference %.2f -> %s",
        profile.name,
        model_name,
        version,
        row.statistic,
        low,
        high,
        len(tally.recent),
        float(ref),
        decision.action,
    )
    return row, decision.booking
