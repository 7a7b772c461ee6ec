"""AdminService: thin gRPC methods for the admin CLI; each calls one domain function."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from controller.api.convert import device_to_pb, profile_to_pb
from controller.core.app import ControllerApp
from controller.core.auth import create_enrollment_token
from controller.fleet import devices as fleet
from shared.pb import admin_pb2, admin_pb2_grpc, common_pb2

_TERMINAL_JOB_STATES = {admin_pb2.JOB_STATE_SUCCEEDED, admin_pb2.JOB_STATE_FAILED, admin_pb2.JOB_STATE_CANCELLED}


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    # --- fleet -----------------------------------------------------------------------------------------
    def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListDevicesResponse:
        now, after = time.time(), self.app.settings.offline_after_s
        devices = fleet.list_devices(self.app.store, request.profile)
        return admin_pb2.ListDevicesResponse(devices=[device_to_pb(d, fleet.is_online(d, after, now)) for d in devices])

    def ListProfiles(
        self, request: admin_pb2.ListProfilesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListProfilesResponse:
        profiles = sorted(self.app.catalog.all().values(), key=lambda p: p.name)
        return admin_pb2.ListProfilesResponse(profiles=[profile_to_pb(p) for p in profiles])

    def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        token, expires = create_enrollment_token(self.app.store, request.ttl_s, request.max_uses, request.description)
        fingerprint = self.app.tls.ca_fingerprint if self.app.tls else ""
        return admin_pb2.CreateTokenResponse(token=token, expires_unix=expires, ca_fingerprint=fingerprint)

    def ResetDevice(self, request: admin_pb2.DeviceRequest, context: grpc.ServicerContext) -> admin_pb2.Device:
        device = fleet.reset_credentials(self.app.store, request.agent_id)
        self.app.agents.forget(device.agent_id)
        return device_to_pb(device, fleet.is_online(device, self.app.settings.offline_after_s))

    # --- build jobs ------------------------------------------------------------------------------------
    def SubmitBuild(self, request: admin_pb2.SubmitBuildRequest, context: grpc.ServicerContext) -> admin_pb2.Job:
        from controller.factory.pb import job_to_pb

        return job_to_pb(self.app.jobs.submit(request.recipe_yaml, request.recipe_path))

    def GetJob(self, request: admin_pb2.GetJobRequest, context: grpc.ServicerContext) -> admin_pb2.Job:
        from controller.factory.pb import job_to_pb
        from controller.loop.promotion import promotion_of

        return job_to_pb(self.app.jobs.get(request.job_id), promotion_of(self.app, request.job_id))

    def ListJobs(self, request: admin_pb2.ListJobsRequest, context: grpc.ServicerContext) -> admin_pb2.ListJobsResponse:
        from controller.factory.pb import job_to_pb

        return admin_pb2.ListJobsResponse(jobs=[job_to_pb(j) for j in self.app.jobs.list(request.limit or 50)])

    def CancelJob(self, request: admin_pb2.GetJobRequest, context: grpc.ServicerContext) -> admin_pb2.Job:
        from controller.factory.pb import job_to_pb

        return job_to_pb(self.app.jobs.cancel(request.job_id))

    def WatchJob(self, request: admin_pb2.GetJobRequest, context: grpc.ServicerContext) -> Iterator[admin_pb2.Job]:
        from controller.factory.pb import job_to_pb

        last = None
        while context.is_active():
            job = job_to_pb(self.app.jobs.get(request.job_id))
            if job != last:
                yield job
                last = job
            if job.state in _TERMINAL_JOB_STATES:
                return
            time.sleep(0.5)

    # --- registry --------------------------------------------------------------------------------------
    def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListModelsResponse:
        from controller.registry.pb import model_version_to_pb

        models = self.app.registry.list_models(request.name or None)
        return admin_pb2.ListModelsResponse(models=[model_version_to_pb(m) for m in models])

    def GetModel(self, request: common_pb2.ModelRef, context: grpc.ServicerContext) -> admin_pb2.ModelVersion:
        from controller.registry.pb import model_version_to_pb

        return model_version_to_pb(self.app.registry.get_model(request.name, request.version))

    def VerifyModels(
        self, request: admin_pb2.VerifyModelsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.VerifyModelsResponse:
        from controller.registry.integrity import verify_registry
        from controller.registry.pb import verify_report_to_pb

        app = self.app
        report = verify_registry(app.store, app.blobs, app.manifest_public_pem, request.name, request.version)
        return verify_report_to_pb(report)

    def PruneBlobs(
        self, request: admin_pb2.PruneBlobsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PruneBlobsResponse:
        from controller.factory.backends.packed import referenced
        from controller.factory.worker import data_paths
        from controller.registry.prune import DEFAULT_MIN_AGE_S, prune

        min_age = request.min_age_s or DEFAULT_MIN_AGE_S
        cached = referenced(data_paths(self.app.settings.data_dir)["stage_cache"])
        r = prune(self.app.store, self.app.blobs, request.keep, request.dry_run, min_age, cached)
        removed = [admin_pb2.PrunedBlob(sha256=b.sha256, size=b.size) for b in r.removed]
        return admin_pb2.PruneBlobsResponse(
            removed=removed,
            kept=r.kept,
            bytes_freed=r.bytes_freed,
            removed_versions=r.removed_versions,
            dry_run=r.dry_run,
        )

    # --- rollouts --------------------------------------------------------------------------------------
    def CreateRollout(
        self, request: admin_pb2.CreateRolloutRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Rollout:
        from controller.rollout import engine, pb

        rollout_id = engine.create_rollout(self.app.store, pb.spec_from_pb(request))
        return pb.rollout_to_pb(engine.get_rollout(self.app.store, rollout_id))

    def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRolloutsResponse:
        from controller.rollout import engine, pb

        rollouts = engine.list_rollouts(self.app.store, request.limit or 20)
        return admin_pb2.ListRolloutsResponse(rollouts=[pb.rollout_to_pb(r) for r in rollouts])

    def _rollout_action(self, action: str, rollout_id: str) -> admin_pb2.Rollout:
        from controller.rollout import engine, pb

        getattr(engine, action)(self.app.store, rollout_id)
        return pb.rollout_to_pb(engine.get_rollout(self.app.store, rollout_id))

    def GetRollout(self, request: admin_pb2.RolloutRequest, context: grpc.ServicerContext) -> admin_pb2.Rollout:
        from controller.rollout import engine, pb

        return pb.rollout_to_pb(engine.get_rollout(self.app.store, request.rollout_id))

    def PauseRollout(self, request: admin_pb2.RolloutRequest, context: grpc.ServicerContext) -> admin_pb2.Rollout:
        return self._rollout_action("pause", request.rollout_id)

    def ResumeRollout(self, request: admin_pb2.RolloutRequest, context: grpc.ServicerContext) -> admin_pb2.Rollout:
        from controller.rollout import engine, pb

        # With the blob store: blobs agents reported bad are re-hashed first (resuming is refused while bad).
        return pb.rollout_to_pb(engine.resume(self.app.store, request.rollout_id, blobs=self.app.blobs))

    def AbortRollout(self, request: admin_pb2.RolloutRequest, context: grpc.ServicerContext) -> admin_pb2.Rollout:
        return self._rollout_action("abort", request.rollout_id)

    def RollbackRollout(self, request: admin_pb2.RolloutRequest, context: grpc.ServicerContext) -> admin_pb2.Rollout:
        return self._rollout_action("rollback", request.rollout_id)

    # --- drift, retrain, reports -----------------------------------------------------------------------
    def ListDriftEvents(
        self, request: admin_pb2.ListDriftEventsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListDriftEventsResponse:
        from controller.drift import events as drift_events
        from controller.drift.pb import event_to_pb as drift_event_to_pb

        events = drift_events.list_events(self.app.store, request.profile or None, request.limit or 50)
        return admin_pb2.ListDriftEventsResponse(events=[drift_event_to_pb(e) for e in events])

    def GetDriftEvent(
        self, request: admin_pb2.DriftEventRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DriftEvent:
        from controller.drift import events as drift_events
        from controller.drift.pb import event_to_pb as drift_event_to_pb

        return drift_event_to_pb(drift_events.get_event(self.app.store, request.event_id))

    def TriggerRetrain(self, request: admin_pb2.TriggerRetrainRequest, context: grpc.ServicerContext) -> admin_pb2.Job:
        from controller.factory.pb import job_to_pb
        from controller.loop.retrain import trigger_retrain

        return job_to_pb(trigger_retrain(self.app, request.model_name, request.profile, request.reason))

    def RenderReport(self, request: admin_pb2.ReportRequest, context: grpc.ServicerContext) -> admin_pb2.ReportResponse:
        from controller.reports.render import render_report

        report = render_report(self.app.store, request.since_s or 24 * 3600, request.html, request.png)
        return admin_pb2.ReportResponse(summary_text=report.summary_text, html=report.html or b"", pngs=report.pngs)

    def ControllerStatus(
        self, request: admin_pb2.ControllerStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ControllerStatusResponse:
        from controller.scheduler.status import controller_status_pb

        return controller_status_pb(self.app.store, self.app.settings.replica_id)
