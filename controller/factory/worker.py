"""The job worker: runs in its own process (multiprocessing ``spawn``), one per job.

It reads its Job row, expands the stored recipe into a pipeline, runs it (cached stages are reused),
writes progress to the row, and ends the row as SUCCEEDED (with the published version and the seed
table in ``summary_json``), CANCELLED or FAILED. Its log goes to ``<data>/jobs/<job_id>/job.log``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update

from controller.store.db import Store
from controller.store.tables import Job
from shared.errors import Cancelled, SlmopsError

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
CANCEL_POLL_S = 0.5


@dataclass
class WorkerArgs:
    db_url: str
    data_dir: str
    job_id: str
    # {name: DeviceProfile.model_dump()} as the controller had them when it launched the job.
    profiles: dict[str, dict[str, Any]]
    log_level: int = logging.INFO
    # Where the stages run: "local" (this process), "ray://HOST:PORT" or "ray:auto" (controller setting `jobs`).
    jobs: str = "local"


def data_paths(data_dir: Path) -> dict[str, Path]:
    data_dir = Path(data_dir)
    # Stage outputs and trained teachers can be shared by several controllers (e.g. demo runs): SLMOPS_CACHE_DIR.
    cache = Path(os.environ.get("SLMOPS_CACHE_DIR") or data_dir / "cache")
    return {
        "db": data_dir / "controller.db",
        "key": data_dir / "keys" / "manifest_ed25519.pem",
        "artifacts": data_dir / "artifacts",
        "jobs": data_dir / "jobs",
        "cache": cache,
        "stage_cache": cache / "stages",
    }


class JobReporter:
    """Writes progress to the Job row (throttled) and answers 'was I cancelled?' (polled)."""

    def __init__(self, store: Store, job_id: str, stage_count: int) -> None:
        self.store, self.job_id, self.stage_count = store, job_id, stage_count
        self._last_write = 0.0
        self._last_key: tuple[Any, ...] = ()
        self._stage_started = time.monotonic()
        self._cancel_checked = 0.0
        self._cancelled = False
        self._steps: list[dict[str, Any]] = []

    def update(self, **values: Any) -> None:
        values["updated_at"] = time.time()
        with self.store.session() as s:
            s.exec(update(Job).where(Job.job_id == self.job_id).values(**values))  # type: ignore[call-overload]

    def progress(self, index: int, count: int, step: Any, p: Any) -> None:
        """``index`` is the step's 0-based position, ``count`` the number of steps (cached ones included): the
        row's ``stage_index`` is that 0-based index, so ``[stage_index + 1/stage_count]`` reads 1/N .. N/N."""
        key = (index, p.message)
        now = time.monotonic()
        if key[0] != (self._last_key[0] if self._last_key else None):
            self._stage_started = now
        if key == self._last_key and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        eta = 0.0
        if p.total_steps and p.step:
            eta = (now - self._stage_started) / p.step * max(0, p.total_steps - p.step)
        self._last_key, self._last_write = key, now
        self.update(
            stage=step.id,
            stage_index=index,
            stage_count=count,
            step=p.step,
            total_steps=p.total_steps,
            loss=float(p.loss or 0.0),
            eta_s=eta,
            message=p.message[:500],
        )

    def step_event(self, index: int, step: Any, status: str, seconds: float) -> None:
        """A step started or ended: appended to the row's history at once (never throttled)."""
        event = {"index": index, "step": step.id, "status": status, "seconds": round(seconds, 3), "at": time.time()}
        self._steps.append(event)
        self.update(steps_json=json.dumps(self._steps))

    def is_cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            with self.store.session() as s:
                job = s.get(Job, self.job_id)
                self._cancelled = bool(job and job.cancel_requested)
        return self._cancelled


def _setup_logging(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # the job log always has the INFO story of the run


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)


def run_job(args: WorkerArgs) -> None:
    """Process entry point (also callable in-process, e.g. from tests and the bench)."""
    paths = data_paths(Path(args.data_dir))
    _setup_logging(paths["jobs"] / args.job_id / "job.log", args.log_level)
    # terminate() from the dispatcher: unwind (child tools are killed on the way out), then exit
    signal.signal(signal.SIGTERM, _on_sigterm)
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OLIVE_DISABLE_TELEMETRY": "1",
    }.items():
        os.environ.setdefault(key, value)
    store = Store(args.db_url)
    try:
        _run(store, args, paths)
    finally:
        store.close()


def _run(store: Store, args: WorkerArgs, paths: dict[str, Path]) -> None:
    from controller.factory.backends import runner_from_spec
    from controller.factory.cache import StageCache
    from controller.factory.plan import expand_recipe
    from controller.factory.recipe import load_recipe
    from controller.factory.report import build_report
    from controller.factory.runner import PipelineRunner
    from controller.factory.search.table import job_summary
    from controller.registry.blobstore import open_for_data_dir
    from controller.registry.registry import Registry
    from shared.manifest import load_or_create_signing_key
    from shared.profiles import DeviceProfile

    reporter = JobReporter(store, args.job_id, 0)
    with store.session() as s:
        job = s.get(Job, args.job_id)
    if job is None:
        log.error("job %s is not in the database", args.job_id)
        return
    reporter.update(state="RUNNING", pid=os.getpid(), message="starting")
    task_runner = None
    try:
        profiles = {n: DeviceProfile.model_validate(p) for n, p in args.profiles.items()}
        recipe = load_recipe(job.recipe_yaml, job.recipe_path or "<recipe>")
        steps = expand_recipe(recipe, profiles, job_id=args.job_id, drift_event_id=job.drift_event_id)
        reporter.stage_count = len(steps)
        reporter.update(stage_count=len(steps))
        blobs = open_for_data_dir(Path(args.data_dir))
        cache = StageCache(paths["stage_cache"], blobs)
        registry = Registry(store, blobs, load_or_create_signing_key(paths["key"]))
        task_runner = runner_from_spec(args.jobs)
        log.info("job %s: stages run on %s", args.job_id, task_runner.describe())
        runner = PipelineRunner(
            paths["jobs"] / args.job_id,
            cache,
            shared_cache_dir=paths["cache"],
            extras={
                "job_id": args.job_id,
                "registry": registry,
                "fingerprints": cache.fingerprints,
                "profiles": profiles,
                "data_dir": Path(args.data_dir),
                "task_runner": task_runner,
                "db_url": args.db_url,  # the search stage keeps its Optuna study in the controller's database
            },
            on_progress=reporter.progress,
            is_cancelled=reporter.is_cancelled,
            task_runner=task_runner,
            on_step=reporter.step_event,
        )
        result = runner.run(steps)
        evaluations = [o.metrics for o in result.outcomes.values() if o.step.stage == "evaluate"]
        report = build_report(evaluations)
        report["steps"] = {"ran": result.ran, "cached": result.cached}
        warnings = [str(w) for o in result.outcomes.values() for w in (o.metrics or {}).get("warnings", [])]
        if warnings:  # e.g. a teacher weaker than teacher.min_accuracy: slmops build --follow prints them
            report["warnings"] = warnings
        if search := job_summary(result.outcomes):
            report["search"] = search  # the trial table: slmops build --follow / jobs show print it
        published = next((o.metrics for o in result.outcomes.values() if o.step.stage == "publish"), {})
        name, version = str(published.get("name", "")), str(published.get("version", ""))
        reporter.update(
            state="SUCCEEDED",
            result_name=name,
            result_version=version,
            summary_json=json.dumps(report),
            eta_s=0.0,
            message=(f"published {name}:{version}; " if name else "")
            + f"{len(result.ran)} steps ran, {len(result.cached)} reused from cache",
        )
        log.info("job %s succeeded: %s:%s", args.job_id, name, version)
    except Cancelled as exc:
        log.info("job %s cancelled: %s", args.job_id, exc)
        reporter.update(state="CANCELLED", message=str(exc), eta_s=0.0)
    except SlmopsError as exc:
        log.error("job %s failed: %s", args.job_id, exc.message)
        reporter.update(state="FAILED", error=exc.message[:4000], message="failed", eta_s=0.0)
    except Exception as exc:
        log.error("job %s crashed:\n%s", args.job_id, traceback.format_exc())
        reporter.update(state="FAILED", error=f"{type(exc).__name__}: {exc}"[:4000], message="crashed", eta_s=0.0)
    finally:
        if task_runner is not None:
            task_runner.close()
