"""Protobuf conversion for jobs (used only at the API boundary)."""

from __future__ import annotations

import json

from controller.store.tables import Job
from shared.pb import admin_pb2, common_pb2

_STATES = {
    "QUEUED": admin_pb2.JOB_STATE_QUEUED,
    "RUNNING": admin_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": admin_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": admin_pb2.JOB_STATE_FAILED,
    "CANCELLED": admin_pb2.JOB_STATE_CANCELLED,
}


def job_state_to_pb(state: str) -> int:
    return _STATES.get(state, admin_pb2.JOB_STATE_UNSPECIFIED)


def job_to_pb(job: Job, promotion: str = "") -> admin_pb2.Job:
    """``promotion``: the closed loop's decision on a drift-triggered job's result (``controller.loop.promotion``)."""
    msg = admin_pb2.Job(
        job_id=job.job_id,
        kind=job.kind,
        state=job_state_to_pb(job.state),
        stage=job.stage,
        stage_index=max(0, job.stage_index),
        stage_count=max(0, job.stage_count),
        step=max(0, job.step),
        total_steps=max(0, job.total_steps),
        loss=job.loss,
        eta_s=job.eta_s,
        message=job.message,
        error=job.error,
        created_unix=job.created_at,
        updated_unix=job.updated_at,
        summary_json=job.summary_json,
        drift_event_id=job.drift_event_id,
        promotion=promotion,
    )
    if job.result_name:
        msg.result.CopyFrom(common_pb2.ModelRef(name=job.result_name, version=job.result_version))
    msg.steps.extend(step_events(job.steps_json))
    return msg


def step_events(steps_json: str) -> list[admin_pb2.StepEvent]:
    """The row's step history ([] when empty or unreadable: it is progress display, never worth an error)."""
    try:
        raw = json.loads(steps_json) if steps_json else []
    except ValueError:
        return []
    return [
        admin_pb2.StepEvent(
            index=max(0, int(e.get("index", 0))),
            step=str(e.get("step", "")),
            status=str(e.get("status", "")),
            seconds=float(e.get("seconds", 0.0)),
            at_unix=float(e.get("at", 0.0)),
        )
        for e in raw
        if isinstance(e, dict)
    ]
