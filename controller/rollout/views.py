"""Reading rollouts as plain :class:`RolloutInfo` objects (what ``show`` and ``list`` print)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from controller.store.db import Store
from controller.store.tables import Device, Rollout, RolloutTarget

from .spec import SKIPPED, RolloutInfo, TargetInfo
from .transitions import load_rollout, waves_of


def _info(rollout: Rollout, targets: list[RolloutTarget], hostnames: dict[str, str]) -> RolloutInfo:
    ordered = sorted(targets, key=lambda t: (t.state == SKIPPED, t.wave, t.id or 0))
    return RolloutInfo(
        rollout_id=rollout.rollout_id,
        model_name=rollout.model_name,
        model_version=rollout.model_version,
        state=rollout.state,
        current_wave=rollout.current_wave,
        waves=waves_of(rollout),
        max_failure=rollout.max_failure,
        gate=rollout.gate,
        approve=rollout.approve,
        soak_s=rollout.soak_s,
        device_timeout_s=rollout.device_timeout_s,
        message=rollout.message,
        reason=rollout.reason,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        drift_event_id=rollout.drift_event_id,
        targets=[
            TargetInfo(
                agent_id=t.agent_id,
                hostname=hostnames.get(t.agent_id, ""),
                profile=t.profile,
                wave=t.wave,
                state=t.state,
                message=t.message,
                prev_name=t.prev_name,
                prev_version=t.prev_version,
                updated_at=t.updated_at,
                attempt=t.attempt,
            )
            for t in ordered
        ],
    )


def _infos(session: Session, rollouts: list[Rollout]) -> list[RolloutInfo]:
    ids = [r.rollout_id for r in rollouts]
    if not ids:
        return []
    targets = session.exec(select(RolloutTarget).where(col(RolloutTarget.rollout_id).in_(ids))).all()
    agent_ids = sorted({t.agent_id for t in targets})
    hostnames = dict(
        session.exec(select(Device.agent_id, Device.hostname).where(col(Device.agent_id).in_(agent_ids))).all()
    )
    by_rollout: dict[str, list[RolloutTarget]] = {}
    for t in targets:
        by_rollout.setdefault(t.rollout_id, []).append(t)
    return [_info(r, by_rollout.get(r.rollout_id, []), hostnames) for r in rollouts]


def get_rollout(store: Store, rollout_id: str) -> RolloutInfo:
    with store.session() as session:
        return _infos(session, [load_rollout(session, rollout_id)])[0]


def list_rollouts(store: Store, limit: int = 50) -> list[RolloutInfo]:
    """Rollouts, newest first, each with its targets."""
    with store.session() as session:
        query = select(Rollout).order_by(col(Rollout.created_at).desc())
        rollouts = list(session.exec(query.limit(limit or 50)).all())
        return _infos(session, rollouts)
