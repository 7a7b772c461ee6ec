"""Training threads: chosen from the cores this process may use and the jobs running at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from controller.factory.training.threads import available_cores, cgroup_cpu_limit, choose_threads, running_jobs
from controller.store.db import Store
from controller.store.tables import Job


def test_cgroup_quota_caps_the_affinity_set(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cores(tmp_path) == min(len(os.sched_getaffinity(0)), 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(v1) == 0.5 and available_cores(v1) == 1


def test_threads_split_the_cores_between_running_jobs() -> None:
    assert choose_threads(0, cores=8, jobs=1).threads == 8
    assert choose_threads(0, cores=8, jobs=3).threads == 2
    assert choose_threads(0, cores=2, jobs=5).threads == 1
    explicit = choose_threads(3, cores=2, jobs=2)
    assert explicit.threads == 3 and "num_threads in the recipe" in explicit.describe()
    assert "2 cores available / 2 job(s) running" in choose_threads(0, cores=2, jobs=2).describe()
    # a machine kept busy by other processes: fewer threads (the load includes this process)
    assert choose_threads(0, cores=8, jobs=1, load=1.0).threads == 8
    assert choose_threads(0, cores=8, jobs=1, load=5.5).threads == 4
    assert choose_threads(0, cores=2, jobs=1, load=1.2).threads == 2 and choose_threads(0, 2, 1, 1.6).threads == 1
    assert choose_threads(0, cores=2, jobs=1, load=6.0).threads == 1
    assert "load 6.0" in choose_threads(0, cores=2, jobs=1, load=6.0).describe()


def test_running_jobs_are_counted_in_the_job_table(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    registry = type("R", (), {"store": store})()
    assert running_jobs({}) == 1  # no controller: this job alone
    with store.session() as s:
        for i, state in enumerate(("RUNNING", "RUNNING", "QUEUED", "SUCCEEDED")):
            s.add(Job(job_id=f"j{i}", kind="build", state=state, recipe_yaml="", created_at=time.time()))
    assert running_jobs({"registry": registry}) == 2
    store.close()


def test_a_training_stage_chooses_and_shows_its_threads(tmp_path: Path) -> None:
    import torch

    from controller.factory.stage import StageContext
    from controller.factory.training.setup import start_training

    seen: list = []
    ctx = StageContext(tmp_path, {}, progress=seen.append)
    before = torch.get_num_threads()
    try:
        start_training(ctx, "train-student", 1)
        assert torch.get_num_threads() == 1
        assert [(p.stage, p.message) for p in seen] == [
            ("train-student", f"threads: 1 (num_threads in the recipe; {available_cores()} cores available)")
        ]
    finally:
        torch.set_num_threads(before)


def test_a_ray_task_uses_the_cpus_ray_assigned_whatever_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's load includes the Ray head's own daemons: it must not shrink what Ray granted the task."""
    import torch

    from controller.factory.training import threads

    monkeypatch.setattr(threads, "machine_load", lambda: 5.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(0, {"assigned_cpus": 2}).threads == 2
        assert torch.get_num_threads() == 2
        assert threads.configure_threads(0, {"assigned_cpus": 8}).threads == 4  # never more than the machine has
        assert threads.configure_threads(0, {}).threads == 1  # no grant: the load decides
        assert threads.configure_threads(3, {"assigned_cpus": 2}).threads == 3  # num_threads in the recipe wins
    finally:
        torch.set_num_threads(before)
