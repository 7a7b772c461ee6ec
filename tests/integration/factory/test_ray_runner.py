"""RayTaskRunner against a real local Ray head: generic tasks, errors, cancel, resources, nested submission."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.factory.backends import runner_from_spec
from controller.factory.backends.ray import RayTaskRunner
from controller.factory.spec import Resources
from shared.errors import UnsupportedOnThisMachine
from tests.fixtures.ray import RayHead


@pytest.fixture
def runner(ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> Iterator[RayTaskRunner]:
    import ray

    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs_address)
    made = runner_from_spec("ray:auto")
    assert isinstance(made, RayTaskRunner) and made.describe() == f"ray at {ray_head.gcs_address}"
    yield made
    made.close()
    ray.shutdown()


def test_tasks_run_on_ray_workers_with_their_resources_and_errors(runner: RayTaskRunner) -> None:
    def where(x: int) -> tuple[int, int, str]:
        return os.getpid(), x * 2, os.environ.get("OMP_NUM_THREADS", "")

    pid, doubled, threads = runner.submit(where, 21, resources=Resources(num_cpus=2)).result(timeout=60)
    assert pid != os.getpid() and doubled == 42 and threads == "2"  # Ray sized the task's threads to its CPUs

    def boom() -> None:
        raise KeyError("no such trial")

    with pytest.raises(KeyError, match="no such trial"):
        runner.submit(boom, resources=Resources()).result(timeout=60)
    assert runner.parallelism(Resources(num_cpus=1)) == 2 and runner.parallelism(Resources(num_cpus=2)) == 1
    assert runner.options(Resources(num_cpus=8))["num_cpus"] == 2  # lowered to the largest node
    assert runner.options(Resources())["max_retries"] == 1
    with pytest.raises(UnsupportedOnThisMachine, match="GPU"):
        runner.options(Resources(num_gpus=1))


def test_cancel_kills_a_running_task(runner: RayTaskRunner, tmp_path: Path) -> None:
    from ray.exceptions import TaskCancelledError

    def sleep_then(pid_file: str) -> int:
        with open(pid_file, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
        return 0

    pid_file = tmp_path / "pid"
    future = runner.submit(sleep_then, str(pid_file), resources=Resources())
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    runner.cancel(future)
    with pytest.raises(TaskCancelledError):
        future.result(timeout=30)
    for _ in range(100):  # force-cancel kills the worker process
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the cancelled task's worker {pid} still runs")


def test_a_task_can_submit_through_the_pickled_runner_without_deadlock(runner: RayTaskRunner) -> None:
    copy = pickle.loads(pickle.dumps(runner))
    assert copy.address == runner.address

    def outer(inner_runner: RayTaskRunner) -> list[int]:
        # holds 1 of the 2 CPUs while waiting for two 2-CPU tasks: Ray must lend it while the result is awaited
        futures = [inner_runner.submit(os.getpid, resources=Resources(num_cpus=2)) for _ in range(2)]
        return [f.result(timeout=120) for f in futures]

    pids = runner.submit(outer, runner, resources=Resources(num_cpus=1)).result(timeout=180)
    assert len(pids) == 2 and os.getpid() not in pids
