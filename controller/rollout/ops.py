"""What an operator can do to a rollout: pause, resume (approve), abort, roll back.

Each is a compare-and-set on the rollout row (retried if a tick changed the row meanwhile) and raises
:class:`InvalidTransition` (FailedPrecondition) with what to do instead when the state does not allow it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlmodel import Session, col, select

from controller.registry.blobs import BlobStore
from controller.registry.integrity import describe, recheck
from controller.store.db import Store
from controller.store.tables import Rollout, RolloutTarget
from shared.errors import FailedPrecondition, Unavailable

from .planner import next_wave_with_targets
from .spec import (
    ABORTED,
    ACTIVE,
    IN_FLIGHT,
    LIVE_STATES,
    PAUSED,
    PENDING,
    ROLLED_BACK,
    SKIPPED,
    SUCCEEDED,
    T_ROLLED_BACK,
    WAITING_APPROVAL,
    InvalidTransition,
    RolloutInfo,
)
from .transitions import cas_rollout, load_rollout, roll_back_targets, start_wave, targets_of, waves_of
from .views import get_rollout

log = logging.getLogger(__name__)

Step = Callable[[Session, Rollout, float], bool]
_ATTEMPTS = 5


def _apply(store: Store, rollout_id: str, step: Step, now: float | None) -> RolloutInfo:
    for _ in range(_ATTEMPTS):
        with store.session() as session:
            rollout = load_rollout(session, rollout_id)
            if step(session, rollout, time.time() if now is None else now):
                break
    else:
        raise Unavailable(f"rollout {rollout_id} kept changing while this command ran; try again")
    return get_rollout(store, rollout_id)


def pause(store: Store, rollout_id: str, now: float | None = None) -> RolloutInfo:
    """Stop starting new waves; devices already assigned keep installing."""

    def step(session: Session, r: Rollout, now: float) -> bool:
        if r.state == PAUSED:
            raise InvalidTransition(
                f"rollout {r.rollout_id} is already paused; resume it with `slmops rollout resume {r.rollout_id}`"
            )
        if r.state not in (ACTIVE, WAITING_APPROVAL):
            raise InvalidTransition(
                f"rollout {r.rollout_id} is {r.state}: only an active rollout (or one waiting for approval) "
                "can be paused"
            )
        msg = f"paused by the operator; resume with `slmops rollout resume {r.rollout_id}`"
        return cas_rollout(session, r, state=PAUSED, message=msg, updated_at=now)

    info = _apply(store, rollout_id, step, now)
    log.info("rollout %s paused", rollout_id)
    return info


def resume(store: Store, rollout_id: str, now: float | None = None, blobs: BlobStore | None = None) -> RolloutInfo:
    """PAUSED -> ACTIVE (a wave rolled back by a failure is retried, each of its devices in a new attempt);
    WAITING_APPROVAL -> next wave starts.

    With ``blobs`` (the controller's blob store), a paused rollout whose blobs agents reported failing their
    sha256 check (or that `slmops models verify` found bad) has them re-hashed first: while the controller's
    copy is still bad, resuming is refused (FailedPrecondition naming them), since the retry would fail alike.
    """
    if blobs is not None:
        _check_blobs(store, blobs, rollout_id)

    def step(session: Session, r: Rollout, now: float) -> bool:
        if r.state == WAITING_APPROVAL:
            return _approve(session, r, now)
        if r.state == ACTIVE:
            raise InvalidTransition(f"rollout {r.rollout_id} is already active; there is nothing to resume")
        if r.state != PAUSED:
            raise InvalidTransition(
                f"rollout {r.rollout_id} is {r.state} and cannot be resumed; create a new rollout instead"
            )
        retry = [t for t in targets_of(session, r.rollout_id, r.current_wave) if t.state == T_ROLLED_BACK]
        wave_no = f"{r.current_wave + 1} of {len(waves_of(r))}"
        if retry:
            msg = f"resumed: retrying wave {wave_no} ({len(retry)} device(s) had been rolled back; new attempt)"
            if not cas_rollout(
                session, r, state=ACTIVE, wave_started_at=now, wave_installed_at=0.0, message=msg, updated_at=now
            ):
                return False
            for target in retry:
                target.state = PENDING
                session.add(target)
        elif not cas_rollout(session, r, state=ACTIVE, message=f"resumed: wave {wave_no}", updated_at=now):
            return False
        start_wave(session, r, r.current_wave, now)
        return True

    info = _apply(store, rollout_id, step, now)
    log.info("rollout %s resumed: %s", rollout_id, info.message)
    return info


def _check_blobs(store: Store, blobs: BlobStore, rollout_id: str) -> None:
    with store.session() as session:
        r = load_rollout(session, rollout_id)
    if r.state != PAUSED:
        return
    still = recheck(store, blobs, r.model_name, r.model_version)
    if still:  # the retry would fail the same way
        raise FailedPrecondition(
            f"rollout {rollout_id} is not resumed: {describe(still)}; restore it from the build output or "
            f"republish the version (`slmops models verify {r.model_name}:{r.model_version}` re-checks), then "
            f"resume again, or abort the rollout"
        )


def _approve(session: Session, r: Rollout, now: float) -> bool:
    waves = waves_of(r)
    target_waves = {t.wave for t in targets_of(session, r.rollout_id) if t.state != SKIPPED}
    nxt = next_wave_with_targets(r.current_wave, target_waves, len(waves))
    if nxt is None:
        return cas_rollout(session, r, state=SUCCEEDED, message="approved: no wave was left", updated_at=now)
    msg = f"wave {nxt + 1} of {len(waves)} approved and started"
    if not cas_rollout(
        session,
        r,
        state=ACTIVE,
        current_wave=nxt,
        wave_started_at=now,
        wave_installed_at=0.0,
        message=msg,
        updated_at=now,
    ):
        return False
    start_wave(session, r, nxt, now)
    return True


def abort(store: Store, rollout_id: str, now: float | None = None) -> RolloutInfo:
    """Stop the rollout for good; every device keeps what it has now."""

    def step(session: Session, r: Rollout, now: float) -> bool:
        if r.state not in LIVE_STATES:
            raise InvalidTransition(
                f"rollout {r.rollout_id} is {r.state}: only an active, paused or waiting rollout can be aborted"
                + (f"; to undo it use `slmops rollout rollback {r.rollout_id}`" if r.state == SUCCEEDED else "")
            )
        busy = [t for t in targets_of(session, r.rollout_id) if t.state in IN_FLIGHT]
        msg = "aborted by the operator: devices keep what they have" + (
            f" ({len(busy)} were still installing)" if busy else ""
        )
        if not cas_rollout(session, r, state=ABORTED, message=msg, updated_at=now):
            return False
        for target in busy:
            target.message, target.updated_at = f"rollout aborted while {target.state}: keeps what it has", now
            session.add(target)
        return True

    info = _apply(store, rollout_id, step, now)
    log.info("rollout %s aborted", rollout_id)
    return info


def rollback(store: Store, rollout_id: str, now: float | None = None) -> RolloutInfo:
    """Every device of the rollout goes back to the version it ran before (one without keeps what it has)."""

    def step(session: Session, r: Rollout, now: float) -> bool:
        if r.state == ROLLED_BACK:
            raise InvalidTransition(f"rollout {r.rollout_id} is already rolled back")
        _refuse_if_superseded(session, r)
        if not cas_rollout(session, r, state=ROLLED_BACK, message="rolled back by the operator", updated_at=now):
            return False
        count = roll_back_targets(session, r.rollout_id, now, "rollout rolled back by the operator")
        log.info("rollout %s: %d device(s) go back to their previous version", r.rollout_id, count)
        return True

    return _apply(store, rollout_id, step, now)


def _refuse_if_superseded(session: Session, r: Rollout) -> None:
    """A newer rollout that already reached some of these devices decides what they run: refuse."""
    mine = [t.agent_id for t in targets_of(session, r.rollout_id) if t.state not in (PENDING, SKIPPED)]
    if not mine:
        return
    newer = session.exec(
        select(RolloutTarget.agent_id, Rollout.rollout_id)
        .join(Rollout, col(Rollout.rollout_id) == col(RolloutTarget.rollout_id))
        .where(
            col(RolloutTarget.agent_id).in_(mine),
            Rollout.created_at > r.created_at,
            col(RolloutTarget.state).not_in((PENDING, SKIPPED)),
        )
    ).all()
    if newer:
        later = sorted({rid for _, rid in newer})
        ids = ", ".join(sorted({aid for aid, _ in newer}))
        raise InvalidTransition(
            f"rollout {r.rollout_id} was followed by rollout {', '.join(later)} on device(s) {ids}; "
            f"roll back {later[-1]} instead, or create a rollout of the version you want"
        )
