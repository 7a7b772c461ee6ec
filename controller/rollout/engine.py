"""The rollout engine: create a rollout, show/list it, and record what agents report.

The state machine of a rollout (ACTIVE -> WAITING_APPROVAL / PAUSED -> ... -> SUCCEEDED | ABORTED |
ROLLED_BACK) lives in the database; the pieces are:

- here: :func:`create_rollout`, :func:`get_rollout`, :func:`list_rollouts`, :func:`on_install_report`;
- ``ops.py``: the operator's :func:`pause`, :func:`resume`, :func:`abort`, :func:`rollback`;
- ``desired.py``: :func:`desired_for`, what each heartbeat answers;
- ``ticker.py``: :func:`tick`, the scheduled job that times out devices, evaluates gates and moves waves.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from controller.registry.integrity import note_reported
from controller.store.db import Store
from controller.store.tables import Device, InstallEvent, ModelVersionRow, Rollout, RolloutTarget
from shared.errors import NotFound

from .desired import desired_for
from .ops import abort, pause, resume, rollback
from .planner import plan_targets, select_devices
from .spec import (
    ASSIGNED,
    FAILED,
    HEALTHY,
    IN_FLIGHT,
    INSTALLED,
    INSTALLING,
    LIVE_STATES,
    SKIPPED,
    T_ROLLED_BACK,
    DesiredModelInfo,
    RolloutConflict,
    RolloutSpec,
    normalize_install_state,
)
from .ticker import tick
from .transitions import set_target_state, start_wave, variant_for, variant_profiles
from .views import get_rollout, list_rollouts

log = logging.getLogger(__name__)

__all__ = [
    "abort",
    "create_rollout",
    "desired_for",
    "desired_to_pb",
    "get_rollout",
    "list_rollouts",
    "normalize_install_state",
    "on_install_report",
    "pause",
    "resume",
    "rollback",
    "tick",
]

_CREATE_LOCK_KEY = 7_401_001  # PostgreSQL advisory lock: one rollout creation at a time
# An agent's report that it will not repeat a failed attempt (agent/install/states.py Event.REFUSED).
REFUSED_EVENT = "REFUSED"

# Install state machine (common.proto InstallState) -> target state.
_REPORT_STATES: dict[str, str] = {
    "DOWNLOAD": INSTALLING,
    "VERIFY": INSTALLING,
    "INSTALL": INSTALLING,
    "ACTIVATE": INSTALLING,
    "HEALTH_CHECK": INSTALLED,
    "COMMIT": HEALTHY,
    "DONE": HEALTHY,
    "ROLLBACK": FAILED,
    "CLEANUP": FAILED,
    "FAILED": FAILED,
}


def new_rollout_id() -> str:
    return "ro-" + uuid.uuid4().hex[:10]


def create_rollout(store: Store, spec: RolloutSpec, now: float | None = None) -> str:
    """Create a rollout and start its first wave; returns its id.

    Raises InvalidArgument (bad spec or gate), NotFound (unknown model version or device id),
    FailedPrecondition (no device can take it; another live rollout owns the model or some devices).
    """
    spec = spec.validated()
    now = time.time() if now is None else now
    ref = f"{spec.model_name}:{spec.model_version}"
    rollout_id = new_rollout_id()
    with store.session() as session:
        if not store.is_sqlite:
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CREATE_LOCK_KEY})
        if session.get(ModelVersionRow, (spec.model_name, spec.model_version)) is None:
            raise _no_model_version(session, spec.model_name, spec.model_version)
        built = variant_profiles(session, spec.model_name, spec.model_version)
        devices = list(session.exec(select(Device)).all())
        targeted = select_devices(devices, spec.profiles, spec.device_ids)
        if not targeted:
            raise RolloutConflict(f"no enrolled device matches the rollout's filters{_filters(spec)}")
        planned = plan_targets(targeted, built, spec.waves, ref)
        eligible = [p for p in planned if p.state != SKIPPED]
        if not eligible:
            reasons = "; ".join(f"{p.agent_id}: {p.message}" for p in planned)
            raise RolloutConflict(f"none of the {len(planned)} targeted device(s) can take {ref}: {reasons}")
        rollout = Rollout(
            rollout_id=rollout_id,
            model_name=spec.model_name,
            model_version=spec.model_version,
            state="ACTIVE",
            current_wave=min(p.wave for p in eligible),
            waves_json=json.dumps(spec.waves),
            profiles_json=json.dumps(spec.profiles),
            device_ids_json=json.dumps(spec.device_ids),
            max_failure=float(spec.max_failure),
            gate=spec.gate,
            approve=spec.approve,
            soak_s=spec.soak_s,
            device_timeout_s=spec.device_timeout_s,
            reason=spec.reason,
            drift_event_id=spec.drift_event_id,
            created_at=now,
            updated_at=now,
            wave_started_at=now,
        )
        session.add(rollout)
        for p in planned:
            session.add(
                RolloutTarget(
                    rollout_id=rollout_id,
                    agent_id=p.agent_id,
                    profile=p.profile,
                    wave=p.wave,
                    state=p.state,
                    message=p.message,
                    updated_at=now,
                )
            )
        session.flush()  # holds the write lock on SQLite from here: the conflict check below is race-free
        _check_conflicts(session, rollout, [p.agent_id for p in eligible])
        started = start_wave(session, rollout, rollout.current_wave, now)
        skipped = len(planned) - len(eligible)
        rollout.message = f"wave {rollout.current_wave + 1} of {len(spec.waves)} started with {started} device(s)" + (
            f"; {skipped} device(s) skipped (no variant for their profile)" if skipped else ""
        )
        session.add(rollout)
    log.info("rollout %s of %s created: %d target(s), waves %s", rollout_id, ref, len(eligible), spec.waves)
    return rollout_id


def _filters(spec: RolloutSpec) -> str:
    parts = []
    if spec.profiles:
        parts.append(f"profiles {', '.join(spec.profiles)}")
    if spec.device_ids:
        parts.append(f"devices {', '.join(spec.device_ids)}")
    return f" ({'; '.join(parts)})" if parts else " (no device is enrolled)"


def _no_model_version(session: Session, name: str, version: str) -> NotFound:
    versions = session.exec(select(ModelVersionRow.version).where(ModelVersionRow.name == name)).all()
    known = f"known versions: {', '.join(sorted(versions))}" if versions else f"no version of '{name}' is registered"
    return NotFound(f"model version {name}:{version} not found ({known}); see `slmops models list`")


def _check_conflicts(session: Session, rollout: Rollout, agent_ids: list[str]) -> None:
    others = session.exec(
        select(Rollout).where(col(Rollout.state).in_(LIVE_STATES), Rollout.rollout_id != rollout.rollout_id)
    ).all()
    for other in others:
        if other.model_name == rollout.model_name:
            raise RolloutConflict(
                f"rollout {other.rollout_id} of {other.model_name}:{other.model_version} is still {other.state}; "
                f"abort it first (`slmops rollout abort {other.rollout_id}`)"
            )
    if not others:
        return
    busy = session.exec(
        select(RolloutTarget).where(
            col(RolloutTarget.rollout_id).in_([o.rollout_id for o in others]),
            col(RolloutTarget.agent_id).in_(agent_ids),
            RolloutTarget.state != SKIPPED,
        )
    ).all()
    if busy:
        first = busy[0].rollout_id
        ids = ", ".join(sorted(t.agent_id for t in busy if t.rollout_id == first))
        raise RolloutConflict(
            f"device(s) {ids} are in rollout {first}, which is still live; abort it first "
            f"(`slmops rollout abort {first}`) or leave those devices out with --devices/--profiles"
        )


# --- agent reports -----------------------------------------------------------------------------------------
def on_install_report(
    store: Store,
    agent_id: str,
    rollout_id: str,
    model_name: str,
    model_version: str,
    from_state: str | int,
    to_state: str | int,
    event: str = "",
    message: str = "",
    ts: float | None = None,
    attempt: int = 0,
) -> str | None:
    """Store one install transition and move the device's rollout target; returns its new state (or None).

    DOWNLOAD..ACTIVATE -> installing, HEALTH_CHECK -> installed, COMMIT/DONE -> healthy (the agent commits
    only after its own health check passed), ROLLBACK/CLEANUP/FAILED -> failed. Reports about another
    model version (e.g. the agent going back to its previous version) only update the message.
    """
    ts = time.time() if ts is None else ts
    src, dst = normalize_install_state(from_state), normalize_install_state(to_state)
    with store.session() as session:
        session.add(
            InstallEvent(
                agent_id=agent_id,
                rollout_id=rollout_id,
                model_name=model_name,
                model_version=model_version,
                from_state=src,
                to_state=dst,
                event=event,
                message=message,
                ts=ts,
            )
        )
        if not rollout_id:
            return None
        row = session.exec(
            select(RolloutTarget, Rollout)
            .join(Rollout, col(Rollout.rollout_id) == col(RolloutTarget.rollout_id))
            .where(RolloutTarget.rollout_id == rollout_id, RolloutTarget.agent_id == agent_id)
        ).first()
        if row is None:
            log.info("install report from %s names rollout %s it is not part of", agent_id, rollout_id)
            return None
        target, rollout = row
        wanted = _REPORT_STATES.get(dst)
        if wanted == FAILED:
            variant = variant_for(session, model_name, model_version, target.profile)
            if variant is not None:
                note_reported(session, bytes(variant.manifest_json), message, ts)
        return _move_target(
            session, target, rollout, (model_name, model_version), wanted, (dst, event, message), ts, attempt
        )


def _move_target(
    session: Session,
    target: RolloutTarget,
    rollout: Rollout,
    model: tuple[str, str],
    wanted: str | None,
    report: tuple[str, str, str],
    ts: float,
    attempt: int = 0,
) -> str:
    dst, event, message = report
    note = f"{dst}: {message}" if message else (event or dst)
    if model != (rollout.model_name, rollout.model_version):
        if target.state in (T_ROLLED_BACK, FAILED):
            back = f"{model[0]}:{model[1]}"
            text_ = f"back on {back}" if wanted == HEALTHY else f"going back to {back}: {note}"
            set_target_state(session, target, target.state, text_, ts)
        return target.state
    if event == REFUSED_EVENT and not _refusal_applies(target, attempt):
        return target.state  # about an attempt that is over: the current one goes on
    if wanted is None or target.state not in (*IN_FLIGHT, HEALTHY):
        return target.state  # pending/skipped/failed/rolled back: a late report changes nothing
    if target.state == HEALTHY and wanted != FAILED:
        return target.state
    set_target_state(session, target, wanted, note, ts)
    return wanted


def _refusal_applies(target: RolloutTarget, attempt: int) -> bool:
    """An agent refused to repeat a failed attempt (event REFUSED, InstallReport.attempt): that fails the target
    when it is the attempt the target is on and it has not started installing it (else the report is stale)."""
    return target.state == ASSIGNED and attempt == target.attempt


def desired_to_pb(desired: DesiredModelInfo, max_bytes_per_s: int = 0) -> Any:
    """Alias of :func:`controller.rollout.pb.desired_to_pb` for the heartbeat servicer."""
    from .pb import desired_to_pb as convert

    return convert(desired, max_bytes_per_s)
