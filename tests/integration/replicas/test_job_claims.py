"""Build-job claims on one PostgreSQL schema: replicas racing for the queue each claim a job exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from controller.factory.jobs import claim_next_job
from controller.store.db import Store
from controller.store.tables import Job


@pytest.fixture
def pg_stores(pg_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one fresh PostgreSQL schema: two controller replicas' views of the database."""
    a, b = Store(pg_url), Store(pg_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _queue(store: Store, n: int) -> list[str]:
    ids = [f"job-{i}" for i in range(n)]
    with store.session() as s:
        for i, job_id in enumerate(ids):
            s.add(Job(job_id=job_id, state="QUEUED", created_at=1000.0 + i))
    return ids


def test_two_replicas_claim_each_job_exactly_once(pg_stores: tuple[Store, Store]) -> None:
    ids = _queue(pg_stores[0], 5)
    claims: list[tuple[str, str]] = []
    start = threading.Barrier(4)

    def replica(store: Store, name: str) -> None:
        start.wait()
        while (job := claim_next_job(store, name)) is not None:
            claims.append((job.job_id, name))

    threads = [
        threading.Thread(target=replica, args=(store, f"r{i}-{k}")) for i, store in enumerate(pg_stores) for k in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(job_id for job_id, _ in claims) == ids
    assert max(Counter(job_id for job_id, _ in claims).values()) == 1
    with pg_stores[1].session() as s:
        rows = {j.job_id: j for j in s.exec(select(Job)).all()}
    assert all(rows[job_id].state == "RUNNING" and rows[job_id].claimed_by == name for job_id, name in claims)


def test_a_locked_job_is_skipped_not_waited_for(pg_stores: tuple[Store, Store]) -> None:
    a, b = pg_stores
    _queue(a, 2)
    with Session(a.engine) as holder:  # another replica is in the middle of claiming job-0
        holder.exec(select(Job).where(col(Job.job_id) == "job-0").with_for_update()).one()
        started = time.monotonic()
        job = claim_next_job(b, "b")
        assert job is not None and job.job_id == "job-1"
        assert time.monotonic() - started < 2.0
        holder.rollback()
    job = claim_next_job(b, "b")
    assert job is not None and job.job_id == "job-0"
    assert claim_next_job(b, "b") is None


def test_recover_leaves_the_jobs_of_live_replicas_alone(sqlite_store: Store, tmp_path: Path) -> None:
    from controller.factory.jobs import JobManager
    from controller.store.tables import ControllerReplica

    with sqlite_store.session() as s:
        s.add(Job(job_id="theirs", state="RUNNING", claimed_by="a", pid=2**22 + 1, created_at=1.0))
        s.add(ControllerReplica(replica_id="a", last_seen=time.time()))
    manager = JobManager(sqlite_store, tmp_path / "data", lambda: {}, replica_id="b")
    assert manager.recover() == []  # replica a is alive: its worker runs on its machine
    with sqlite_store.session() as s:
        row = s.get(ControllerReplica, "a")
        assert row is not None
        row.last_seen = time.time() - 600
        s.add(row)
    assert manager.recover() == ["theirs"]  # a is gone: its job will never finish
    with sqlite_store.session() as s:
        job = s.get(Job, "theirs")
        assert job is not None and job.state == "FAILED"
