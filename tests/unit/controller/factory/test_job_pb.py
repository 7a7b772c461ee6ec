"""Job -> protobuf at the API boundary."""

from __future__ import annotations

from controller.factory.pb import job_to_pb
from controller.store.tables import Job
from shared.pb import admin_pb2


def test_job_to_pb_states_and_result() -> None:
    job = Job(
        job_id="j1",
        kind="retrain",
        state="RUNNING",
        stage="train-student",
        stage_index=4,
        stage_count=13,
        step=20,
        total_steps=300,
        loss=0.5,
        eta_s=12.0,
        message="lr 1e-3",
        created_at=1.0,
        updated_at=2.0,
        drift_event_id="d1",
    )
    pb = job_to_pb(job)
    assert pb.state == admin_pb2.JOB_STATE_RUNNING and pb.stage_index == 4 and pb.total_steps == 300
    assert not pb.HasField("result") and pb.drift_event_id == "d1"
    job.state, job.result_name, job.result_version, job.summary_json = "SUCCEEDED", "demo", "2", "{}"
    pb = job_to_pb(job)
    assert pb.state == admin_pb2.JOB_STATE_SUCCEEDED and (pb.result.name, pb.result.version) == ("demo", "2")
    assert job_to_pb(Job(job_id="x", state="WEIRD")).state == admin_pb2.JOB_STATE_UNSPECIFIED
