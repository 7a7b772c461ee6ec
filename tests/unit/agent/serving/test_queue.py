"""The bounded admission queue: capacity, 429 figures, skipping cancelled jobs, answering after bookkeeping."""

from __future__ import annotations

import threading

import pytest

from agent.serving.errors import QueueFull
from agent.serving.queue import Job, WorkQueue


def _blocking_job(release: threading.Event, started: threading.Event | None = None) -> Job:
    def run(job: Job) -> None:
        if started is not None:
            started.set()
        release.wait(5)

    return Job(run=run, cancel=threading.Event())


def test_capacity_is_workers_plus_queue_and_full_raises_with_retry_after() -> None:
    q = WorkQueue(workers=1, max_queue=1)
    release, started = threading.Event(), threading.Event()
    try:
        q.submit(_blocking_job(release, started))
        assert started.wait(5)
        q.submit(_blocking_job(release))
        assert q.depth == 1 and q.running == 1
        with pytest.raises(QueueFull) as err:
            q.submit(_blocking_job(release))
        assert err.value.retry_after_s >= 1
        assert err.value.depth == 2
        assert "retry after" in err.value.message
    finally:
        release.set()
        assert q.wait_idle(5)
        q.stop()
    assert q.pending == 0


def test_a_job_cancelled_while_waiting_is_skipped_not_run() -> None:
    q = WorkQueue(workers=1, max_queue=4)
    release, started = threading.Event(), threading.Event()
    ran, skipped = [], []
    try:
        q.submit(_blocking_job(release, started))
        assert started.wait(5)
        cancel = threading.Event()
        q.submit(Job(run=lambda j: ran.append(j), cancel=cancel, on_skip=lambda j: skipped.append(j)))
        cancel.set()
        release.set()
        assert q.wait_idle(5)
    finally:
        q.stop()
    assert ran == [] and len(skipped) == 1
    assert skipped[0].queue_wait_s > 0


def test_workers_run_jobs_concurrently() -> None:
    q = WorkQueue(workers=3, max_queue=0)
    barrier = threading.Barrier(3, timeout=5)
    done = []

    def run(job: Job) -> None:
        barrier.wait()  # only passes when three jobs run at the same time
        done.append(job)

    try:
        for _ in range(3):
            q.submit(Job(run=run, cancel=threading.Event()))
        assert q.wait_idle(5)
    finally:
        q.stop()
    assert len(done) == 3


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkQueue(workers=0)
    with pytest.raises(ValueError):
        WorkQueue(workers=1, max_queue=-1)


def test_the_answer_goes_out_once_the_worker_is_counted_free() -> None:
    """``Job.then`` runs after the bookkeeping: a client that asks again at once is not refused."""
    q = WorkQueue(workers=1, max_queue=0)
    seen: list[tuple[int, int]] = []
    answered = threading.Event()

    def then() -> None:
        seen.append((q.pending, q.running))
        q.submit(Job(run=lambda _: answered.set(), cancel=threading.Event()))  # the "next request": admitted

    def run(job: Job) -> None:
        job.then = then

    def failing_then() -> None:
        raise RuntimeError("callback bug")

    try:
        q.submit(Job(run=run, cancel=threading.Event()))
        assert answered.wait(5)
        assert seen == [(0, 0)]
        q.submit(Job(run=lambda job: setattr(job, "then", failing_then), cancel=threading.Event()))
        assert q.wait_idle(5)
        again = threading.Event()
        q.submit(Job(run=lambda _: again.set(), cancel=threading.Event()))  # the worker survived the failure
        assert again.wait(5)
    finally:
        q.stop()


def test_one_request_at_a_time_stays_on_one_warm_worker() -> None:
    q = WorkQueue(workers=3, max_queue=0)
    names: list[str] = []
    try:
        for _ in range(6):
            done = threading.Event()
            q.submit(
                Job(
                    run=lambda _, d=done: names.append(threading.current_thread().name) or d.set(),
                    cancel=threading.Event(),
                )
            )
            assert done.wait(5)
            assert q.wait_idle(5)
    finally:
        q.stop()
    assert len(names) == 6 and len(set(names[1:])) == 1  # the worker idle last takes the next job
