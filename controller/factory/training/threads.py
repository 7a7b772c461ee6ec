"""How many CPU threads a training stage (or a local teacher answering prompts) gives torch.

torch's default is one thread per core of the machine, which oversubscribes as soon as the process may use
fewer cores (CPU affinity, a container's cgroup quota) or another job trains at the same time: each step
then waits on threads that are not running. With ``num_threads: 0`` (the default) a stage takes
``max(1, available cores // jobs running)``, where available cores are the CPUs this process may run on
(``os.sched_getaffinity``) capped by the cgroup CPU quota (``cpu.max``, or v1 ``cpu.cfs_quota_us``), and jobs
running is the RUNNING rows of the job table (this job included); and no more than the cores left idle by
whatever else runs on the machine (``cores - 1-minute load average + 1``, the 1 being this process).
A Ray task uses the CPUs Ray assigned it (its stage's declared ``num_cpus``) instead.
``num_threads: N`` in the stage's section of the recipe (e.g. ``teacher: {train: {num_threads: 2}}``,
``student: {num_threads: 2}``) uses N as given.
The choice is logged and shown as the stage's first progress line (``threads: ...``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    jobs: int
    requested: int

    load: float | None = None

    def describe(self) -> str:
        if self.requested:
            return f"threads: {self.threads} (num_threads in the recipe; {self.cores} cores available)"
        busy = f", load {self.load:.1f}" if self.load is not None else ""
        return (
            f"threads: {self.threads} ({self.cores} cores available / {self.jobs} job(s) running{busy}; "
            "set num_threads to override)"
        )


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity set, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def running_jobs(extras: dict[str, Any]) -> int:
    """RUNNING jobs in the controller's job table (via the registry's store in ``extras``); 1 when unknown."""
    registry = extras.get("registry")
    store = getattr(registry, "store", None)
    if store is None:
        return 1
    try:
        from sqlalchemy import func
        from sqlmodel import col, select

        from controller.store.tables import Job

        with store.session() as s:
            count = s.exec(select(func.count()).select_from(Job).where(col(Job.state) == "RUNNING")).one()
        return max(1, int(count))
    except Exception as exc:  # a count that cannot be read must not fail training
        log.debug("could not count running jobs: %s", exc)
        return 1


def machine_load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int, cores: int, jobs: int, load: float | None = None) -> ThreadChoice:
    if requested > 0:
        return ThreadChoice(requested, cores, jobs, requested, load)
    threads = cores // max(1, jobs)
    if load is not None:  # cores other processes keep busy are not ours either
        threads = min(threads, math.floor(cores - load + 1.5))  # rounded: cores - load + 1
    return ThreadChoice(max(1, threads), cores, jobs, 0, load)


def configure_threads(requested: int, extras: dict[str, Any]) -> ThreadChoice:
    """Choose (see the module doc), apply to torch, log; returns the choice. In a task whose runner assigned it
    CPUs (``extras["assigned_cpus"]``: a Ray task gets the ``num_cpus`` its stage declared), those CPUs are the
    stage's own: the engine's scheduler already counted every other task, so neither the job count nor the
    machine's load (which includes the engine's own daemons) lowers it."""
    import torch

    assigned = int(extras.get("assigned_cpus") or 0)
    if assigned > 0:
        choice = choose_threads(requested, min(assigned, available_cores()), 1)
    else:
        choice = choose_threads(requested, available_cores(), running_jobs(extras), machine_load())
    torch.set_num_threads(choice.threads)
    log.info(choice.describe())
    return choice
