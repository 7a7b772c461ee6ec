"""The periodic drift check the scheduler runs: :func:`run_drift_check`.

Each call reads the telemetry windows stored since the last call (by row id, so windows from agents that
were offline and report late are still seen), groups them by (profile, model name, model version) and
feeds each group's :class:`~controller.drift.watch.Watch`. The watches' state lives in DetectorState rows
(one per group) with the id of the last window fed, so a restarted controller carries on where it stopped
and never feeds a window twice. A new model version is a new group with fresh detectors and its own
baseline, so detection works again after a drift-triggered version rolls out.

Baseline: the Baseline row of the group (captured at evaluation or canary time); figures it lacks are
learned from the group's first ``baseline_windows`` windows and stored in it (a new row gets
``source="canary"``). Each detection becomes a DriftEventRow with its evidence; the policy
(``controller/drift/policy.py``) decides and the action is called after the event is committed. When one
check finds several kinds for a group, quality and input drift are decided before latency drift: a retrain
rebuilds every variant, and the cooldown it books must not go to a re-optimization first.

Run one check at a time (the scheduler's job has ``max_instances=1``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select

from controller.drift.audited import audited_summary
from controller.drift.baseline import baseline_metrics, load_baseline, merge_learned
from controller.drift.config import DriftConfig, config_for
from controller.drift.events import DriftEvent
from controller.drift.policy import Booking, Decision, DriftActions, action_for, decide, dispatch
from controller.drift.waiting import dispatch_waiting, hold
from controller.drift.watch import Finding, Watch
from controller.store.db import Store
from controller.store.kv import get_value, put_value
from controller.store.tables import DetectorState, DriftEventRow, TelemetryWindowRow
from controller.telemetry.extras import load_signals
from shared.errors import ConfigError
from shared.profiles import DeviceProfile

log = logging.getLogger(__name__)

CURSOR_KEY = "drift.window_cursor"
BATCH = 10_000
GroupKey = tuple[str, str, str]


def state_key(profile: str, model_name: str, model_version: str) -> str:
    return f"drift/{profile}/{model_name}/{model_version}"


def _cursor(store: Store) -> int:
    with store.session() as s:
        return int(get_value(s, CURSOR_KEY, "0"))


def _set_cursor(store: Store, value: int) -> None:
    with store.session() as s:
        put_value(s, CURSOR_KEY, str(value))


def run_drift_check(
    store: Store, profiles: dict[str, DeviceProfile], actions: DriftActions, now: float | None = None
) -> list[DriftEvent]:
    """Feed the windows stored since the last check to the detectors; returns the events it created."""
    now = time.time() if now is None else now
    configs: dict[str, DriftConfig] = {}
    for name, profile in profiles.items():
        try:
            configs[name] = config_for(profile)
        except ConfigError as exc:
            log.error("drift detection skips profile %s: %s", name, exc)
    events: list[DriftEvent] = []
    cursor = _cursor(store)
    while True:
        with store.session() as s:
            query = (
                select(TelemetryWindowRow)
                .where(col(TelemetryWindowRow.id) > cursor)
                .order_by(col(TelemetryWindowRow.id))
                .limit(BATCH)
            )
            rows = list(s.exec(query).all())
        if not rows:
            break
        groups: dict[GroupKey, list[TelemetryWindowRow]] = {}
        for w in rows:
            if w.model_version and w.profile in configs:
                groups.setdefault((w.profile, w.model_name, w.model_version), []).append(w)
        for group, windows in groups.items():
            profile = profiles[group[0]]
            events.extend(_check_group(store, profile, configs[group[0]], group, windows, actions, now))
        cursor = int(rows[-1].id or cursor)
        _set_cursor(store, cursor)
        log.debug("drift check: %d windows in %d groups, up to window id %d", len(rows), len(groups), cursor)
        if len(rows) < BATCH:
            break
    started = dispatch_waiting(store, actions, configs.get, now)
    return events + [DriftEvent.from_row(row) for row in started]


def _check_group(
    store: Store,
    profile: DeviceProfile,
    config: DriftConfig,
    group: GroupKey,
    windows: Sequence[TelemetryWindowRow],
    actions: DriftActions,
    now: float,
) -> list[DriftEvent]:
    profile_name, model_name, model_version = group
    key = state_key(*group)
    with store.session() as s:
        stored = s.get(DetectorState, key)
        state: dict[str, Any] = json.loads(stored.state_json) if stored and stored.state_json else {}
        baseline = baseline_metrics(load_baseline(s, *group))
    watch = Watch.from_state(state.get("watch", {}), config, baseline)
    fed_to = int(state.get("cursor_id", 0))
    findings: list[Finding] = []
    new = [w for w in windows if (w.id or 0) > fed_to]
    if not new:
        return []
    with store.session() as s:
        signals = load_signals(s, [w.id or 0 for w in new])
    for w in new:
        findings.extend(watch.feed(w, signals.get(w.id or 0)))
    created: list[tuple[DriftEventRow, Booking | None]] = []
    with store.session() as s:
        if watch.learned:
            merge_learned(s, *group, watch.learned, now)
        row = s.get(DetectorState, key) or DetectorState(key=key)
        row.state_json = json.dumps({"cursor_id": max(w.id or 0 for w in new), "watch": watch.to_state()})
        row.last_window_end = max(row.last_window_end, *(w.end_unix for w in new))
        row.updated_at = now
        s.add(row)
        audited = audited_summary(s, *group) if findings else None
        for f in sorted(findings, key=lambda finding: action_for(finding.kind) != "retrain"):  # stable: retrains first
            decision = decide(s, profile.drift_policy, config, profile_name, model_name, f.kind, now)
            event = _event_row(group, f, decision, profile.drift_policy, now, audited)
            hold(event, decision, config, f.window_end)  # a waiting retrain is started by dispatch_waiting
            s.add(event)
            created.append((event, decision.booking))
            log.warning(
                "drift %s on %s %s:%s (%s on %s: %.3g > %.3g) -> %s",
                f.kind,
                profile_name,
                model_name,
                model_version,
                f.detection.detector,
                f.metric,
                f.detection.statistic,
                f.detection.threshold,
                event.action,
            )
    return [DriftEvent.from_row(dispatch(store, actions, e, booking)) for e, booking in created]


def _event_row(
    group: GroupKey, f: Finding, decision: Decision, mode: str, now: float, audited: dict[str, Any] | None = None
) -> DriftEventRow:
    evidence = {**f.evidence, "policy": {"mode": mode, "action": decision.action, "reason": decision.reason}}
    if audited is not None:  # the version's teacher-audited accuracy when the profile audits
        evidence["audited_accuracy"] = audited
    return DriftEventRow(
        event_id=uuid.uuid4().hex[:12],
        profile=group[0],
        model_name=group[1],
        model_version=group[2],
        kind=f.kind,
        detector=f.detection.detector,
        metric=f.metric,
        statistic=float(f.detection.statistic),
        threshold=float(f.detection.threshold),
        detected_at=now,
        action=decision.action,
        evidence_json=json.dumps(evidence, default=float),
    )
