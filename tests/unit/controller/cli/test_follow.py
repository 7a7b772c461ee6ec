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


def ev(index: int, step: str, status: str, seconds: float = 0.0) -> admin_pb2.StepEvent:
    return admin_pb2.StepEvent(index=index, step=step, status=status, seconds=seconds, at_unix=1.0e9 + index)


def test_lines_per_stage_with_periodic_progress_and_warnings() -> None:
    lines: list[str] = []
    follower = LineFollower(lines.append, interval_s=0)
    started = [ev(0, "train-teacher", "started")]
    teacher_done = [*started, ev(0, "train-teacher", "ran", 12.4), ev(1, "distill-data", "cached")]
    # steps 2 and 3 started and ended between two polls: the history still has them
    quick = [*teacher_done, ev(2, "convert", "started"), ev(2, "convert", "ran", 0.2), ev(3, "publish", "started")]
    updates = [
        admin_pb2.Job(job_id="j1", state=admin_pb2.JOB_STATE_QUEUED),
        job(0, "train-teacher", message="started", steps=started),
        job(0, "train-teacher", step=10, total_steps=40, loss=2.5, eta_s=30, message="lr 1e-3", steps=started),
        job(1, "distill-data", message="cached", steps=teacher_done),
        job(3, "publish", message="started", steps=quick),
        job(3, "publish", message="warning: the teacher is weak", steps=quick),
    ]
    for update in updates:
        follower.update(update)
    follower.update(job(3, "publish", state=SUCCEEDED, steps=[*quick, ev(3, "publish", "ran", 1.0)]))
    text = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines]
    assert text == [
        "[1/4] train-teacher started",
        "[1/4] train-teacher step 10/40 loss 2.5000 eta 30s lr 1e-3",
        "[1/4] train-teacher done in 12s",
        "[2/4] distill-data cached",
        "[3/4] convert started",
        "[3/4] convert done in 0s",
        "[4/4] publish started",
        "[4/4] publish warning: the teacher is weak",
        "[4/4] publish done in 1s",
    ]
    assert all(re.match(r"\d\d:\d\d:\d\d \[", line) for line in lines)


def test_a_failed_step_says_so_with_its_time() -> None:
    lines: list[str] = []
    follower = LineFollower(lines.append, interval_s=0)
    steps = [ev(0, "train-student", "started"), ev(0, "train-student", "failed", 3.0)]
    follower.update(job(0, "train-student", state=admin_pb2.JOB_STATE_FAILED, steps=steps))
    assert [line[9:] for line in lines] == ["[1/4] train-student started", "[1/4] train-student failed after 3s"]


def test_periodic_lines_wait_for_the_interval() -> None:
    lines: list[str] = []
    follower = LineFollower(lines.append, interval_s=3600)
    steps = [ev(0, "train-student", "started")]
    follower.update(job(0, "train-student", message="started", steps=steps))
    for step in range(1, 50):
        follower.update(job(0, "train-student", step=step, total_steps=50, loss=1.0, message=f"lr {step}", steps=steps))
    assert len(lines) == 1  # only the start line within the interval


def test_watch_without_a_terminal_prints_lines_and_returns_the_last_job(capsys) -> None:  # type: ignore[no-untyped-def]
    started = [ev(0, "convert", "started")]
    updates = [job(0, "convert", message="started", steps=started),
               job(0, "convert", state=SUCCEEDED, steps=[*started, ev(0, "convert", "ran", 0.4)])]  # fmt: skip
    last = watch(iter(updates), plain=True)
    assert last.state == SUCCEEDED
    out = capsys.readouterr().out.splitlines()
    assert [line[9:] for line in out] == ["[1/4] convert started", "[1/4] convert done in 0s"]
