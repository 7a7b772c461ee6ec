"""Following a job (`slmops build --follow`, `slmops jobs show --follow`).

On a terminal: live rich progress bars, one per stage. Off a terminal (output redirected to a file, a CI log,
a pipe): one log line per stage start and end, and during a long stage one line every
``SLMOPS_PROGRESS_INTERVAL`` seconds (default 30) with its step, loss and ETA, each flushed at once:

    12:00:01 [1/9] train-teacher started
    12:00:31 [1/9] train-teacher step 120/400 loss 1.2345 eta 70s
    12:01:40 [1/9] train-teacher done in 99s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_INTERVAL_S = 30.0


def state_name(job: Any) -> str:
    from shared.pb import admin_pb2

    return str(admin_pb2.JobState.Name(job.state)).removeprefix("JOB_STATE_").lower()


def step_label(step: str, index: int, count: int) -> str:
    """``[k/N] step`` for the step at 0-based ``index`` of ``count`` (cached ones included): [1/N] .. [N/N]."""
    return f"[{min(index + 1, count)}/{count}] {step}" if count else step


def stage_label(job: Any) -> str:
    """The running step of a job row (its ``stage`` at ``stage_index`` of ``stage_count``), or "queued"."""
    return step_label(job.stage, job.stage_index, job.stage_count) if job.stage else "queued"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("SLMOPS_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _progress_text(job: Any) -> str:
    parts = []
    if job.total_steps:
        parts.append(f"step {job.step}/{job.total_steps}")
    if job.loss:
        parts.append(f"loss {job.loss:.4f}")
    if job.eta_s:
        parts.append(f"eta {job.eta_s:.0f}s")
    if job.message and job.message not in ("started", "starting"):
        parts.append(job.message[:120])
    return " ".join(parts)


class LineFollower:
    """Plain log lines for a non-terminal (see the module doc). Start and end lines come from the job's step
    history (``Job.steps``: every step, however short, in order, with its own time); progress lines from the
    live fields while the step they describe runs."""

    def __init__(self, write: Callable[[str], None] | None = None, interval_s: float | None = None) -> None:
        self.write = write or self._stdout
        self.interval_s = _interval() if interval_s is None else interval_s
        self.printed = 0  # step events printed so far
        self.running = ""  # the step that started and has not ended
        self.last_line = 0.0
        self.last_message = ""

    @staticmethod
    def _stdout(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def _emit(self, text: str, at: float | None = None) -> None:
        self.write(f"{time.strftime('%H:%M:%S', time.localtime(at))} {text}")
        self.last_line = time.monotonic()

    def _event(self, event: Any, count: int) -> None:
        label = step_label(event.step, event.index, count)
        if event.status == "started":
            self.running, self.last_message = event.step, ""
            text = "started"
        elif event.status == "cached":
            text = "cached"
        else:
            if event.step == self.running:
                self.running = ""
            text = (
                f"done in {event.seconds:.0f}s"
                if event.status == "ran"
                else f"{event.status} after {event.seconds:.0f}s"
            )
        self._emit(f"{label} {text}", event.at_unix or None)

    def update(self, job: Any) -> None:
        for event in list(job.steps)[self.printed :]:
            self._event(event, job.stage_count)
        self.printed = len(job.steps)
        if not self.running or job.stage != self.running:
            return  # the live fields describe a step whose lines are printed already
        now = time.monotonic()
        warning = job.message.lower().startswith("warning") and job.message != self.last_message
        if warning or (now - self.last_line >= self.interval_s and (job.total_steps or job.message)):
            text = _progress_text(job)
            if text:
                self._emit(f"{stage_label(job)} {text}")
        self.last_message = job.message


def watch(stream: Iterable[Any], plain: bool | None = None) -> Any:
    """Follow ``stream`` (WatchJob replies) to its end; returns the last job seen (None if there was none)."""
    if plain is None:
        plain = not sys.stdout.isatty()
    return _watch_lines(stream) if plain else _watch_bars(stream)


def _watch_lines(stream: Iterable[Any]) -> Any:
    follower, last = LineFollower(), None
    for job in stream:
        last = job
        follower.update(job)
    return last


def _watch_bars(stream: Iterable[Any]) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from controller.cli.common import console

    last = None
    with Progress(
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("eta {task.fields[eta]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
    ) as progress:
        tasks: dict[str, Any] = {}
        for job in stream:
            last = job
            label = stage_label(job)
            if label not in tasks:
                for tid in tasks.values():
                    progress.update(tid, completed=progress.tasks[tid].total)
                tasks[label] = progress.add_task(
                    label, total=job.total_steps or 1, stage=label, loss="-", eta="-", message=""
                )
            progress.update(
                tasks[label],
                total=max(job.total_steps, 1),
                completed=job.step,
                loss=f"{job.loss:.4f}" if job.loss else "-",
                eta=f"{job.eta_s:.0f}s" if job.eta_s else "-",
                message=job.message[:60],
            )
        if last is not None and state_name(last) == "succeeded":
            for tid in tasks.values():
                progress.update(tid, completed=progress.tasks[tid].total)
    return last
