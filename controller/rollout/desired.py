"""What a device should run now: answered on every heartbeat, so it is a few indexed look-ups.

The device's newest rollout target that concerns it decides (pending and skipped targets do not concern
it yet, so an older rollout decides for them):

- started (assigned .. healthy): the rollout's variant for the target's profile; in an ABORTED rollout:
  nothing (keep what it has);
- failed or rolled back: the variant of the version it ran before (nothing when it had none).

Writes happen only on a change: a device that enrolled (or whose profile changed) while a rollout is
active joins that rollout's current wave, or is listed as skipped when no variant fits its profile.
"""

from __future__ import annotations

import json
import logging
import time

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.store.db import Store
from controller.store.tables import Device, Rollout, RolloutTarget

from .planner import device_matches, skip_reason
from .spec import (
    ABORTED,
    ACTIVE,
    FAILED,
    LIVE_STATES,
    PENDING,
    SKIPPED,
    T_ROLLED_BACK,
    DesiredModelInfo,
)
from .transitions import assign_target, variant_for, variant_profiles

log = logging.getLogger(__name__)

_HISTORY = 20  # newest targets of a device looked at; older rollouts cannot decide anything any more

Pair = tuple[RolloutTarget, Rollout]


def desired_for(store: Store, agent_id: str, now: float | None = None) -> DesiredModelInfo | None:
    """The variant ``agent_id`` should run now, or None for "keep what is installed"."""
    now = time.time() if now is None else now
    for attempt in range(2):
        try:
            with store.session() as session:
                return _desired(session, agent_id, now)
        except IntegrityError:  # two heartbeats of one device joined a rollout at once: the other won
            if attempt:
                raise
    return None


def _desired(session: Session, agent_id: str, now: float) -> DesiredModelInfo | None:
    device = session.get(Device, agent_id)
    if device is None:
        return None
    pairs: list[Pair] = list(
        session.exec(
            select(RolloutTarget, Rollout)
            .join(Rollout, col(Rollout.rollout_id) == col(RolloutTarget.rollout_id))
            .where(RolloutTarget.agent_id == agent_id)
            .order_by(col(Rollout.created_at).desc())
            .limit(_HISTORY)
        ).all()
    )
    live = next((p for p in pairs if p[1].state in LIVE_STATES), None)
    if live is not None:
        _follow_profile(session, device, *live, now)
    else:
        joined = _late_join(session, device, now)
        if joined is not None:
            pairs.insert(0, joined)
    for target, rollout in pairs:
        if target.state in (PENDING, SKIPPED):
            continue
        if target.state in (FAILED, T_ROLLED_BACK):
            profiles = (device.profile, target.profile)
            return _info(session, target.prev_name, target.prev_version, profiles, rollout, target.attempt)
        if rollout.state == ABORTED:
            return None
        return _info(session, rollout.model_name, rollout.model_version, (target.profile,), rollout, target.attempt)
    return None


def _info(
    session: Session, name: str, version: str, profiles: tuple[str, ...], rollout: Rollout, attempt: int
) -> DesiredModelInfo | None:
    for profile in dict.fromkeys(profiles):
        variant = variant_for(session, name, version, profile)
        if variant is not None:
            return DesiredModelInfo(
                model_name=name,
                model_version=version,
                profile=profile,
                rollout_id=rollout.rollout_id,
                manifest_json=bytes(variant.manifest_json),
                signature=bytes(variant.signature),
                key_id=variant.key_id,
                attempt=attempt,
            )
    if name and version:
        log.warning("no variant of %s:%s for profile(s) %s: keeping what the device has", name, version, profiles)
    return None


def _filters(rollout: Rollout) -> tuple[list[str], list[str]]:
    return json.loads(rollout.profiles_json or "[]"), json.loads(rollout.device_ids_json or "[]")


def _late_join(session: Session, device: Device, now: float) -> Pair | None:
    """Add a device that is in no live rollout to the oldest active rollout that targets it."""
    active = session.exec(select(Rollout).where(Rollout.state == ACTIVE).order_by(col(Rollout.created_at))).all()
    for rollout in active:
        profiles, device_ids = _filters(rollout)
        if not device_matches(device.agent_id, device.profile, profiles, device_ids):
            continue
        target = RolloutTarget(
            rollout_id=rollout.rollout_id, agent_id=device.agent_id, profile=device.profile, wave=rollout.current_wave
        )
        built = variant_profiles(session, rollout.model_name, rollout.model_version)
        if device.profile and device.profile in built:
            target.state = PENDING
            assign_target(session, rollout, target, now, note=f"joined wave {rollout.current_wave + 1} late")
        else:
            target.state, target.updated_at = SKIPPED, now
            target.message = skip_reason(f"{rollout.model_name}:{rollout.model_version}", device.profile, built)
        session.add(target)
        session.flush()
        log.info("device %s joined rollout %s as %s", device.agent_id, rollout.rollout_id, target.state)
        return target, rollout
    return None


def _follow_profile(session: Session, device: Device, target: RolloutTarget, rollout: Rollout, now: float) -> None:
    """The device's profile changed while its rollout is live: switch it to the variant for the new one."""
    if device.profile == target.profile:
        return
    old = target.profile or "none"
    profiles, device_ids = _filters(rollout)
    built = variant_profiles(session, rollout.model_name, rollout.model_version)
    ref = f"{rollout.model_name}:{rollout.model_version}"
    target.profile = device.profile
    target.updated_at = now
    session.add(target)
    if not device_matches(device.agent_id, device.profile, profiles, device_ids):
        target.state, target.message = SKIPPED, f"profile changed from {old} to {device.profile}: not targeted"
        return
    if device.profile not in built:
        target.state, target.message = SKIPPED, skip_reason(ref, device.profile, built)
        return
    note = f"profile changed from {old} to {device.profile}"
    if target.state == SKIPPED:
        target.wave = rollout.current_wave
    if target.wave <= rollout.current_wave and rollout.state == ACTIVE:
        assign_target(session, rollout, target, now, note=note, reinstall=True)
    else:
        target.state, target.message = PENDING, note  # started by the next wave, resume or approval
    log.info("device %s: %s in rollout %s", device.agent_id, note, rollout.rollout_id)
