"""Build jobs: submit (validated before queuing) -> QUEUED -> RUNNING in a worker process -> SUCCEEDED |
FAILED | CANCELLED, all on the Job table.

A dispatcher thread launches queued jobs (at most ``max_concurrent`` at once), each in its own process
(multiprocessing ``spawn``: the gRPC server's threads and memory are not inherited; a crash or an
out-of-memory kill takes only the worker). Cancelling a queued job ends it at once; a running job gets
``cancel_requested``, its worker stops at the next check, and after ``cancel_grace_s`` the process is
terminated. A worker that dies without ending its row is marked FAILED. ``jobs``: where a worker runs its
stages (``local``, ``ray://HOST:PORT``, ``ray:auto``; ``backends/``). At controller start
:meth:`JobManager.recover` marks RUNNING jobs whose process is gone FAILED ("controller restarted").
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from controller.factory.backends import check_spec, probe, ray_address
from controller.factory.pipeline import validate_pipeline
from controller.factory.plan import expand_recipe
from controller.factory.recipe import apply_overrides, dump_recipe, load_recipe
from controller.factory.worker import WorkerArgs, data_paths, run_job
from controller.store.db import Store
from controller.store.tables import ControllerReplica, Job
from shared.errors import InvalidArgument, NotFound
from shared.profiles import DeviceProfile

log = logging.getLogger(__name__)

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
KINDS = ("build", "retrain", "reoptimize")
# A replica whose heartbeat is older than this is gone: the jobs it claimed are failed by the next recover().
REPLICA_ALIVE_S = 30.0


def claim_next_job(store: Store, replica_id: str) -> Job | None:
    """Claim the oldest QUEUED job for ``replica_id``: RUNNING and ``claimed_by`` in one transaction.

    On PostgreSQL the row is selected ``FOR UPDATE SKIP LOCKED``, so replicas racing for the queue each get a
    different job and none twice; SQLite (one controller process) ignores the clause and relies on the
    conditional update.
    """
    with store.session() as s:
        job = s.exec(
            select(Job)
            .where(col(Job.state) == "QUEUED")
            .order_by(col(Job.created_at))
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        claimed = s.exec(
            update(Job)
            .where(col(Job.job_id) == job.job_id, col(Job.state) == "QUEUED")  # type: ignore[call-overload]
            .values(state="RUNNING", claimed_by=replica_id, message="starting worker", updated_at=time.time())
        )
        if claimed.rowcount == 0:
            return None
    return job


@dataclass
class _Running:
    process: Any  # multiprocessing.Process (spawn context)
    started: float
    cancel_seen: float = 0.0


def live_replicas(store: Store, within_s: float = REPLICA_ALIVE_S) -> set[str]:
    """Ids of the controller replicas whose heartbeat is recent (controller/scheduler/leader.py)."""
    with store.session() as s:
        rows = s.exec(
            select(ControllerReplica.replica_id).where(col(ControllerReplica.last_seen) > time.time() - within_s)
        )
        return set(rows.all())


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live job worker (a spawn-context Python process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.split(")")[-1].split()[0] == "Z":
            return False
        return b"multiprocessing" in text
    return True


class JobManager:
    def __init__(
        self,
        store: Store,
        data_dir: Path,
        profiles: Callable[[], dict[str, DeviceProfile]],
        *,
        max_concurrent: int = 1,
        poll_interval_s: float = 0.5,
        cancel_grace_s: float = 15.0,
        replica_id: str = "",
        jobs: str | None = None,
    ) -> None:
        self.store = store
        # Unset: the SLMOPS_JOBS the controller was started with (`slmops controller serve --jobs` sets it).
        self.jobs = check_spec(jobs if jobs is not None else os.environ.get("SLMOPS_JOBS", "local"))
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.data_dir = Path(data_dir)
        self.profiles = profiles
        self.max_concurrent = max(1, max_concurrent)
        self.poll_interval_s = poll_interval_s
        self.cancel_grace_s = cancel_grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._running: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        for path in data_paths(self.data_dir).values():
            if path.suffix == "":
                path.mkdir(parents=True, exist_ok=True)

    # --- API -------------------------------------------------------------------------------------------
    def submit(
        self,
        recipe_yaml: str,
        recipe_path: str = "",
        kind: str = "build",
        overrides: dict[str, Any] | None = None,
        drift_event_id: str = "",
    ) -> Job:
        """Validate the recipe completely, then queue it; returns the QUEUED Job.

        ``recipe_path`` names the recipe in errors, and relative paths inside the recipe resolve against
        its folder (send it absolute). ``overrides``: see ``controller/factory/recipe.py``. Raises before
        anything is queued: RecipeError (file, field, reason), UnsupportedOnThisMachine (e.g. QLoRA without
        a GPU), DatasetError (file:line: missing field), TeacherUnavailable (endpoint down), ...
        """
        if kind not in KINDS:
            raise InvalidArgument(f"unknown job kind '{kind}' (known: {', '.join(KINDS)})")
        source = recipe_path or "<recipe>"
        recipe = load_recipe(recipe_yaml, source, base_dir=Path(recipe_path).parent if recipe_path else None)
        if overrides:
            recipe = apply_overrides(recipe, overrides, source)
        profiles = self.profiles()
        job_id = "j" + uuid.uuid4().hex[:12]
        steps = expand_recipe(recipe, profiles, job_id=job_id, drift_event_id=drift_event_id, source=source)
        validate_pipeline(steps, {"profiles": profiles, "data_dir": self.data_dir}, source)
        now = time.time()
        job = Job(
            job_id=job_id,
            kind=kind,
            state="QUEUED",
            recipe_yaml=dump_recipe(recipe, overrides),
            recipe_path=recipe_path,
            stage_count=len(steps),
            created_at=now,
            updated_at=now,
            drift_event_id=drift_event_id,
            message=f"queued: {len(steps)} steps",
        )
        with self.store.session() as s:
            s.add(job)
        log.info("queued job %s (%s, %d steps, recipe %s)", job_id, kind, len(steps), source)
        self._wake.set()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self.store.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' does not exist (see `slmops jobs list`)")
        return job

    def list(self, limit: int = 50) -> list[Job]:
        with self.store.session() as s:
            query = select(Job).order_by(col(Job.created_at).desc())
            if limit:
                query = query.limit(limit)
            return list(s.exec(query).all())

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop; a finished job is returned unchanged."""
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            return job
        now = time.time()
        with self.store.session() as s:
            res = s.exec(
                update(Job)
                .where(col(Job.job_id) == job_id, col(Job.state) == "QUEUED")  # type: ignore[call-overload]
                .values(state="CANCELLED", cancel_requested=True, message="cancelled before it started", updated_at=now)
            )
            if res.rowcount == 0:
                s.exec(
                    update(Job)
                    .where(col(Job.job_id) == job_id, col(Job.state) == "RUNNING")  # type: ignore[call-overload]
                    .values(cancel_requested=True, message="cancelling", updated_at=now)
                )
        log.info("cancel requested for job %s", job_id)
        self._wake.set()
        return self.get(job_id)

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        if self.jobs != "local":
            probe(address := ray_address(self.jobs))  # fail at start, naming the address, not in every job
            log.info("build jobs run their stages on the Ray cluster at %s", address)
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="job-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, terminate_running: bool = True, timeout_s: float = 10.0) -> None:
        """Stop dispatching; by default terminate running workers and mark their jobs FAILED."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if not terminate_running:
            return
        with self._lock:
            for job_id, run in list(self._running.items()):
                self._terminate(run)
                self._finish_if_open(
                    job_id,
                    "FAILED",
                    "the controller stopped while the job ran; resubmit it (finished stages are reused from the cache)",
                )
            self._running.clear()

    def recover(self) -> list[str]:
        """Mark RUNNING jobs whose worker process is gone FAILED; returns their ids."""
        failed = []
        with self.store.session() as s:
            running = list(s.exec(select(Job).where(col(Job.state) == "RUNNING")).all())
        others = live_replicas(self.store) - {self.replica_id}  # their jobs run in their processes
        for job in running:
            with self._lock:
                if job.job_id in self._running or job.claimed_by in others:
                    continue
            if not pid_alive(job.pid):
                self._finish_if_open(
                    job.job_id,
                    "FAILED",
                    "controller restarted while the job ran "
                    "(its worker process is gone); resubmit it — finished stages are cached",
                )
                failed.append(job.job_id)
        if failed:
            log.warning("marked %d interrupted jobs FAILED: %s", len(failed), ", ".join(failed))
        return failed

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    # --- dispatcher ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        last_orphan_check = 0.0
        while not self._stop.is_set():
            try:
                self._reap()
                self._enforce_cancel()
                self._launch()
                if time.monotonic() - last_orphan_check > 30:
                    last_orphan_check = time.monotonic()
                    self.recover()
            except Exception:
                log.exception("job dispatcher iteration failed; continuing")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _launch(self) -> None:
        while len(self._running) < self.max_concurrent and not self._stop.is_set():
            job = claim_next_job(self.store, self.replica_id)
            if job is None:
                return
            try:
                profiles = {n: p.model_dump() for n, p in self.profiles().items()}
                args = WorkerArgs(
                    self.store.url,
                    str(self.data_dir),
                    job.job_id,
                    profiles,
                    logging.getLogger().getEffectiveLevel(),
                    jobs=self.jobs,
                )
                proc = self._ctx.Process(target=run_job, args=(args,), name=f"job-{job.job_id}")
                proc.start()
            except Exception as exc:
                log.exception("could not start a worker for job %s", job.job_id)
                self._finish_if_open(job.job_id, "FAILED", f"could not start a worker process: {exc}")
                continue
            with self._lock:
                self._running[job.job_id] = _Running(proc, time.monotonic())
            with self.store.session() as s:
                s.exec(
                    update(Job)
                    .where(col(Job.job_id) == job.job_id, col(Job.pid) == 0)  # type: ignore[call-overload]
                    .values(pid=proc.pid)
                )
            log.info("job %s running in worker process %d", job.job_id, proc.pid)

    def _reap(self) -> None:
        with self._lock:
            items = list(self._running.items())
        for job_id, run in items:
            if run.process.is_alive():
                continue
            run.process.join(timeout=1)
            code = run.process.exitcode
            job = self.get(job_id)
            if job.state not in FINAL_STATES:
                if job.cancel_requested:
                    self._finish_if_open(job_id, "CANCELLED", "cancelled")
                else:
                    tail = self._log_tail(job_id)
                    self._finish_if_open(
                        job_id,
                        "FAILED",
                        f"worker process exited with code {code} without "
                        f"finishing the job (crash or out of memory?){tail}",
                    )
            with self._lock:
                self._running.pop(job_id, None)

    def _enforce_cancel(self) -> None:
        with self._lock:
            items = list(self._running.items())
        for job_id, run in items:
            job = self.get(job_id)
            if not job.cancel_requested:
                continue
            now = time.monotonic()
            if not run.cancel_seen:
                run.cancel_seen = now
            elif now - run.cancel_seen > self.cancel_grace_s and run.process.is_alive():
                log.warning(
                    "job %s did not stop within %.0f s of cancel; terminating its worker", job_id, self.cancel_grace_s
                )
                self._terminate(run)
                self._finish_if_open(job_id, "CANCELLED", "cancelled (worker terminated)")

    # --- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _terminate(run: _Running) -> None:
        proc = run.process
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def _finish_if_open(self, job_id: str, state: str, message: str) -> None:
        values: dict[str, Any] = {"state": state, "updated_at": time.time(), "eta_s": 0.0}
        if state == "FAILED":
            values.update(error=message[:4000], message="failed")
        else:
            values["message"] = message
        with self.store.session() as s:
            s.exec(
                update(Job)
                .where(col(Job.job_id) == job_id, col(Job.state).not_in(FINAL_STATES))  # type: ignore[call-overload]
                .values(**values)
            )

    def _log_tail(self, job_id: str, lines: int = 8) -> str:
        path = data_paths(self.data_dir)["jobs"] / job_id / "job.log"
        try:
            rows = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "; last log lines:\n" + "\n".join(rows) if rows else ""
