"""Build jobs on a real local Ray head: the tiny recipe end to end with a killed (and retried) training worker,
the failure path when the retry dies too, and cancel. The JobManager, worker process, SQLite and stages are real.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.factory.backends import packed
from controller.factory.jobs import FINAL_STATES, JobManager
from controller.store.db import Store
from controller.store.tables import Job
from tests.fixtures.ray import RayHead
from tests.integration.factory.test_jobs import PROFILES, registry_of, tiny_recipe

pytestmark = pytest.mark.slow


def attempts(jobs: JobManager, job_id: str, step: str) -> list[dict]:
    path = jobs.data_dir / "jobs" / job_id / "ray-tasks.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["step"] == step]


def watch(jobs: JobManager, job_id: str, until, timeout: float = 600) -> tuple[Job, list[Job]]:  # type: ignore[no-untyped-def]
    """Poll the job row until ``until(job)`` or a final state; returns the last row and every row seen."""
    seen: list[Job] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = jobs.get(job_id)
        seen.append(job)
        if until(job) or job.state in FINAL_STATES:
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {jobs.get(job_id).state} ({jobs.get(job_id).message}) after {timeout} s")


def training(job: Job) -> bool:
    return job.stage == "train-teacher" and job.step > 0


def test_build_on_ray_retries_a_killed_training_worker_and_publishes(ray_jobs: JobManager) -> None:
    job_id = ray_jobs.submit(yaml.safe_dump(tiny_recipe(teacher_steps=300))).job_id
    job, seen = watch(ray_jobs, job_id, training)
    assert job.state == "RUNNING", job.error
    first = attempts(ray_jobs, job_id, "train-teacher")
    assert len(first) == 1 and first[0]["pid"] != job.pid  # the stage runs in a Ray worker, not the job worker
    os.kill(first[0]["pid"], signal.SIGKILL)

    job, rest = watch(ray_jobs, job_id, lambda j: False)
    seen += rest
    assert job.state == "SUCCEEDED", job.error
    retry = attempts(ray_jobs, job_id, "train-teacher")
    assert [r["attempt"] for r in retry] == [1, 2] and retry[1]["pid"] != first[0]["pid"]
    summary = json.loads(job.summary_json)
    assert {"train-teacher", "distill-data", "train-student", "publish"} <= set(summary["steps"]["ran"])
    assert (job.result_name, job.result_version) == ("tiny-demo", "1")
    assert registry_of(ray_jobs).get_model("tiny-demo", "1").job_id == job_id
    # progress from the Ray workers reached the row, and the counter reads 1/N .. N/N
    assert any(r.stage == "train-teacher" and r.step > 0 and r.total_steps == 300 for r in seen)
    assert min(r.stage_index for r in seen if r.stage) == 0
    assert (job.stage, job.stage_index, job.stage_count) == ("publish", job.stage_count - 1, job.stage_count)
    log = (ray_jobs.data_dir / "jobs" / job_id / "job.log").read_text()
    assert "Ray worker pid" in log and "ray-task." in log  # the worker's log records are in the job log
    assert_outputs_never_on_the_controller(ray_jobs, job_id)


def assert_outputs_never_on_the_controller(jobs: JobManager, job_id: str, blobs: Any = None) -> None:
    """Every step that ran on a Ray worker left its files in the blob store: the controller's stage cache and
    job folder hold their indexes and nothing else, the published files are those blobs, and the workers
    removed their scratch folders."""
    entries = [p for p in (jobs.data_dir / "cache" / "stages").iterdir() if p.is_dir()]
    assert len(entries) >= 5
    for entry in entries:
        assert sorted(p.name for p in entry.iterdir()) == sorted([packed.INDEX, "result.json"]), entry
    registry = registry_of(jobs)
    if blobs is not None:
        registry.blobs = blobs
    indexed = packed.referenced(jobs.data_dir / "cache" / "stages")
    assert indexed and all(registry.blobs.exists(sha) for sha in indexed)
    published = registry.get_model("tiny-demo", "1").variants
    files = {f.sha256 for v in published for f in registry.signed_files("tiny-demo", "1", v.profile).files}
    assert files <= indexed  # publish registered the blobs the workers stored, by digest
    heavy = [p for p in (jobs.data_dir / "jobs" / job_id).rglob("*") if p.suffix in (".onnx", ".data", ".safetensors")]
    assert heavy == []
    scratch = Path(tempfile.gettempdir()) / "slmops-ray" / job_id
    assert not scratch.exists() or not any(scratch.iterdir())


def test_worker_killed_twice_fails_the_job_with_the_workers_error(
    tmp_path: Path, ray_head: RayHead, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    store = Store(f"sqlite:///{data / 'controller.db'}") if data.mkdir() is None else None
    assert store is not None
    jobs = JobManager(store, data, lambda: PROFILES, poll_interval_s=0.2, jobs=ray_head.client_address)
    jobs.start()
    try:
        job_id = jobs.submit(yaml.safe_dump(tiny_recipe(teacher_steps=5000))).job_id
        for attempt in (1, 2):
            job, _ = watch(jobs, job_id, lambda j, n=attempt: len(attempts(jobs, j.job_id, "train-teacher")) >= n)
            assert job.state == "RUNNING", job.error
            os.kill(attempts(jobs, job_id, "train-teacher")[-1]["pid"], signal.SIGKILL)
        job, _ = watch(jobs, job_id, lambda j: False, timeout=120)
        assert job.state == "FAILED"
        last = attempts(jobs, job_id, "train-teacher")[-1]
        assert "train-teacher" in job.error and f"Ray worker (pid {last['pid']} on" in job.error
        assert "attempt 2) died" in job.error and "WorkerCrashedError" in job.error
        assert registry_of(jobs).list_models() == []
    finally:
        jobs.stop()
        store.close()


def test_cancel_stops_the_ray_task_and_leaves_the_registry_unchanged(ray_jobs: JobManager) -> None:
    job_id = ray_jobs.submit(yaml.safe_dump(tiny_recipe(teacher_steps=5000))).job_id
    job, _ = watch(ray_jobs, job_id, training)
    pid = attempts(ray_jobs, job_id, "train-teacher")[0]["pid"]
    started = time.monotonic()
    ray_jobs.cancel(job_id)
    job, _ = watch(ray_jobs, job_id, lambda j: False, timeout=60)
    assert job.state == "CANCELLED" and time.monotonic() - started < 20
    title = Path(f"/proc/{pid}/cmdline")
    assert not title.exists() or not title.read_bytes().startswith(b"ray::execute")  # the task is not running
    assert registry_of(ray_jobs).list_models() == []


def test_build_on_ray_with_an_s3_store_keeps_every_byte_off_the_controller(
    tmp_path: Path, ray_head: RayHead, s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster set-up the README describes: stage outputs go worker -> S3 -> worker, publish registers them
    by digest, and the controller's data dir holds no blob at all."""
    from controller.core.settings import ControllerSettings
    from controller.registry.blobstore import open_for_data_dir, write_config

    data = tmp_path / "data"
    data.mkdir()
    s3 = {"s3_bucket": s3_bucket, "s3_endpoint_url": s3_server.endpoint_url, "s3_region": s3_server.region}
    write_config(ControllerSettings(data_dir=data, blob_store="s3", s3_prefix="ray/blobs", **s3))
    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs_address)
    store = Store(f"sqlite:///{data / 'controller.db'}")
    jobs = JobManager(store, data, lambda: PROFILES, poll_interval_s=0.2, jobs="ray:auto")
    jobs.start()
    try:
        job, _ = watch(jobs, jobs.submit(yaml.safe_dump(tiny_recipe())).job_id, lambda j: False)
        assert job.state == "SUCCEEDED", job.error
        s3_store = open_for_data_dir(data)
        assert s3_store.description.startswith("s3")
        assert_outputs_never_on_the_controller(jobs, job.job_id, s3_store)
        local_blobs = data / "artifacts"
        assert not local_blobs.exists() or not any(p.is_file() for p in local_blobs.rglob("*"))
    finally:
        jobs.stop()
        store.close()
