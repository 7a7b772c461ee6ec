"""AgentService: thin gRPC methods over fleet, rollout, transfer and telemetry domain code."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from controller.api.convert import hardware_from_pb, install_state_name, profile_to_pb
from controller.core.app import ControllerApp
from controller.core.auth import peer_host
from controller.fleet import devices as fleet
from controller.registry.blobstore.base import check_sha
from controller.registry.transfer_pb import stream_artifact
from controller.rollout import engine as rollouts
from controller.telemetry.ingest import ingest_batch
from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated
from shared.pb import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger(__name__)


def _caller(context: grpc.ServicerContext, agent_id: str) -> str:
    """The authenticated agent id; a request naming another agent is refused."""
    meta = dict(context.invocation_metadata() or ())
    caller = meta.get("x-slmops-agent-id", "")
    if agent_id and agent_id != caller:
        raise PermissionDenied(f"agent '{caller}' may not act for agent '{agent_id}'")
    return caller


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    def Enroll(self, request: agent_pb2.EnrollRequest, context: grpc.ServicerContext) -> agent_pb2.EnrollResponse:
        peer = peer_host(context.peer() or "")
        limiter = self.app.enroll_limiter
        if limiter is not None:
            limiter.check(peer, "enrollment attempts")
        try:
            device, secret, profile = fleet.enroll(
                self.app.store,
                self.app.catalog.all(),
                request.enrollment_token,
                hardware_from_pb(request.hardware),
                request.pinned_profile,
                request.previous_agent_id,
                request.previous_agent_secret,
            )
        except (Unauthenticated, PermissionDenied) as exc:
            if limiter is not None:
                limiter.failed(peer)
            log.warning("enrollment from %s refused: %s", peer, exc.message)
            raise
        self.app.agents.forget(device.agent_id)
        return agent_pb2.EnrollResponse(
            agent_id=device.agent_id,
            agent_secret=secret,
            profile=profile_to_pb(profile),
            manifest_public_key=self.app.manifest_public_pem,
            heartbeat_interval_s=self.app.settings.heartbeat_interval_s,
        )

    def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> agent_pb2.HeartbeatResponse:
        agent_id = _caller(context, request.agent_id)
        state = fleet.DeviceState(
            hardware=hardware_from_pb(request.hardware) if request.HasField("hardware") else {},
            installed_name=request.installed.name,
            installed_version=request.installed.version,
            install_state=install_state_name(request.install_state),
            serving_url=request.serving_url,
            runtime=request.runtime,
            active_provider=request.active_provider,
            healthy=request.healthy,
            rollout_id=request.rollout_id,
        )
        _device, profile, _changed = fleet.heartbeat(self.app.store, self.app.catalog.all(), agent_id, state)
        response = agent_pb2.HeartbeatResponse(heartbeat_interval_s=self.app.settings.heartbeat_interval_s)
        if profile is not None:
            response.profile.CopyFrom(profile_to_pb(profile))
        desired = rollouts.desired_for(self.app.store, agent_id)
        if desired is not None:
            response.desired.CopyFrom(rollouts.desired_to_pb(desired))
        return response

    def DownloadArtifact(
        self, request: agent_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.ArtifactChunk | bytes]:
        if len(request.sha256) != 64:
            raise InvalidArgument("sha256 must be 64 hex characters")
        yield from stream_artifact(
            self.app.blobs,
            request.sha256,
            request.offset,
            request.max_bytes_per_s,
            gate=self.app.download_gate,
            context=context,
            wire=True,
        )

    def GetArtifactUrls(
        self, request: agent_pb2.ArtifactUrlsRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ArtifactUrlsResponse:
        agent_id = _caller(context, "")
        urls = self.app.extras.get("artifact_urls")
        if urls is None:  # no byte path on this controller: the agent falls back to DownloadArtifact
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this controller serves artifacts over gRPC only")
        if len(request.sha256) > 1000:
            raise InvalidArgument("ask for at most 1000 digests at once")
        response = agent_pb2.ArtifactUrlsResponse()
        for sha in request.sha256:
            url, expires = urls.url_for(agent_id, check_sha(sha))
            response.urls.add(sha256=sha, url=url, expires_unix=expires)
        return response

    def ReportInstall(self, request: agent_pb2.InstallReport, context: grpc.ServicerContext) -> common_pb2.Ack:
        agent_id = _caller(context, request.agent_id)
        rollouts.on_install_report(
            self.app.store,
            agent_id,
            request.rollout_id,
            request.model.name,
            request.model.version,
            install_state_name(request.from_state),
            install_state_name(request.to_state),
            request.event,
            request.message[:2000],
            attempt=request.attempt,
        )
        if self.app.scheduler is not None:  # advance waves now rather than at the next interval
            from controller.scheduler.jobs import ROLLOUT_TICK

            self.app.scheduler.wakeup(ROLLOUT_TICK)
        return common_pb2.Ack()

    def ReportTelemetry(
        self, request: agent_pb2.TelemetryBatch, context: grpc.ServicerContext
    ) -> agent_pb2.TelemetryAck:
        agent_id = _caller(context, request.agent_id)
        acked, duplicate = ingest_batch(self.app.store, agent_id, request)
        return agent_pb2.TelemetryAck(acked_seq=acked, duplicate=duplicate)
