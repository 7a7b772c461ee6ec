"""JobManager end to end: real worker processes, a real SQLite file, the real stages on a tiny recipe."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.factory.jobs import FINAL_STATES, JobManager
from controller.factory.pb import job_to_pb
from controller.factory.tasks import get_task
from controller.registry.blobs import BlobStore
from controller.registry.registry import Registry
from controller.store.db import Store
from controller.store.tables import Job
from shared.manifest import load_or_create_signing_key, verify
from shared.pb import admin_pb2
from shared.profiles import bundled_profiles_dir, load_profiles

PROFILES = load_profiles(bundled_profiles_dir())


def tiny_recipe(teacher_steps: int = 4) -> dict:
    return {
        "name": "tiny-demo",
        "data": {"task": "smart-building", "train_size": 48, "validation_size": 8, "test_size": 6},
        "teacher": {
            "train": {
                "spec": {
                    "arch": "llama",
                    "hidden_size": 64,
                    "num_layers": 1,
                    "num_heads": 2,
                    "max_position_embeddings": 96,
                },
                "max_steps": teacher_steps,
                "batch_size": 16,
                "learning_rate": 0.003,
                "vocab_size": 400,
                "max_seq_len": 96,
                "log_every": 1,
            },
            "max_new_tokens": 12,
            "batch_size": 48,
        },
        "student": {
            "init": {
                "arch": "llama",
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 2,
                "max_position_embeddings": 96,
            },
            "max_steps": 3,
            "batch_size": 16,
            "learning_rate": 0.003,
            "max_seq_len": 96,
        },
        "profiles": [
            {"name": "cpu-int4", "builder_options": {"op_types_to_quantize": ["MatMul", "Gather"]}},
            "cpu-fp32",
        ],
        "evaluation": {"limit": 4, "max_new_tokens": 12, "golden": 2, "warmup": 1, "threads": 1},
    }


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'controller.db'}")
    jobs = JobManager(store, data, lambda: PROFILES, poll_interval_s=0.2, cancel_grace_s=5)
    jobs.start()
    yield jobs
    jobs.stop()
    store.close()


def wait(
    jobs: JobManager, job_id: str, until: tuple[str, ...] = FINAL_STATES, timeout: float = 600, stage: str = ""
) -> Job:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = jobs.get(job_id)
        if job.state in until and (not stage or job.stage == stage or job.state in FINAL_STATES):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {jobs.get(job_id).state} after {timeout} s")


def registry_of(jobs: JobManager) -> Registry:
    key = load_or_create_signing_key(jobs.data_dir / "keys" / "manifest_ed25519.pem")
    return Registry(jobs.store, BlobStore(jobs.data_dir / "artifacts"), key)


@pytest.mark.slow
def test_build_job_end_to_end_then_rerun_from_cache(manager: JobManager) -> None:
    job = wait(manager, manager.submit(yaml.safe_dump(tiny_recipe()), "/tmp/tiny.yaml").job_id, timeout=900)
    assert job.state == "SUCCEEDED", job.error
    ran = " ".join(json.loads(job.summary_json)["steps"]["ran"])  # polling may miss short stages; the job records them
    assert all(stage in ran for stage in ("train-teacher", "distill-data", "train-student", "quantize", "evaluate"))
    assert (job.result_name, job.result_version) == ("tiny-demo", "1")
    summary = json.loads(job.summary_json)
    labels = {m["label"] for m in summary["models"]}
    assert labels == {"cpu-int4", "cpu-fp32", "student-fp32", "teacher-fp32"}
    assert summary["figures"]["int4_size_reduction"] > 0.5  # real builds: int4 weights far smaller
    assert summary["figures"]["memory_reduction"] > 0  # the student is smaller than the teacher
    registry = registry_of(manager)
    info = registry.get_model("tiny-demo", "1")
    assert info.profiles == ["cpu-fp32", "cpu-int4"] and info.job_id == job.job_id
    assert len(info.lineage["data_hash"]) == 64 and info.lineage["teacher"]["kind"] == "trained"
    for variant in info.variants:
        manifest = registry.verify_variant(variant)
        assert manifest.golden and manifest.metrics["n"] == 4
        assert manifest.output_schema == get_task("smart-building").output_schema()  # agents can enforce it
        assert verify(variant.manifest_json, variant.signature, registry.public_key_pem).ref == "tiny-demo:1"
    pb = job_to_pb(job)
    assert pb.state == admin_pb2.JOB_STATE_SUCCEEDED and pb.result.version == "1"
    # the step history: every step started and ran, in plan order, each once, with its 0-based index
    history = [(e.index, e.step, e.status) for e in pb.steps]
    ids = [e.step for e in pb.steps if e.status == "ran"]
    assert len(ids) == len(set(ids)) == pb.stage_count and ids[-1] == "publish"
    assert history == [(i, sid, what) for i, sid in enumerate(ids) for what in ("started", "ran")]

    again = wait(manager, manager.submit(yaml.safe_dump(tiny_recipe()), "/tmp/tiny.yaml").job_id)
    assert again.state == "SUCCEEDED" and again.result_version == "2"
    assert json.loads(again.summary_json)["steps"]["ran"] == ["publish"]  # everything else from the cache
    statuses = [e.status for e in job_to_pb(again).steps]
    assert statuses == ["cached"] * (len(ids) - 1) + ["started", "ran"]


def test_cancel_running_job_leaves_registry_unchanged(manager: JobManager) -> None:
    job = manager.submit(yaml.safe_dump(tiny_recipe(teacher_steps=5000)))
    running = wait(manager, job.job_id, ("RUNNING",), stage="train-teacher", timeout=300)
    assert running.pid > 0
    time.sleep(1.0)
    started = time.monotonic()
    manager.cancel(job.job_id)
    done = wait(manager, job.job_id, timeout=60)
    assert done.state == "CANCELLED", done.error
    assert time.monotonic() - started < 15
    assert registry_of(manager).list_models() == []
    assert manager.cancel(job.job_id).state == "CANCELLED"  # idempotent
    queued = manager.submit(yaml.safe_dump(tiny_recipe()))
    manager.stop(terminate_running=True)
    # a queued job cancelled before any worker took it never runs
    assert manager.cancel(queued.job_id).state in ("CANCELLED", "FAILED")


def test_crashed_worker_marks_job_failed(manager: JobManager) -> None:
    job = manager.submit(yaml.safe_dump(tiny_recipe(teacher_steps=5000)))
    running = wait(manager, job.job_id, ("RUNNING",), stage="train-teacher", timeout=300)
    os.kill(running.pid, signal.SIGKILL)
    done = wait(manager, job.job_id, timeout=30)
    assert done.state == "FAILED" and "exited with code -9" in done.error


def test_recover_marks_orphaned_running_jobs_failed(sqlite_store: Store, tmp_path: Path) -> None:
    with sqlite_store.session() as s:
        s.add(Job(job_id="j-dead", state="RUNNING", pid=2**22 + 12345, created_at=1.0))
        s.add(Job(job_id="j-mine", state="RUNNING", pid=os.getpid(), created_at=2.0))  # alive, not a worker
        s.add(Job(job_id="j-queued", state="QUEUED", created_at=3.0))
    jobs = JobManager(sqlite_store, tmp_path / "data", lambda: PROFILES)
    assert sorted(jobs.recover()) == ["j-dead", "j-mine"]
    dead = jobs.get("j-dead")
    assert dead.state == "FAILED" and "controller restarted" in dead.error
    assert jobs.get("j-queued").state == "QUEUED"
    assert [j.job_id for j in jobs.list(limit=2)] == ["j-queued", "j-mine"]
