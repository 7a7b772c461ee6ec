"""Database steps shared by the rollout engine, the tick and desired-state computation.

Every change of a rollout row is a compare-and-set (:func:`cas_rollout`): the UPDATE only matches when
the row still has the state, wave and timestamps this caller read, so two controllers (or two ticks, or
a tick and an admin command) racing on one rollout apply each transition once. Target changes happen in
the same transaction, after the rollout's CAS succeeded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from controller.store.tables import Device, Rollout, RolloutTarget, VariantRow
from shared.errors import NotFound

from .spec import ASSIGNED, HEALTHY, PENDING, SKIPPED, T_ROLLED_BACK

log = logging.getLogger(__name__)


def load_rollout(session: Session, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFound(f"no rollout '{rollout_id}'; see `slmops rollout list`")
    return rollout


def waves_of(rollout: Rollout) -> list[int]:
    return [int(w) for w in json.loads(rollout.waves_json or "[100]")]


def cas_rollout(session: Session, rollout: Rollout, **values: Any) -> bool:
    """Update the rollout only if it is unchanged since ``rollout`` was read; True when this call won."""
    stmt = (
        update(Rollout)
        .where(
            col(Rollout.rollout_id) == rollout.rollout_id,
            col(Rollout.state) == rollout.state,
            col(Rollout.current_wave) == rollout.current_wave,
            col(Rollout.wave_started_at) == rollout.wave_started_at,
            col(Rollout.wave_installed_at) == rollout.wave_installed_at,
            col(Rollout.updated_at) == rollout.updated_at,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    won = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    if won:  # keep the loaded object in step without marking it dirty (no second, unguarded UPDATE)
        for key, value in values.items():
            set_committed_value(rollout, key, value)
    else:
        log.debug("rollout %s changed under us; leaving this transition to whoever changed it", rollout.rollout_id)
    return won


def targets_of(session: Session, rollout_id: str, wave: int | None = None) -> list[RolloutTarget]:
    query = select(RolloutTarget).where(RolloutTarget.rollout_id == rollout_id)
    if wave is not None:
        query = query.where(RolloutTarget.wave == wave, RolloutTarget.state != SKIPPED)
    return list(session.exec(query.order_by(col(RolloutTarget.wave), col(RolloutTarget.id))).all())


def variant_for(session: Session, name: str, version: str, profile: str) -> VariantRow | None:
    if not name or not version or not profile:
        return None
    return session.exec(
        select(VariantRow).where(VariantRow.name == name, VariantRow.version == version, VariantRow.profile == profile)
    ).first()


def variant_profiles(session: Session, name: str, version: str) -> set[str]:
    rows = session.exec(select(VariantRow.profile).where(VariantRow.name == name, VariantRow.version == version)).all()
    return set(rows)


def assign_target(
    session: Session, rollout: Rollout, target: RolloutTarget, now: float, note: str = "", reinstall: bool = False
) -> None:
    """Start one device: remember what it runs now (for rollback) and make the rollout's variant desired.

    A device that already runs the version and is healthy counts as healthy at once (the agent has
    nothing to install, so it would never report); its remembered previous version is left as it was.
    ``reinstall``: the device's profile changed, so the variant it runs is not the one it needs now.
    Each assignment is a new attempt (``DesiredModel.attempt``): an agent does not repeat an attempt that
    failed, so a wave retried by ``rollout resume`` is one it installs.
    """
    device = session.get(Device, target.agent_id)
    installed = (device.installed_name, device.installed_version) if device else ("", "")
    target.assigned_at = now
    target.updated_at = now
    session.add(target)
    if installed != (rollout.model_name, rollout.model_version):
        target.prev_name, target.prev_version = installed  # else keep the one remembered before (a retry)
    elif device is not None and device.healthy and not reinstall:
        target.state = HEALTHY
        target.message = f"already running {rollout.model_name}:{rollout.model_version}"
        return
    target.state = ASSIGNED
    target.message = note
    target.attempt = (target.attempt or 0) + 1


def start_wave(session: Session, rollout: Rollout, wave: int, now: float) -> int:
    """Assign every pending target of waves up to ``wave`` (late joiners included); returns how many."""
    started = 0
    for target in targets_of(session, rollout.rollout_id):
        if target.state == PENDING and target.wave <= wave:
            assign_target(session, rollout, target, now)
            started += 1
    log.info("rollout %s: wave %d started with %d device(s)", rollout.rollout_id, wave + 1, started)
    return started


def roll_back_targets(
    session: Session, rollout_id: str, now: float, reason: str, waves: Collection[int] | None = None
) -> int:
    """Mark started targets (of ``waves``, or all) rolled back: their desired becomes the previous version."""
    count = 0
    for target in targets_of(session, rollout_id):
        if target.state in (PENDING, SKIPPED, T_ROLLED_BACK) or (waves is not None and target.wave not in waves):
            continue
        target.state = T_ROLLED_BACK
        target.message = reason if target.prev_version else f"{reason}; no previous version: it keeps what it has"
        target.updated_at = now
        session.add(target)
        count += 1
    return count


def set_target_state(session: Session, target: RolloutTarget, state: str, message: str, now: float) -> bool:
    """Row-level transition: only applies if the target is still in the state this caller read."""
    result = session.execute(
        update(RolloutTarget)
        .where(col(RolloutTarget.id) == target.id, col(RolloutTarget.state) == target.state)
        .values(state=state, message=message[:500], updated_at=now)
        .execution_options(synchronize_session=False)
    )
    won = result.rowcount == 1  # type: ignore[attr-defined]
    if won:
        for key, value in (("state", state), ("message", message[:500]), ("updated_at", now)):
            set_committed_value(target, key, value)
    return won
