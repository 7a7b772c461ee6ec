"""`build --follow` off a terminal: one line per stage start and end, periodic progress, the [k/N] counter."""

from __future__ import annotations

import re

from controller.cli.follow import LineFollower, stage_label, watch
from shared.pb import admin_pb2

RUNNING, SUCCEEDED = admin_pb2.JOB_STATE_RUNNING, admin_pb2.JOB_STATE_SUCCEEDED


def job(index: int, stage: str, state: int = RUNNING, **kw: object) -> admin_pb2.Job:
    return admin_pb2.Job(job_id="j1", state=state, stage=stage, stage_index=index, stage_count=4, **kw)  # type: ignore[arg-type]


def test_counter_reads_one_to_n_from_the_zero_based_row() -> None:
    assert stage_label(job(0, "train-teacher")) == "[1/4] train-teacher"
    assert stage_label(job(3, "publish")) == "[4/4] publish"
    assert stage_label(admin_pb2.Job(job_id="j1")) == "queued"


def test_lines_per_stage_with_periodic_progress_and_warnings() -> None:
    lines: list[str] = []
    follower = LineFollower(lines.append, interval_s=0)
    updates = [
        admin_pb2.Job(job_id="j1", state=admin_pb2.JOB_STATE_QUEUED),
        job(0, "train-teacher", message="started"),
        job(0, "train-teacher", step=10, total_steps=40, loss=2.5, eta_s=30, message="lr 1e-3"),
        job(1, "distill-data", message="cached"),
        job(3, "publish", message="started"),  # step 3 (index 2) ran between two updates
        job(3, "publish", message="warning: the teacher is weak"),
    ]
    for update in updates:
        follower.update(update)
    follower.finish(job(3, "publish", state=SUCCEEDED))
    text = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines]
    assert text == [
        "[1/4] train-teacher started",
        "[1/4] train-teacher step 10/40 loss 2.5000 eta 30s lr 1e-3",
        "[1/4] train-teacher done in 0s",
        "[2/4] distill-data cached",
        "[2/4] distill-data done in 0s",
        "[4/4] publish started (1 quicker step(s) ran between updates)",
        "[4/4] publish warning: the teacher is weak",
        "[4/4] publish done in 0s",
    ]
    assert all(re.match(r"\d\d:\d\d:\d\d \[", line) for line in lines)


def test_periodic_lines_wait_for_the_interval() -> None:
    lines: list[str] = []
    follower = LineFollower(lines.append, interval_s=3600)
    follower.update(job(0, "train-student", message="started"))
    for step in range(1, 50):
        follower.update(job(0, "train-student", step=step, total_steps=50, loss=1.0, message=f"lr {step}"))
    assert len(lines) == 1  # only the start line within the interval


def test_watch_without_a_terminal_prints_lines_and_returns_the_last_job(capsys) -> None:  # type: ignore[no-untyped-def]
    last = watch(iter([job(0, "convert", message="started"), job(0, "convert", state=SUCCEEDED)]), plain=True)
    assert last.state == SUCCEEDED
    out = capsys.readouterr().out.splitlines()
    assert [line[9:] for line in out] == ["[1/4] convert started", "[1/4] convert done in 0s"]
