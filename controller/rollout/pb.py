"""Protobuf conversion for rollouts, used only by the gRPC servicers (admin and agent)."""

from __future__ import annotations

from shared.pb import admin_pb2, agent_pb2, common_pb2

from .spec import (
    DEFAULT_DEVICE_TIMEOUT_S,
    DesiredModelInfo,
    RolloutInfo,
    RolloutSpec,
    TargetInfo,
    normalize_install_state,
)


def spec_from_pb(request: admin_pb2.CreateRolloutRequest) -> RolloutSpec:
    """Proto defaults: no waves -> [100]; device_timeout_s 0 -> 900 s; approve "" -> auto.

    ``max_failure`` and ``soak_s`` are taken as sent (0 means: no failure tolerated / no soak), so a client
    should send its own defaults (the CLI: 10% and 30 s).
    """
    return RolloutSpec(
        model_name=request.model.name,
        model_version=request.model.version,
        profiles=list(request.profiles),
        device_ids=list(request.device_ids),
        waves=list(request.waves) or [100],
        max_failure=request.max_failure,
        gate=request.gate,
        approve=request.approve or "auto",
        soak_s=request.soak_s,
        device_timeout_s=request.device_timeout_s or DEFAULT_DEVICE_TIMEOUT_S,
        reason=request.reason,
    )


def target_to_pb(target: TargetInfo) -> admin_pb2.RolloutTarget:
    return admin_pb2.RolloutTarget(
        agent_id=target.agent_id,
        hostname=target.hostname,
        profile=target.profile,
        wave=target.wave,
        state=target.state,
        message=target.message,
        previous=common_pb2.ModelRef(name=target.prev_name, version=target.prev_version),
        updated_unix=target.updated_at,
    )


def to_pb(info: RolloutInfo) -> admin_pb2.Rollout:
    return admin_pb2.Rollout(
        rollout_id=info.rollout_id,
        model=common_pb2.ModelRef(name=info.model_name, version=info.model_version),
        state=admin_pb2.RolloutState.Value(f"ROLLOUT_STATE_{info.state}"),
        current_wave=info.current_wave,
        waves=info.waves,
        max_failure=info.max_failure,
        gate=info.gate,
        approve=info.approve,
        targets=[target_to_pb(t) for t in info.targets],
        message=info.message,
        created_unix=info.created_at,
        updated_unix=info.updated_at,
        reason=info.reason,
    )


rollout_to_pb = to_pb


def list_to_pb(infos: list[RolloutInfo]) -> admin_pb2.ListRolloutsResponse:
    return admin_pb2.ListRolloutsResponse(rollouts=[to_pb(i) for i in infos])


def desired_to_pb(desired: DesiredModelInfo | None, max_bytes_per_s: int = 0) -> agent_pb2.DesiredModel | None:
    """None (keep what is installed) stays None: leave HeartbeatResponse.desired unset."""
    if desired is None:
        return None
    return agent_pb2.DesiredModel(
        model=common_pb2.ModelRef(name=desired.model_name, version=desired.model_version),
        rollout_id=desired.rollout_id,
        manifest=common_pb2.SignedManifest(
            manifest_json=desired.manifest_json, signature=desired.signature, key_id=desired.key_id
        ),
        max_bytes_per_s=max_bytes_per_s,
        attempt=desired.attempt,
    )


def report_args(report: agent_pb2.InstallReport) -> dict[str, object]:
    """Keyword arguments of :func:`controller.rollout.engine.on_install_report` from an InstallReport."""
    return {
        "agent_id": report.agent_id,
        "rollout_id": report.rollout_id,
        "model_name": report.model.name,
        "model_version": report.model.version,
        "from_state": normalize_install_state(report.from_state),
        "to_state": normalize_install_state(report.to_state),
        "event": report.event,
        "message": report.message,
        "ts": report.timestamp or None,
        "attempt": report.attempt,
    }
